"""The SLURM profile (workflow/profiles/slurm) on a real SLURM: the smoke-scale Table 3 through
``--workflow-profile`` on the one-node cluster of workflow/cluster/local-slurm.sh.

Opt-in, because it submits jobs to whatever cluster ``sbatch`` reaches (never merely because
``sbatch`` exists, e.g. on a real cluster's login node). As root on Debian/Ubuntu:

    workflow/cluster/local-slurm.sh up
    RIDE_TEST_SLURM=1 python -m pytest -q tests/test_slurm.py
    workflow/cluster/local-slurm.sh down

It checks that every non-local job is submitted with sbatch and completes (sacct), that train and
evaluate go to the GPU partition with the GPU request the plugin documents (gres gpu:1, read back
from sacct's AllocTRES and ``scontrol show job``) and the rest to the CPU partition without one,
that Table 3 appears, and that a training job cancelled half-way (``scancel``) is resubmitted by
the profile's ``retries`` and resumes from its checkpoint. The fake GPU has no CUDA device, so
``ride --device auto`` runs those jobs on the CPU.
"""
from __future__ import annotations

import csv
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
ACCOUNT = os.environ.get("RIDE_SLURM_ACCOUNT", "ride")  # local-slurm.sh's account
GPU_RULES = ("train", "evaluate")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("RIDE_TEST_SLURM") != "1",
        reason="submits SLURM jobs: set RIDE_TEST_SLURM=1 after `workflow/cluster/local-slurm.sh up`",
    ),
]


def run(*cmd: str, timeout: float = 60) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout


def require_cluster() -> None:
    """Opted in: a missing cluster is a failure with the fix, never a skip."""
    fix = "start the local cluster with `workflow/cluster/local-slurm.sh up` (as root)"
    assert shutil.which("sbatch"), f"sbatch is not installed: {fix}"
    assert subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0, f"no slurmctld answers: {fix}"
    partitions = set(run("sinfo", "-h", "-o", "%R").split())
    assert {"cpu", "gpu"} <= partitions, f"partitions cpu and gpu are needed, sinfo shows {sorted(partitions)}: {fix}"
    assocs = run("sacctmgr", "-n", "-P", "list", "assoc", f"account={ACCOUNT}", "format=user")
    assert assocs.strip(), f"account {ACCOUNT!r} has no users (sacctmgr list assoc): {fix}"


def copy_workflow(dest: Path) -> None:
    """The workflow and its configuration (config/)."""
    shutil.copytree(ROOT / "workflow", dest / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "config", dest / "config", ignore=shutil.ignore_patterns("__pycache__"))


def table3_target() -> str:
    from ride import experiments

    return experiments.result_file("smoke", "table3", ".csv")


def local_profile(dest: Path) -> Path:
    """The profile as a user adapts it to this cluster: account and CPU counts; faster polling."""
    profile = yaml.safe_load(PROFILE.read_text())
    profile["default-resources"]["slurm_account"] = ACCOUNT
    cpus = int(run("sinfo", "-h", "-p", "gpu", "-o", "%c").split()[0])
    for rule in GPU_RULES:  # the profile asks for 4 CPUs; the local node may have fewer
        profile["set-resources"][rule]["cpus_per_task"] = 1 if cpus < 4 else 4
        profile["set-threads"][rule] = profile["set-resources"][rule]["cpus_per_task"]
    # The plugin polls every 40 s and more by default (kind to a busy slurmctld); 5 s here.
    profile["slurm-init-seconds-before-status-checks"] = 5
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


def checkpoint_progress(path: Path) -> tuple[int, int] | None:
    """(SGD stages done, stages in all) of an unfinished training checkpoint, else None."""
    try:
        try:
            from ride.checkpoint import load_verified  # checkpoints that carry their own sha256
        except ImportError:
            import torch

            payload = torch.load(path, map_location="cpu", weights_only=False)
        else:
            payload = load_verified(path, "checkpoint")
    except Exception:  # being replaced right now, or gone
        return None
    state = payload["state"]
    return None if state["finished"] else (state["stage"], len(payload["train_config"]["stages"]))


def is_train_of(comment: str, variant: str) -> bool:
    """The plugin's sbatch --comment names the rule and the wildcards (variant last)."""
    return comment.startswith("rule_train_wildcards_") and comment.endswith(f"_{variant}")


def running_train_job(variant: str) -> str | None:
    for line in run("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k").splitlines():
        jobid, comment = line.split("|", 1)
        if is_train_of(comment, variant):
            return jobid
    return None


def final_state(jobid: str) -> str:
    """Wait for a job to end; its state as squeue reports it."""
    for _ in range(240):
        state = run("squeue", "-h", "-t", "all", "-j", jobid, "-o", "%T").strip()
        if state not in ("RUNNING", "COMPLETING", "CONFIGURING"):
            return state
        time.sleep(0.25)
    raise AssertionError(f"SLURM job {jobid} did not end within a minute of scancel")


