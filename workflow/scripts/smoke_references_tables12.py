"""Regenerate the committed smoke references of Tables 1 and 2 (tests/references/smoke/table{1,2}.*).

    python workflow/scripts/smoke_references_tables12.py [--cores 2] [--work-dir DIR]

Tables 1 and 2 read real data sets (BSDS300, van Hateren); at the smoke scale these come from the
tests' loopback server: the fake sources of tests/conftest.py served on 127.0.0.1, with the data
sources of a copy of the workflow pointed at it (tests/test_datasets_workflow.py::loopback_workflow).
One smoke run (`snakemake results/smoke/table1.csv results/smoke/table2.csv --config scale=smoke`,
config train_seed) then writes the files copied here. Smoke numbers say nothing about the paper:
tests/test_tables.py re-judges these files (every row finite) and the slow end-to-end test compares
a fresh run's rows and columns with them. Takes about 3-5 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import make_fake_sources, serve_data  # noqa: E402
from test_datasets_workflow import loopback_workflow  # noqa: E402

from ride import experiments as E  # noqa: E402
from ride import tables as T  # noqa: E402

TABLES = ("table1", "table2")
SUFFIXES = (".csv", ".md", ".html", ".provenance.json")
# Outside results/: a smoke run in a checkout writes results/smoke/ and must not touch the references.
OUT = ROOT / "tests" / "references" / "smoke"


def run(work: Path, cores: int) -> None:
    """The smoke run of both tables in ``work`` (a fresh workflow copy), served from 127.0.0.1."""
    with serve_data() as server:
        loopback_workflow(work, server, make_fake_sources())
        targets = [f"results/smoke/{t}.csv" for t in TABLES]
        start = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores), "--config", "scale=smoke",
                              "--", *targets], cwd=work, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            sys.exit(f"smoke run failed in {work}:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
        print(f"smoke tables 1 and 2: {time.perf_counter() - start:.0f} s in {work}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="run in this (new or empty) directory and keep it (default: a temporary one, removed)")
    args = parser.parse_args()
    if args.work_dir is not None and args.work_dir.exists() and any(args.work_dir.iterdir()):
        parser.error(f"--work-dir {args.work_dir} is not empty; give a new directory")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="smoke_tables12_"))
    work.mkdir(parents=True, exist_ok=True)
    run(work, args.cores)
    cfg = E.load_config(work / "config" / "config.yaml")
    for table in TABLES:
        ok, msgs = T.check_table(work / "results" / "smoke" / f"{table}.csv", cfg)
        if not ok:  # a reference that fails its own check would fail CI: keep the old one
            sys.exit(f"{table}: the fresh smoke table does not pass `ride table check` ({msgs}); references unchanged")
    OUT.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        for suffix in SUFFIXES:
            shutil.copy2(work / "results" / "smoke" / f"{table}{suffix}", OUT / f"{table}{suffix}")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {OUT}/ ({', '.join(t + s for t in TABLES for s in SUFFIXES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
