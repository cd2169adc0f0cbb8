"""ride.experiments: `pending: [all]` and the files a table reads (rule table's inputs)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ride import experiments as E
from ride import tables as T

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config():
    return E.load_config(ROOT / "config" / "config.yaml")


def test_pending_all_marks_every_row_we_would_build(config):
    config["pending"] = ["all"]
    E.validate_config(config)
    for table in E.table_names(config):
        ours = {v for v in E.table_variants(config, table) if not E.is_cited(config, table, v)}
        assert ours and E.pending_variants(config, table) == ours
        assert E.evaluated_variants(config, table) == [] and E.trained_variants(config, table) == []
        assert not E.table_needs_data(config, table)
    assert E.figure_variants(config, "figure2", "quick") == []
    # a table's own config (rule table's params) keeps the keyword
    sub = E.table_config(config, "paper", "table1")
    assert sub["pending"] == ["all"] and E.pending_variants(sub, "table1") == E.pending_variants(config, "table1")


def test_pending_names_only_their_rows(config):
    config["pending"] = ["mcgsm128_63"]
    assert E.pending_variants(config, "table1") == {"mcgsm128_63", "mcgsm128_64", "eomcgsm128_63", "eomcgsm128_64"}
    assert E.pending_variants(config, "table2") == set() and E.table_needs_data(config, "table1")


@pytest.mark.parametrize("pending", [["alll"], ["all", "typo"], ["ALL"]])
def test_validate_config_rejects_unknown_pending_names(config, pending):
    config["pending"] = pending
    with pytest.raises(E.ConfigError, match=rf"pending: unknown variant '{next(p for p in pending if p != 'all')}'"):
        E.validate_config(config)


def test_pending_all_passes_the_schema_and_a_row_may_not_be_called_all(config):
    E.validate_schema({**config, "pending": ["all"]})
    config["tables"]["table3"]["variants"]["all"] = config["tables"]["table3"]["variants"]["mcgsm12"]
    with pytest.raises(E.ConfigError, match="may not be named 'all'"):
        E.validate_config(config)


def test_all_pending_table_reads_nothing(config):
    config["pending"] = ["all"]
    for scale in E.SCALES:
        for table in E.table_names(config):
            assert E.table_input_files(config, scale, table) == {}, (scale, table)


def test_table_inputs_declare_data_and_dc_model_only_where_rows_read_them(config):
    files = E.table_input_files(config, "smoke", "table1")
    assert files["checksum_train"] == "datasets/bsds300/smoke/images_train.h5.sha256"
    assert files["checksum_patches_test"] == "datasets/bsds300/smoke/patches_test.h5.sha256"
    assert files["model__dc"] == "runs/smoke/table1/_dc/model.pt" and files["train__dc"] == "runs/smoke/table1/_dc/train.json"
    assert files["eval_mcgsm32_64"] == "runs/smoke/table1/mcgsm32_63/eval.json"  # eval_of: the 63-dim row's eval
    assert files["model_eomcgsm128_inf"] == "runs/smoke/table1/mcgsm128_inf/model.pt"  # model_of
    assert files["bench_ride_l1_inf"] == "logs/smoke/table1/benchmarks/train_ride_l1_inf.tsv"
    assert "train_mcgsm32_64" not in files and not any(k.endswith(("grbm_256", "rnade_63")) for k in files)
    # no patch row left: images only, no patch sets, no DC model
    config["pending"] = [v for v in E.table_variants(config, "table1") if E.is_patch_variant(config, "table1", v)
                         and not E.is_cited(config, "table1", v)]
    files = E.table_input_files(config, "smoke", "table1")
    assert "checksum_train" in files and not any(k.startswith(("checksum_patches", "model__dc", "train__dc")) for k in files)
    table3 = E.table_input_files(config, "quick", "table3")
    assert table3["checksum_test"] == "datasets/deadleaves/quick/test.h5.sha256" and "model__dc" not in table3


def test_render_all_pending_without_data(config, tmp_path):
    """What `snakemake results/paper/table1.csv --config scale=paper 'pending=[all]'` renders."""
    config["pending"] = ["all"]
    out = tmp_path / "table1.csv"
    sub = E.table_config(config, "paper", "table1")
    files = E.table_input_files(config, "paper", "table1")
    rows = T.render_table(sub, "table1", "paper", {}, {}, out, out.with_suffix(".md"), out.with_suffix(".html"),
                          out.with_suffix(".provenance.json"), dataset_checksums={k: v for k, v in files.items()
                                                                                   if k.startswith("checksum_")})
    pending = [r for r in rows if r["status"] == "pending"]
    assert len(pending) == len(E.pending_variants(config, "table1")) and all(r["verdict"] == T.PENDING for r in pending)
    assert "**Check:** nothing to judge: all 24 rows pending." in out.with_suffix(".md").read_text()
    prov = json.loads(out.with_suffix(".provenance.json").read_text())
    assert prov["dataset_sha256"] == {} and prov["data_read"].startswith("none") and prov["models"] == {}
    assert len(prov["rendered"]["git_commit"].split("+")[0]) == 40  # what rendered it
    ok, msgs = T.check_table(out, config)
    assert not ok and msgs == ["nothing to judge: all 24 rows pending"]


def test_table_budget_changes_only_its_table_and_scale(config):
    """tables.<t>.budget.<scale> overrides the scale's training options for that table's rows only
    (Tables 1-2 at quick: fewer L-BFGS iterations), and a misspelt key fails validation by name."""
    cfg = copy.deepcopy(config)
    cfg["tables"]["table1"]["budget"] = {"quick": {"baseline_train": {"lbfgs_iterations": 7},
                                                   "patch_mcgsm": {"max_iterations": 3, "max_patches": 500}}}
    E.validate_config(cfg)
    assert E.train_config(cfg, "quick", "table1", "mcgsm32_inf")["train"]["lbfgs_iterations"] == 7
    assert E.train_config(cfg, "quick", "table1", "ride_l1_inf")["train"] == cfg["scales"]["quick"]["train"]
    assert E.train_config(cfg, "quick", "table3", "mcgsm32")["train"]["lbfgs_iterations"] == \
        cfg["scales"]["quick"]["baseline_train"]["lbfgs_iterations"]
    assert E.train_config(cfg, "paper", "table1", "mcgsm32_inf")["train"]["lbfgs_iterations"] == \
        cfg["scales"]["paper"]["baseline_train"]["lbfgs_iterations"]
    patch = E.patch_train_config(cfg, "quick", "table1", "mcgsm16_63")["train"]
    assert patch["max_iterations"] == 3 and patch["max_patches"] == 500
    assert E.dc_train_config(cfg, "quick", "table1")["train"] == cfg["scales"]["quick"]["patch"]["train"]["mogsm"]
    cfg["tables"]["table1"]["budget"]["quick"]["baseline_train"]["lbfgs_iteration"] = 3
    with pytest.raises(E.ConfigError, match="budget.quick.baseline_train.*lbfgs_iteration"):
        E.validate_config(cfg)


@pytest.mark.parametrize("table, scale, has_budget", [("table1", "quick", True), ("table1", "paper", False),
                                                       ("table3", "quick", False)])
def test_rendered_table_states_its_budget(config, tmp_path, table, scale, has_budget):
    """The .md's scale description and the provenance name the table's own budget where it has one,
    so a reader does not take the scale's MCGSM budget for what the rows were trained with."""
    config["pending"] = ["all"]
    out = tmp_path / f"{table}.csv"
    T.render_table(E.table_config(config, scale, table), table, scale, {}, {}, out, out.with_suffix(".md"),
                   None, out.with_suffix(".provenance.json"))
    md = out.with_suffix(".md").read_text()
    prov = json.loads(out.with_suffix(".provenance.json").read_text())
    assert (f"tables.{table}.budget.{scale}" in md) == has_budget
    assert prov["table_budget"] == (config["tables"][table].get("budget") or {}).get(scale, {})
    if has_budget:
        assert '"max_iterations": 40' in md and prov["table_budget"]["baseline_train"]["lbfgs_iterations"] == 200

