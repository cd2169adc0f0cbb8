"""Provenance attached to every result: git commit, versions, device, seed, command, time."""
from __future__ import annotations

import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError


def git_commit(path: str | Path | None = None) -> str:
    """HEAD of the repository holding ``path`` (default: this package), ``+dirty`` if a tracked file
    is modified. Result files (results/, tests/references/) do not count: a job that rewrites a
    committed table deletes it first, and the table is output, not code."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)results",
             ":(top,exclude)tests/references"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_info(field: str) -> str | None:
    """The value of ``field`` (``model name``, ``flags``, ...) for the first CPU in
    /proc/cpuinfo, or None where the file or the field is missing (not Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; elsewhere what the platform module knows)."""
    return cpu_info("model name") or platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{cpu_model()} ({torch.get_num_threads()} threads)"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` are checked.

    Raises :class:`ride.errors.ConfigError` (one line) for any other name or a missing GPU.
    """
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if match is None:
        raise ConfigError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device!r} requested but CUDA is not available; use --device cpu or auto")
        if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1} or auto"
            )
    return torch.device(device)


def provenance(device: torch.device | str, seed: int | None = None, wall_time_s: float | None = None) -> dict[str, Any]:
    from . import __version__

    record: dict[str, Any] = {
        "git_commit": git_commit(),
        "versions": {
            "ride": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "device": device_name(device),
        "seed": seed,
        "command": " ".join(sys.argv),
        "host": platform.node(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if wall_time_s is not None:
        record["wall_time_s"] = round(wall_time_s, 3)
    return record