def cancel_one_training_half_way(proc: subprocess.Popen, work: Path, out: Path, deadline: float) -> dict:
    """scancel a train job whose checkpoint has a finished SGD stage and more to do; what it left."""
    missed = set()
    while time.time() < deadline and proc.poll() is None:
        for ckpt in work.glob("runs/smoke/**/checkpoint.pt"):
            variant = ckpt.parent.name
            progress = checkpoint_progress(ckpt)
            if variant in missed or not progress or not 1 <= progress[0] < progress[1]:
                continue
            jobid = running_train_job(variant)
            if jobid is None:
                continue
            subprocess.run(["scancel", jobid], check=True, timeout=60)
            shown = run("scontrol", "show", "job", jobid)
            if final_state(jobid) != "CANCELLED":  # it finished first: try the next one
                missed.add(variant)
                continue
            log = next(work.glob(f"logs/smoke/**/train/{variant}.log"))
            return {"variant": variant, "jobid": jobid, "scontrol": shown, "log": log,
                    "log_before": log.read_text(errors="replace"), "progress": checkpoint_progress(ckpt)}
        time.sleep(0.05)
    if proc.poll() is not None:
        raise AssertionError("Snakemake ended before a training job was cancelled:\n" + out.read_text()[-6000:])
    raise AssertionError(f"no training job was caught half-way (finished first: {sorted(missed)})")


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    require_cluster()
    work = tmp_path_factory.mktemp("slurm")
    copy_workflow(work)
    profile = local_profile(work / "profile-local")
    target = table3_target()
    cmd = [sys.executable, "-m", "snakemake", "--workflow-profile", str(profile), target, "--config", "scale=smoke"]
    start = time.time()
    out = work / "snakemake.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=work, stdout=sink, stderr=subprocess.STDOUT, text=True)
        try:
            cancelled = cancel_one_training_half_way(proc, work, out, start + 900)
            proc.wait(timeout=1500)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # Ctrl-C: Snakemake scancels its jobs (TERM would wait for them)
                proc.wait(timeout=120)
    wall = time.time() - start
    text = out.read_text()
    assert proc.returncode == 0, text[-6000:]
    run_id = re.search(r"SLURM run ID: (\S+)", text)[1]
    fields = "JobIDRaw,JobName,Partition,Account,AllocTRES,State,ExitCode,Elapsed,Comment"
    # sacct fills in a moment after a job ends; the run's jobs are those named with its run ID.
    sacct = run("sacct", "-X", "-P", "-n", "--starttime", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start - 60)),
                "--name", run_id, "--format", fields)
    jobs = [dict(zip(fields.split(","), line.split("|", 8))) for line in sacct.splitlines()]
    print(f"\nwall time {wall:.0f} s; cancelled {cancelled['variant']} (job {cancelled['jobid']}) at "
          f"{cancelled['progress']} (stages done, stages); sacct ({fields}):\n{sacct}")
    return {"work": work, "target": target, "text": text, "jobs": jobs, "cancelled": cancelled, "wall": wall}


def test_every_job_is_submitted_with_sbatch_and_completes(slurm_run):
    jobs, text = slurm_run["jobs"], slurm_run["text"]
    submitted = set(re.findall(r"has been submitted with SLURM jobid (\d+)", text))
    assert submitted and submitted == {j["JobIDRaw"] for j in jobs}, (submitted, jobs)
    rules = {j["Comment"].split("_wildcards_")[0] for j in jobs}
    assert {"rule_train", "rule_evaluate"} <= rules and len(rules) >= 3, rules  # + data generation
    # Local rules (config files, the table) never reach SLURM; every job that did is accounted.
    assert not any(c.startswith(("rule_table", "rule_model_config", "rule_configured_scale")) for c in rules)
    for j in jobs:
        assert j["Account"] == ACCOUNT, j
        if j["JobIDRaw"] == slurm_run["cancelled"]["jobid"]:
            assert j["State"].startswith("CANCELLED"), j
        else:
            assert j["State"] == "COMPLETED" and j["ExitCode"] == "0:0", j


def test_gpu_rules_request_a_gpu_on_the_gpu_partition(slurm_run):
    for j in slurm_run["jobs"]:
        rule = j["Comment"].split("_wildcards_")[0].removeprefix("rule_")
        if rule in GPU_RULES:
            assert j["Partition"] == "gpu" and "gres/gpu=1" in j["AllocTRES"], j
        else:
            assert j["Partition"] == "cpu" and "gres/gpu" not in j["AllocTRES"], j
    shown = slurm_run["cancelled"]["scontrol"]  # a train job as SLURM holds it while it runs
    assert "Partition=gpu" in shown and re.search(r"TresPerNode=gres:gpu:1\b", shown), shown


def test_table3_appears(slurm_run):
    path = slurm_run["work"] / slurm_run["target"]
    rows = list(csv.DictReader(path.open()))
    ours = [r for r in rows if r.get("ours_bits_px")]
    assert len(ours) >= 8, rows  # every trained and evaluated row, the ensemble included
    assert all(math.isfinite(float(r["ours_bits_px"])) for r in ours), ours


def test_cancelled_training_is_retried_and_resumes_from_its_checkpoint(slurm_run):
    cancelled, jobs = slurm_run["cancelled"], slurm_run["jobs"]
    variant = cancelled["variant"]
    mine = [j for j in jobs if is_train_of(j["Comment"], variant)]
    assert [j["State"].split()[0] for j in mine] == ["CANCELLED", "COMPLETED"], mine
    assert int(mine[1]["JobIDRaw"]) > int(mine[0]["JobIDRaw"])
    # A fresh run prints every SGD stage ("stage 1/N" ...); the retry starts after the stages
    # its checkpoint holds. (Snakemake may or may not have emptied the log before the retry.)
    before, after = cancelled["log_before"], cancelled["log"].read_text(errors="replace")
    retry = after[len(before):] if after.startswith(before) else after
    assert re.search(r"stage 1/\d+", before), before[-2000:]
    assert cancelled["progress"], "the checkpoint was finished when the job was cancelled"
    done, total = cancelled["progress"]
    assert 1 <= done and not re.search(r"stage 1/\d+", retry), retry[-3000:]
    retrained = sorted({int(s) for s in re.findall(r"stage (\d+)/\d+", retry)})
    assert retrained == list(range(done + 1, total + 1)), (done, total, retry[-3000:])
    assert not list(slurm_run["work"].glob(f"runs/smoke/**/{variant}/checkpoint.pt"))  # removed on success
