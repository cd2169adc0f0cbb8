"""Provenance attached to every result: git commit, versions, device, seed, command, time."""
from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def git_commit(path: str | Path | None = None) -> str:
    """HEAD of the repository holding ``path`` (default: this package), ``+dirty`` if modified."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{cpu} ({torch.get_num_threads()} threads)"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
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
