"""``model.pt`` and ``checkpoint.pt``: torch payloads that carry their own sha256.

The payload is serialised with ``torch.save`` and stored as raw bytes beside their digest and
its kind (``{"format": "ride-model/1", "sha256": ..., "body": uint8 tensor}``). Loading checks
the kind and the digest before unpickling the body, so a flipped bit anywhere in the weights,
a truncated file or a file of another kind is refused with a message naming the file and the
fix, instead of giving a silently wrong model. The digest travels with the file (no sidecar to
lose when a model is copied).
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .data import atomic_write
from .errors import ConfigError, CorruptFileError, TrainingError

KINDS = {"model": "ride-model/1", "checkpoint": "ride-checkpoint/1", "patch-model": "ride-patch-model/1",
         "inpaint-state": "ride-inpaint-state/1", "patch-checkpoint": "ride-patch-checkpoint/1"}
FIXES = {
    "model": "delete it and train the model again (`ride train`, or re-run snakemake)",
    "checkpoint": "run `ride train --restart` (or delete it) to train afresh",
    "patch-model": "delete it and train the patch model again (`ride patch train`, or re-run snakemake)",
    "inpaint-state": "delete it to start the inpainting afresh",
    "patch-checkpoint": "run `ride patch train --restart` (or delete it) to train afresh",
}


def save_verified(path: str | os.PathLike, payload: dict[str, Any], kind: str) -> None:
    """Write ``payload`` atomically to ``path`` as a file of ``kind`` ("model" or "checkpoint")."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    record = {
        "format": KINDS[kind],
        "sha256": hashlib.sha256(body).hexdigest(),
        "body": torch.frombuffer(bytearray(body), dtype=torch.uint8),
    }
    atomic_write(path, lambda tmp: torch.save(record, tmp))


def load_verified(path: str | os.PathLike, kind: str, map_location: Any = "cpu") -> dict[str, Any]:
    """The payload of a file written by :func:`save_verified`; :class:`CorruptFileError` otherwise."""
    path = Path(path)
    fix = FIXES[kind]
    if not path.exists():
        raise CorruptFileError(f"{path}: no such file")
    try:
        # Only plain containers and tensors can be in the record: nothing of it is executed.
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged archive
        raise CorruptFileError(
            f"{path}: not a readable {kind} file, truncated or corrupt ({type(err).__name__}); {fix}"
        ) from None
    if not isinstance(record, dict) or record.get("format") != KINDS[kind]:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CorruptFileError(
            f"{path}: not a RIDE {kind} file (format {found!r}, expected {KINDS[kind]!r}); "
            f"give the {kind} written by `ride train`, or {fix}"
        )
    body = record.get("body")
    if not isinstance(body, torch.Tensor) or body.dtype != torch.uint8:
        raise CorruptFileError(f"{path}: the {kind} file has no body; {fix}")
    data = body.numpy().tobytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.get("sha256"):
        raise CorruptFileError(
            f"{path}: sha256 of its contents ({digest[:12]}...) does not match the one stored in it; the file "
            f"is corrupt; {fix}"
        )
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)


# Resuming a run (`ride train`, `ride patch train`) ---------------------------------------------
class CheckpointMismatch(TrainingError):
    """``checkpoint.pt`` was written for another training config, model or data set."""


def describe_difference(key: str, label: str, theirs: Any, mine: Any) -> str:
    """Which field differs, e.g. ``train config lr: 1 -> 2``; keys ending in ``digest`` are data hashes."""
    if key.endswith("digest"):
        return f"{label} differ (sha256 of the pixels)"
    if not isinstance(theirs, dict) or not isinstance(mine, dict):
        return f"{label}: {theirs!r} -> {mine!r}"
    fields_ = sorted(set(theirs) | set(mine), key=str)
    diffs = [f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in fields_ if theirs.get(k) != mine.get(k)]
    return f"{label} " + ", ".join(diffs)


def check_same_run(path: str | os.PathLike, payload: Mapping[str, Any], expected: Mapping[str, tuple[str, Any]]) -> None:
    """Raise :class:`CheckpointMismatch` naming the first of ``expected`` (key -> (label, this run's
    value)) that the checkpoint ``payload`` at ``path`` holds otherwise."""
    for key, (label, mine) in expected.items():
        if payload.get(key) != mine:
            raise CheckpointMismatch(
                f"{path} was written for another run ({describe_difference(key, label, payload.get(key), mine)})"
            )


def check_resume_flags(path: str | os.PathLike, resume: bool, restart: bool) -> None:
    """Before any work: ``--resume`` and ``--restart`` exclude each other, and an unfinished run's
    checkpoint at ``path`` is never overwritten silently (one-line :class:`ConfigError`)."""
    if resume and restart:
        raise ConfigError("--resume and --restart exclude each other: continue the run, or discard it")
    if Path(path).exists() and not (resume or restart):
        raise ConfigError(
            f"{path} holds an unfinished run: continue it with --resume, or discard it and train "
            f"afresh with --restart"
        )


def discard_checkpoint(path: str | os.PathLike, program: str, reason: Exception, warning: bool = False) -> None:
    """Delete a checkpoint that cannot be resumed (corrupt, or of another run), saying why on
    stderr; the run then starts afresh, so the same command (and a Snakemake re-run) succeeds."""
    print(f"{program}: {'warning: ' if warning else ''}{reason}; discarding it and training afresh", file=sys.stderr)
    Path(path).unlink(missing_ok=True)
