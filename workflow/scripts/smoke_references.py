"""Regenerate the committed smoke references and the tolerance of the smoke test.

    python workflow/scripts/smoke_references.py            # seeds 0 1 2, 2 cores
    python workflow/scripts/smoke_references.py --seeds 0 1 2 3 --cores 2

Runs the smoke scale once per training seed (`--config train_seed=K`; the data set is the
same) in temporary copies of the workflow, then writes

* tests/references/smoke/{table3.csv,table3.md,table3.html,table3.provenance.json,figure2.csv,
  figure2.png} from the first seed (the committed reference; config train_seed is that seed), and
* tests/references/smoke/seed_spread.json: every seed's bits/px per row, their standard deviations and
  ``tolerance = max(3 x largest per-row SD, 0.005)`` bit/px (ride.tables.seed_spread, also `ride table spread`), which
  tests/test_workflow.py allows between a fresh smoke run and the reference.

Re-run it whenever training or evaluation code changes the smoke numbers. Takes a few minutes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ride import experiments as E  # noqa: E402
from ride import tables as T  # noqa: E402

FILES = ("table3.csv", "table3.md", "table3.html", "table3.provenance.json", "figure2.csv", "figure2.png")
# Outside results/: a smoke run in a checkout writes results/smoke/ and must not touch the references.
OUT = ROOT / "tests" / "references" / "smoke"


def run_seed(seed: int, cores: int, work_dir: Path | None) -> Path:
    if work_dir is not None:
        work = work_dir / f"seed{seed}"
        if (work / "results" / "smoke" / "table3.csv").exists():
            print(f"seed {seed}: reusing {work}", flush=True)
            return work
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    else:
        work = Path(tempfile.mkdtemp(prefix=f"smoke_seed{seed}_"))
    shutil.copytree(ROOT / "workflow", work / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "config", work / "config", dirs_exist_ok=True)
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", str(cores), "--config", "scale=smoke", f"train_seed={seed}"],
        cwd=work, capture_output=True, text=True,
    )
    if res.returncode != 0:
        sys.exit(f"smoke run for seed {seed} failed in {work}:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    print(f"seed {seed}: {time.perf_counter() - start:.0f} s in {work}", flush=True)
    return work


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep each seed's run in WORK_DIR/seedK and reuse finished ones (default: temporary)")
    parser.add_argument("--only-seed", type=int, default=None, help="just run this seed into --work-dir and stop")
    args = parser.parse_args()
    if args.only_seed is not None:
        if args.work_dir is None:
            parser.error("--only-seed needs --work-dir")
        run_seed(args.only_seed, args.cores, args.work_dir)
        return 0
    if len(args.seeds) < 3:
        parser.error("give at least three seeds")
    config = E.load_config(ROOT / "config" / "config.yaml")
    if args.seeds[0] != config.get("train_seed", 0):
        parser.error(f"the first seed must be config/config.yaml's train_seed ({config.get('train_seed', 0)})")
    works = [run_seed(s, args.cores, args.work_dir) for s in args.seeds]
    tables = [T.read_csv(w / "results" / "smoke" / "table3.csv") for w in works]
    spread = T.seed_spread(tables, factor=args.factor)
    spread["seeds"] = args.seeds
    spread["what"] = (
        "bits/px of each smoke row for several training seeds (same data); the smoke test allows "
        "`tolerance` between a fresh smoke run and tests/references/smoke/table3.csv"
    )
    out = OUT
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(works[0] / "results" / "smoke" / name, out / name)
    (out / "seed_spread.json").write_text(json.dumps(spread, indent=2) + "\n")
    if args.work_dir is None:
        for w in works:
            shutil.rmtree(w, ignore_errors=True)
    print(f"largest per-row SD {spread['max_sd']:.4f} bit/px over {len(args.seeds)} seeds -> tolerance {spread['tolerance']:.4f}")
    print(f"wrote {out}/ ({', '.join(FILES)}, seed_spread.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
