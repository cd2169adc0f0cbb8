"""The data rules end to end: `snakemake all_datasets` at the smoke scale in a copy of the workflow,
every source downloaded from a server on 127.0.0.1 (first mirrors answering 404, one connection
dropped half-way) and prepared by the real `ride` command."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import sha1, sha256

from ride.data import load_images
from ride.datasets.patches import load_patches
from ride.datasets.sources import prepared_files

ROOT = Path(__file__).resolve().parents[1]
needs_ride = pytest.mark.skipif(shutil.which("ride") is None, reason="the `ride` command is not installed")


def _local_config(server, fakes) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "datasets.yaml").read_text())
    src = cfg["data_sources"]
    src["download"] = {"retries": 3, "backoff_s": 0.01, "timeout_s": 10}
    server.add("bsds/BSDS300-images.tgz", fakes.bsds_tgz, "drop")
    src["bsds300"].update(urls=[server.url("gone/BSDS300-images.tgz"), server.url("bsds/BSDS300-images.tgz")],
                          published_sha256=sha256(fakes.bsds_tgz), valid_images=2)
    for n, data in fakes.iml.items():  # image 80 only on the second mirror
        server.add(f"{'ivanov' if n == 80 else 'cin'}/imk{n:05d}.iml", data)
        server.add(f"ivanov/imk{n:05d}.iml", data)
    src["vanhateren"]["urls"] = [server.url("cin/imk{num:05d}.iml"), server.url("ivanov/imk{num:05d}.iml")]
    src["brodatz"]["urls"] = [server.url("brodatz/{name}.gif")]
    src["brodatz"]["textures"] = {}
    for name, gif in fakes.gifs.items():
        server.add(f"brodatz/{name}.gif", gif)
        src["brodatz"]["textures"][name] = sha1(gif)
    server.add("zenodo/data.tar.gz", fakes.maf_tgz)
    src["maf"]["urls"] = [server.url("zenodo/data.tar.gz")]
    return cfg


def loopback_workflow(dest, server, fakes) -> dict:
    """A copy of the workflow in ``dest`` whose data sources point at the local server."""
    shutil.copytree(ROOT / "workflow", dest / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "config", dest / "config")
    cfg = _local_config(server, fakes)
    (dest / "config" / "datasets.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


@pytest.mark.slow
@needs_ride
def test_smoke_dag_downloads_from_the_local_server_and_prepares_every_data_set(data_server, fake_sources, tmp_path):
    cfg = loopback_workflow(tmp_path, data_server, fake_sources)
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "all_datasets", "--config", "scale=smoke"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    files = prepared_files(cfg["data_sources"], "smoke")
    for source, paths in files.items():
        for path in paths:
            assert (tmp_path / path).exists(), path
    for path in (p for paths in files.values() for p in paths if p.endswith(".h5")):
        if "/patches_" in path:
            patches, _, meta = load_patches(tmp_path / path)
            assert len(patches) > 0
        else:
            assert len(load_images(tmp_path / path)) > 0
    prov = json.loads((tmp_path / "datasets/downloads/bsds300/BSDS300-images.tgz.json").read_text())
    assert prov["source"].endswith("/bsds/BSDS300-images.tgz") and prov["matches_published"] is True
    assert ("/gone/BSDS300-images.tgz", None) in data_server.requests  # the 404 mirror was tried first
    assert sum(p == "/bsds/BSDS300-images.tgz" for p, _ in data_server.requests) == 2  # dropped, resumed
    assert json.loads((tmp_path / "datasets/downloads/vanhateren/imk00080.iml.json").read_text())["source"].endswith(
        "/ivanov/imk00080.iml")

    again = subprocess.run(cmd + ["--dry-run"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
