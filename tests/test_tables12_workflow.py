"""Tables 1 and 2: their config (columns, eval_of rows, order chains per column, patch rows), the
table layer on several value columns, and (slow) the smoke-scale DAG end to end on loopback data."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ride import experiments as E
from ride import tables as T

ROOT = Path(__file__).resolve().parents[1]
needs_ride = pytest.mark.skipif(shutil.which("ride") is None, reason="the `ride` command is not installed")


@pytest.fixture
def config():
    return E.load_config(ROOT / "config" / "config.yaml")


def test_tables_1_and_2_hold_every_paper_row(config):
    t1, t2 = E.table_spec(config, "table1"), E.table_spec(config, "table2")
    paper1 = {(v["label"], E.column_of(config, "table1", n)): v["paper"] for n, v in t1["variants"].items()}
    # Spot checks against the paper's Table 1 (all three columns) and Table 2.
    assert paper1[("RNADE [44]", "dim63")] == 152.1 and paper1[("EoRNADE, 6 layers [45]", "dim64")] == 3.457
    assert paper1[("MCGSM, 128 comp.", "dim63")] == 156.4 and paper1[("MCGSM, 16 comp.", "inf")] == 3.688
    assert paper1[("EoMCGSM, 128 comp.", "dim64")] == 3.481 and paper1[("EoRIDE, 2 layers", "inf")] == 3.899
    assert paper1[("TAN (Oliva et al. 2018)", "dim63")] == 159.80
    # 15 paper rows with their values in 63/64/inf: 7 cited x 2, 5 MCGSM-like x 3, 3 RIDE x 3, + 4 anchors.
    assert len(t1["variants"]) == 7 * 2 + 5 * 3 + 3 * 3 + 4
    assert len({v["label"] for v in t2["variants"].values()}) == 11
    assert t2["variants"]["eoride128_l2_inf"]["paper"] == 1.859 and t2["variants"]["grbm_256"]["paper"] == 0.992
    cited = [n for n, v in {**t1["variants"], **t2["variants"]}.items() if v.get("cited")]
    assert all("source" in {**t1["variants"], **t2["variants"]}[n] for n in cited)
    # `snakemake --cores all` builds all three at quick (offline stand-ins) and paper (downloads);
    # at smoke it stays Table 3, whose data need no server (Tables 1-2's smoke data are loopback).
    assert E.default_tables(config, "quick") == E.default_tables(config, "paper") == ["table3", "table1", "table2"]
    assert E.default_tables(config, "smoke") == ["table3"]
    assert E.default_tables({**config, "scale": "smoke"}) == ["table3"]
    assert E.table_dataset(config, "table1", "quick") == "photos" and "STAND-IN" in t1["title"]
    # Table 2 at quick: the offline photos_log stand-in, named as such; smoke and paper: van Hateren.
    assert E.table_dataset(config, "table2", "quick") == "photos_log" and "STAND-IN" in t2["title"]
    assert E.table_dataset(config, "table2", "smoke") == E.table_dataset(config, "table2", "paper") == "vanhateren"


def test_inconsistent_paper_rows_are_judged_in_the_63_dim_column_only(config):
    from ride.patch_rates import bits_per_pixel_from_patch

    v = E.table_spec(config, "table1")["variants"]
    for row63, row64 in (("gmm200_63", "gmm200_64"), ("patchride_l1_63", "patchride_l1_64")):
        implied = bits_per_pixel_from_patch(v[row63]["paper"], 0.5020)
        assert abs(implied - v[row64]["paper"]) > 0.02  # ~1 nat per patch: the paper's own inconsistency
        assert "tolerance" not in v[row64]
    consistent = bits_per_pixel_from_patch(v["mcgsm128_63"]["paper"], 0.5020)
    assert consistent == pytest.approx(v["mcgsm128_64"]["paper"], abs=0.001)


def test_patch_rows_files_and_configs(config):
    assert E.is_patch_variant(config, "table1", "eomcgsm128_64") and not E.is_patch_variant(config, "table1", "mcgsm16_inf")
    assert E.eval_source(config, "table1", "mcgsm32_64") == "mcgsm32_63"
    assert E.model_source(config, "table1", "eomcgsm128_64") == "mcgsm128_63"
    assert "mcgsm32_64" not in E.trained_variants(config, "table1")
    assert E.table_data_file(config, "paper", "table1", "test", "patches") == "datasets/bsds300/paper/patches_test.h5"
    assert E.table_data_file(config, "quick", "table1", "train") == "datasets/photos/quick/images_train.h5"
    assert E.table_data_file(config, "smoke", "table3", "train") == "datasets/deadleaves/smoke/train.h5"
    doc = E.patch_train_config(config, "smoke", "table1", "patchride_l2_63")
    assert doc["model"]["num_hidden"] == 64 // config["scales"]["smoke"]["hidden_divisor"]
    assert doc["model"]["num_features"] == 4 and doc["train"]["learning_rates"] == [1.0]
    assert E.dc_train_config(config, "paper", "table1")["model"] == {"kind": "mogsm", "num_components": 8, "num_scales": 4}
    config["data_sources"] = yaml.safe_load((ROOT / "config" / "datasets.yaml").read_text())["data_sources"]
    assert E.patch_train_args(config, "quick", "table1") == "--valid datasets/photos/quick/patches_valid.h5"
    assert E.patch_train_args(config, "quick", "table2") == ""  # van Hateren: no validation split
    assert E.patch_eval_args(config, "smoke", "table1", "eomcgsm128_63") == "--ensemble --dc-model runs/smoke/table1/_dc/model.pt"
    assert E.patch_eval_args(config, "smoke", "table2", "mcgsm32_256") == ""


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["tables"]["table1"]["variants"]["mcgsm16_63"].update(column="dim65"), "column"),
    (lambda c: c["tables"]["table1"]["columns"]["dim63"].update(reference="mcgsm128_inf"), "columns.dim63.reference"),
    (lambda c: c["tables"]["table1"]["verdict"]["order"].append(["mcgsm16_63", "mcgsm16_inf"]), "mixes columns"),
    (lambda c: c["tables"]["table1"]["variants"]["mcgsm16_64"].update(eval_of="rnade_63"), "eval_of"),
    (lambda c: c["tables"]["table1"]["variants"]["mcgsm16_63"]["patch_model"].update(num_layers=2),
     "mcgsm16_63.patch_model with scales.smoke.patch: model: Additional properties"),
    (lambda c: c["scales"]["quick"]["patch"]["train"]["patch_ride"].update(learning_rate=1), "scales.quick.patch: train: Additional"),
    (lambda c: c["tables"]["table1"].update(dataset="deadleaves"), "patch rows"),
])
def test_validate_config_names_the_problem(config, mutate, message):
    mutate(config)
    with pytest.raises(E.ConfigError, match=message.replace(".", r"\.")):
        E.validate_config(config)


def _evals(config, value63=156.0, inf=3.7, ride_gain=0.1):
    """Fake eval JSONs for every evaluated row of table 1 (patch rows: nat and bit/px keys)."""
    out = {}
    for name in E.evaluated_variants(config, "table1"):
        col = E.column_of(config, "table1", name)
        spec = E.variant_spec(config, "table1", name)
        bump = 0.01 * len(name) if "eo" in name else 0.0
        if col == "inf":
            out[name] = {"bits_per_pixel": inf + bump + (ride_gain if "ride" in name else 0.0), "sem_clustered": 0.01}
        else:
            ll = value63 + 40 * bump
            out[name] = {"log_likelihood": ll, "sem": 0.2, "bits_per_pixel": ll / 44.36, "sem_bits_per_pixel": 0.005}
        assert spec  # every evaluated row has a spec
    return out


def test_rows_read_their_column_and_gains_stay_within_a_column(config):
    rows = {r["row"]: r for r in T.build_rows(config, "table1", "quick", _evals(config))}
    assert rows["mcgsm32_63"]["ours_bits_px"] == 156.0 and rows["mcgsm32_63"]["column"] == "63 dim [nat]"
    assert rows["mcgsm32_64"]["ours_bits_px"] == pytest.approx(156.0 / 44.36)
    assert rows["mcgsm32_64"]["sem"] == 0.005 and rows["ride_l1_inf"]["sem"] == 0.01
    assert rows["mcgsm32_63"]["paper_gain"] == pytest.approx(155.8 - 156.4)  # from mcgsm128_63, not an inf row
    assert rows["ride_l1_inf"]["ours_gain"] == pytest.approx(0.1) and rows["rnade_63"]["verdict"] == T.CITED
    assert all("MISS" not in str(r["verdict"]) for r in rows.values()), [r["verdict"] for r in rows.values()]


def test_quick_expectations_catch_ride_below_mcgsm_and_order_per_column(config):
    rows = {r["row"]: r for r in T.build_rows(config, "table1", "quick", _evals(config, ride_gain=-0.1))}
    assert "outside expected" in rows["ride_l1_inf"]["verdict"] and "MISS" in rows["ride_l1_inf"]["verdict"]
    evals = _evals(config)
    evals["mcgsm64_63"]["log_likelihood"] = 156.0 - 0.5     # within 0.02 bit/px x 44.36 = 0.89 nat
    evals["mcgsm128_63"]["log_likelihood"] = 156.0 - 2.0    # 1.5 nat below mcgsm64_63: a MISS
    rows = {r["row"]: r for r in T.build_rows(config, "table1", "quick", evals)}
    assert "MISS" not in rows["mcgsm64_63"]["verdict"]
    assert "order" in rows["mcgsm128_63"]["verdict"] and "below mcgsm64_63" in rows["mcgsm128_63"]["verdict"]


def test_paper_scale_pending_and_render(config, tmp_path):
    rows = T.build_rows(config, "table2", "paper", {})
    assert {r["status"] for r in rows} == {"cited", "pending"}
    assert sum(r["status"] == "pending" for r in rows) == 7
    from ride.tablefiles import to_markdown

    md = to_markdown(T.build_rows(config, "table1", "quick", _evals(config)), "t", "quick")
    assert "| Column |" in md and "63 dim [nat]" in md and "inf dim [bit/px]" in md


@pytest.mark.slow
@needs_ride
def test_smoke_tables_1_and_2_end_to_end(data_server, fake_sources, tmp_path):
    """`snakemake results/smoke/table{1,2}.csv` on loopback data: every row finite, `ride table check`
    passes, and the rows and columns are those of the committed smoke references."""
    from test_datasets_workflow import loopback_workflow

    loopback_workflow(tmp_path, data_server, fake_sources)
    targets = ["results/smoke/table1.csv", "results/smoke/table2.csv"]
    maf = "runs/smoke/table1/mcgsm128_63/eval_maf.json"  # our 63-dim model on MAF's test patches
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--config", "scale=smoke", "--", *targets, maf]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    config = E.load_config(tmp_path / "config" / "config.yaml")
    for target in targets:
        table = Path(target).stem
        rows = T.read_csv(tmp_path / target)
        ours = [r for r in rows if r["status"] == "ours"]
        assert len(ours) == len(E.evaluated_variants(config, table)) and all(r["ours_bits_px"] is not None for r in ours)
        check = subprocess.run(["ride", "table", "check", "--config", "config/config.yaml", target], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        assert (tmp_path / target).with_suffix(".provenance.json").exists()
        # The committed smoke reference has the same rows, columns and statuses (values mean nothing at smoke).
        ref = ROOT / "tests" / "references" / "smoke" / f"{table}.csv"
        regen = "regenerate with python workflow/scripts/smoke_references_tables12.py"
        assert ref.exists(), f"{ref} missing; {regen}"
        reference = T.read_csv(ref)
        assert list(rows[0]) == list(reference[0]), f"{ref}: CSV columns differ from a fresh run; {regen}"
        assert [(r["row"], r["column"], r["status"]) for r in rows] == \
            [(r["row"], r["column"], r["status"]) for r in reference], f"{ref}: rows differ from a fresh run; {regen}"
    rows = {r["row"]: r for r in T.read_csv(tmp_path / targets[0])}
    assert rows["mcgsm128_63"]["column"] == "63 dim [nat]" and rows["mcgsm128_64"]["ours_bits_px"] is not None
    assert rows["eomcgsm128_63"]["ensemble"]
    doc = json.loads((tmp_path / maf).read_text())
    assert doc["dim"] == 63 and doc["num_patches"] > 0 and doc["l_dc"] is None and "maf" in doc["data"]
