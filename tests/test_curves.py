"""Learning curves (ride.curves, `ride curve`): the recorded points, the budget, the merge, the DAG."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from ride import curves as C
from ride import experiments as E
from ride.cli import main
from ride.errors import ConfigError
from ride.train import load_model

ROOT = Path(__file__).resolve().parents[1]
HAS_RIDE = shutil.which("ride") is not None
# A smoke-sized RIDE row: tiny, two stages; stage 2's epoch (116 patches) is smaller than max_patches.
DOC = {
    "model": {"nb_size": 5, "num_hidden": 4, "num_layers": 1, "extended": False, "num_components": 4,
              "num_scales": 2, "num_features": 4},
    "train": {"stages": [{"patch": 8, "lr": 1.0}, {"patch": 12, "lr": 0.5}], "batch_size": 50, "max_patches": 300,
              "whitening_samples": 20000, "lbfgs_iterations": 5, "lbfgs_samples": 5000},
    "curve": {"budget": 2, "fractions": [0.25, 0.5], "tile": 32, "max_tiles": 6, "name": "tiny", "scale": "smoke"},
}


def _run(doc: dict, data: Path, out: Path) -> dict:
    cfg = out.parent / "curve_config.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps(doc))
    assert main(["curve", "run", "--config", str(cfg), "--data", str(data / "train.h5"), "--test-data",
                 str(data / "test.h5"), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("curve_data")
    assert main(["deadleaves", "--out-train", str(root / "train.h5"), "--out-test", str(root / "test.h5"),
                 "--num-images", "40", "--num-test", "8", "--size", "32", "--param", "noise=13.35"]) == 0
    return root


@pytest.fixture(scope="module")
def curves(data, tmp_path_factory):
    """The same row at budgets 2 and 1."""
    root = tmp_path_factory.mktemp("curves")
    twice = _run(DOC, data, root / "b2" / "curve.json")
    once = _run({**DOC, "curve": {**DOC["curve"], "budget": 1}}, data, root / "b1" / "curve.json")
    return {"root": root, 2: twice, 1: once}


def test_final_point_is_what_ride_evaluate_gives(curves, data, tmp_path):
    out = tmp_path / "eval.json"
    model = curves["root"] / "b2" / "model.pt"
    assert main(["evaluate", "--model", str(model), "--data", str(data / "test.h5"), "--tile", "32",
                 "--max-tiles", "6", "--device", "cpu", "--out", str(out)]) == 0
    ev = json.loads(out.read_text())
    last = curves[2]["points"][-1]
    assert curves[2]["unit"] == "bits_per_pixel_z" and last["phase"] == "refined" and last["stage"] == 2
    assert last["bits_per_pixel_z"] == ev["bits_per_pixel_z"]
    assert last["bits_per_pixel"] == ev["bits_per_pixel"] and last["num_tiles"] == ev["num_tiles"] == 6


def test_points_follow_the_schedule_and_pixels_increase(curves):
    pts = curves[2]["points"]
    # per stage: the fractions 0.25, 0.5 of its steps, its end (sgd) and after L-BFGS (refined)
    assert [(p["stage"], p["phase"]) for p in pts] == [(1, "sgd")] * 3 + [(1, "refined")] + [(2, "sgd")] * 3 + [(2, "refined")]
    sgd = [p for p in pts if p["phase"] == "sgd"]
    assert all(a["train_pixels"] < b["train_pixels"] for a, b in pairwise(sgd))
    assert all(a["train_pixels"] <= b["train_pixels"] for a, b in pairwise(pts))
    assert all(a["train_seconds"] <= b["train_seconds"] for a, b in pairwise(pts))
    for i, p in enumerate(pts):
        if p["phase"] == "refined":  # L-BFGS trains on no SGD pixels
            assert p["train_pixels"] == pts[i - 1]["train_pixels"] and p["bits_per_pixel"] != pts[i - 1]["bits_per_pixel"]
    # 24 scored pixels per 8x8 patch, 80 per 12x12 (5-wide neighbourhood: 2 rows, 4 columns lost)
    assert pts[3]["train_pixels"] == pts[3]["train_patches"] * 24
    assert pts[-1]["train_pixels"] - pts[3]["train_pixels"] == (pts[-1]["train_patches"] - pts[3]["train_patches"]) * 80
    history = load_model(curves["root"] / "b2" / "model.pt").train_summary["history"]
    assert pts[-1]["train_patches"] == sum(h["batches"] for h in history) * 50


def test_budget_multiplies_the_pixels(curves):
    once, twice = curves[1], curves[2]
    assert once["train_pixels"] == once["base_train_pixels"] == twice["base_train_pixels"]
    assert twice["train_pixels"] == 2 * once["train_pixels"]
    ends = {b: [p["train_pixels"] for p in curves[b]["points"] if p["phase"] == "refined"] for b in (1, 2)}
    assert ends[2] == [2 * x for x in ends[1]]
    # stage 1 needs 12 steps, an epoch holds 9 (464 patches): two epochs of 6; stage 2 two epochs of its 2
    assert [(s["epochs"], s["max_patches"]) for s in twice["train_config"]["stages"]] == [(2, 300), (2, 100)]


def test_recording_does_not_change_the_training(curves, data, tmp_path):
    """Budget 1 trains exactly what `ride train` trains with the same config: scoring draws no random numbers."""
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({k: v for k, v in DOC.items() if k != "curve"}))
    assert main(["train", "--config", str(cfg), "--data", str(data / "train.h5"), "--out-dir", str(tmp_path / "m"),
                 "--device", "cpu", "--no-progress"]) == 0
    plain = load_model(tmp_path / "m" / "model.pt").state_dict()
    recorded = load_model(curves["root"] / "b1" / "model.pt").state_dict()
    assert plain.keys() == recorded.keys()
    assert all(torch.equal(plain[k], recorded[k]) for k in plain)


def test_scale_budget_arithmetic():
    train = {"stages": [{"patch": 8, "lr": 1.0}, {"patch": 12, "lr": 0.5, "epochs": 2}], "batch_size": 10,
             "max_patches": 100}
    # stage 1: 10 steps of 1000 patches; stage 2: 2 epochs x 4 steps (45 patches)
    part = C.scale_budget(train, [1000, 45], 0.3)["stages"]
    assert [(s["epochs"], s["max_patches"]) for s in part] == [(1, 30), (1, 20)]  # 3 steps; round(2.4) = 2 steps
    four = C.scale_budget(train, [1000, 45], 4)["stages"]
    assert [(s["epochs"], s["max_patches"]) for s in four] == [(1, 400), (8, 40)]
    assert C.stage_batches(45, 40, 8, 10) == 32 == 4 * C.stage_batches(45, 100, 2, 10)
    assert four[0]["lr"] == 1.0 and train["stages"][0] == {"patch": 8, "lr": 1.0}  # the input is not changed


def test_a_restore_drops_the_points_after_it():
    """A diverged stage restored to an earlier step forgets what was recorded after it."""

    class Recorder(C.CurveRecorder):
        def record(self, stage, phase):  # no model: just the bookkeeping
            pixels, _ = self.pixels()
            self.points.append({"stage": stage + 1, "batch": self.steps.get(stage, 0), "phase": phase,
                                "train_pixels": pixels})

    trainer = SimpleNamespace(config=SimpleNamespace(batch_size=10), callback=None, on_stage=None)
    rec = Recorder(trainer, torch.zeros(1, 8, 8), [0.5], 8, None, None)
    info = {"stage": 0, "num_batches": 4, "patch": 8, "pixels_per_patch": 3, "batch": 0}
    trainer.on_stage("start", info)
    for b in range(4):
        trainer.callback({"stage": 0, "batch": b + 1})
    trainer.on_stage("sgd_end", {**info, "batch": 4})
    trainer.on_stage("refined", {**info, "batch": 4})
    trainer.on_stage("start", {**info, "stage": 1, "num_batches": 2, "pixels_per_patch": 5})
    trainer.callback({"stage": 1, "batch": 1})
    assert [p["train_pixels"] for p in rec.points] == [60, 120, 120, 170]
    trainer.on_stage("start", {**info, "stage": 0, "batch": 3})  # restored to stage 1, step 3
    assert [(p["batch"], p["phase"]) for p in rec.points] == [(2, "sgd")] and rec.events[0]["event"] == "restored"
    trainer.callback({"stage": 0, "batch": 4})
    trainer.on_stage("sgd_end", {**info, "batch": 4})
    assert [p["train_pixels"] for p in rec.points] == [60, 120]


def test_merge_writes_csv_png_and_order(curves, tmp_path):
    paths = [curves["root"] / "b1" / "curve.json", curves["root"] / "b2" / "curve.json"]
    out = tmp_path / "lc"
    assert main(["curve", "plot", *map(str, paths), "--out-csv", f"{out}.csv", "--out-png", f"{out}.png",
                 "--provenance", f"{out}.provenance.json"]) == 0
    with open(f"{out}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(curves[1]["points"]) + len(curves[2]["points"])
    assert [float(r["bits_per_px"]) for r in rows[-len(curves[2]["points"]):]] == [p["bits_per_pixel_z"] for p in curves[2]["points"]]
    assert Path(f"{out}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prov = json.loads(Path(f"{out}.provenance.json").read_text())
    assert [i["sha256"] for i in prov["inputs"]] and prov["scale"] == "smoke"


def test_errors_are_one_line(data, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in DOC.items() if k != "curve"}))
    args = ["curve", "run", "--config", str(bad), "--data", str(data / "train.h5"), "--test-data",
            str(data / "test.h5"), "--out", str(tmp_path / "c.json"), "--device", "cpu"]
    assert main(args) == 2
    assert "no `curve` section" in capsys.readouterr().err
    bad.write_text(json.dumps({**DOC, "curve": {**DOC["curve"], "fractions": [1.5]}}))
    assert main(args) == 2
    assert "curve.fractions[0]" in capsys.readouterr().err
    config = E.load_config(ROOT / "config" / "config.yaml")
    C.validate_curves(config)
    with pytest.raises(ConfigError, match="MCGSM rows"):
        C.validate_curves({**config, "curves": {**config["curves"], "variants": ["mcgsm32"]}})
    with pytest.raises(ConfigError, match="unknown variant 'ride64_l9'"):
        C.validate_curves({**config, "curves": {**config["curves"], "variants": ["ride64_l9"]}})
    with pytest.raises(ConfigError, match="no entry for scale 'paper'"):
        C.curve_config(config, "paper", "ride64_l1")


def test_curve_config_of_the_workflow():
    config = E.load_config(ROOT / "config" / "config.yaml")
    doc = C.curve_config(config, "quick", "ride64_l2")
    assert doc["model"] == E.model_kwargs(config, "quick", "table3", "ride64_l2")
    assert doc["train"] == config["scales"]["quick"]["train"]
    assert doc["curve"]["budget"] >= 4  # the issue asks for at least 4x the quick budget
    assert doc["curve"]["tile"] == 64 and doc["curve"]["max_tiles"] == 400
    C.validate_curve_config(doc)


def _snakemake(args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], check=False, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_smoke_dag_builds_the_curves_and_all_does_not(tmp_path):
    res = _snakemake(["-n", "--nolock", "--cores", "1", "--config", "scale=smoke", "--",
                      "results/smoke/learning_curves.csv"], ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for v in ("ride64_l1", "ride64_l1_ext", "ride64_l2", "ride64_l3"):
        assert f"runs/smoke/curves/{v}/curve.json" in res.stdout
    res = _snakemake(["-n", "--nolock", "--cores", "1", "--config", "scale=smoke"], ROOT)
    assert res.returncode == 0 and "learning_curves" not in res.stdout and "rule curve" not in res.stdout


@pytest.mark.skipif(not HAS_RIDE, reason="the `ride` command is not installed")
def test_smoke_curve_of_one_variant_end_to_end(tmp_path):
    """The smoke DAG for real, one variant (about half a minute)."""
    work = tmp_path / "wf"
    shutil.copytree(ROOT / "workflow", work / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "config", work / "config")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["curves"]["variants"] = ["ride64_l1"]
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    res = _snakemake(["--cores", "1", "--config", "scale=smoke", "device=cpu", "--", "results/smoke/learning_curves.csv"],
                     work, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    curve = json.loads((work / "runs/smoke/curves/ride64_l1/curve.json").read_text())
    with open(work / "results/smoke/learning_curves.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(curve["points"]) > 0 and {r["variant"] for r in rows} == {"ride64_l1"}
    assert curve["budget"] == config["curves"]["scales"]["smoke"]["budget"]
    assert (work / "results/smoke/learning_curves.png").exists()
