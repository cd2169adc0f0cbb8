"""``ride patch train|evaluate``: the patch models of Tables 1 and 2 (63 and 256 dim), from the command line.

``ride patch train --config cfg.yaml --data patches_train.h5 [--valid patches_valid.h5] --out-dir DIR``
fits one of three models, named by ``model.kind`` in the config:

* ``patch_mcgsm``: :class:`ride.patch_mcgsm.PatchMCGSM` (one MCGSM per coordinate, L-BFGS);
* ``patch_ride``: :class:`ride.patch_ride.PatchRIDE` (:func:`ride.patch_ride.fit_patch_ride`);
* ``mogsm``: the DC model, :class:`ride.mogsm.MoGSM` on the patch means (the file's ``dc``).

Without ``--valid`` a random ``valid_fraction`` of the training patches is held out for early
stopping. Patch sets are DC-removed n x n (``n^2 - 1`` coordinates, Table 1) or raw n x n
(``n^2``, Table 2's 16x16; PatchMCGSM only). It writes ``model.pt`` (:func:`ride.checkpoint.save_verified`, kind ``patch-model``)
and ``train.json`` (the fit's records and provenance). ``--seed`` overrides ``train.seed`` (the
held-out split, the initialisation and the fit's draws; recorded in the provenance). PatchRIDE
writes ``checkpoint.pt`` as it trains (every ``train.checkpoint_every`` batches and after each
epoch); ``--resume`` continues it exactly as ``ride train --resume`` does, ``--restart`` discards it.

``ride patch evaluate --model DIR/model.pt --data patches_test.h5 [--ensemble] [--dc-model dc.pt]
--out eval.json`` reports the 63-dim average log-likelihood in nats per patch with its SEM over
patches and the 64-dim rate in bit/px (ride.patch_rates): with our l_DC (the DC model on the test
file's ``dc``) and with the paper's 0.5020 nats. ``bits_per_pixel`` is the 64-dim rate with our
l_DC when a DC model is given, else with the paper's. For raw patches the rate is the
log-likelihood / n^2 / ln 2 (no DC, no Jacobian).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .checkpoint import check_resume_flags, load_verified, save_verified
from .errors import ConfigError, DataError, EvaluationError
from .mogsm import MoGSM
from .patch_ensemble import PatchEnsemble
from .patch_mcgsm import PatchMCGSM
from .patch_rates import PAPER_L_DC, bits_per_pixel_from_patch, log_abs_det_preprocessing
from .patch_ride import PatchRIDE, fit_patch_ride
from .train_config import MODEL_SCHEMA, POSITIVE_INT, _check

KINDS = ("patch_mcgsm", "patch_ride", "mogsm")
MIXTURE = {"num_components": POSITIVE_INT, "num_scales": POSITIVE_INT}
LBFGS = {"max_iterations": {"type": "integer", "minimum": 0}, "check_every": POSITIVE_INT, "patience": POSITIVE_INT}
COMMON_TRAIN = {
    "max_patches": {"type": ["integer", "null"], "minimum": 2},
    "valid_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "seed": {"type": "integer", "minimum": 0},
}


def _section(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties}


# Per kind: (model schema, train schema, train defaults). Every object forbids unknown keys.
SCHEMAS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "patch_mcgsm": (
        _section({"kind": {"const": "patch_mcgsm"}, **MIXTURE, "num_features": POSITIVE_INT}),
        _section({**LBFGS, **COMMON_TRAIN}),
        {"max_iterations": 500, "check_every": 25, "patience": 2},
    ),
    "mogsm": (
        _section({"kind": {"const": "mogsm"}, **MIXTURE}),
        _section({**LBFGS, **COMMON_TRAIN}),
        {"max_iterations": 500, "check_every": 25, "patience": 2},
    ),
    "patch_ride": (
        {**MODEL_SCHEMA, "properties": {"kind": {"const": "patch_ride"}, **MODEL_SCHEMA["properties"]}},
        _section({
            "learning_rates": {"type": "array", "minItems": 1, "items": {"type": "number", "exclusiveMinimum": 0}},
            "batch_size": POSITIVE_INT,
            "momentum": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "clip_grad_norm": {"type": ["number", "null"], "exclusiveMinimum": 0},
            "whitening_samples": POSITIVE_INT,
            "lbfgs_iterations": {"type": "integer", "minimum": 0},
            "lbfgs_samples": POSITIVE_INT,
            "checkpoint_every": POSITIVE_INT,
            **COMMON_TRAIN,
        }),
        {"checkpoint_every": 100},
    ),
}


def validate_patch_config(config: Any, source: str = "config") -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(kind, model kwargs, train options)`` of a ``ride patch train`` config, or a one-line ConfigError."""
    if not isinstance(config, Mapping) or set(config) != {"model", "train"}:
        found = sorted(config) if isinstance(config, Mapping) else type(config).__name__
        raise ConfigError(f"{source}: a patch config has exactly the sections 'model' (with 'kind') and 'train' "
                          f"('train: {{}}' = defaults), found {found}")
    model, train = config["model"], config["train"]
    kind = model.get("kind") if isinstance(model, Mapping) else None
    if kind not in KINDS:
        raise ConfigError(f"{source}: model.kind: {kind!r} is not a patch model; use one of {', '.join(KINDS)}")
    model_schema, train_schema, defaults = SCHEMAS[kind]
    _check(model_schema, model, source, "model")
    _check(train_schema, train, source, "train")
    kwargs = {k: v for k, v in model.items() if k != "kind"}
    return kind, kwargs, {"valid_fraction": 0.1, "seed": 0, "max_patches": None, **defaults, **train}


def _read_config(path: str) -> Any:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror}); pass an existing --config file") from None
    try:
        return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot parse the config ({' '.join(str(err).split())}); fix its syntax") from None


def patch_layout(dim: int, path: str | Path) -> tuple[int, bool]:
    """``(n, dc_removed)`` of patches with ``dim`` coordinates: DC-removed n x n (``n^2 - 1``, e.g. 63
    for Table 1) or raw n x n (``n^2``, e.g. 256 for Table 2); no ``dim`` is both."""
    for size, dc_removed in ((math.isqrt(dim + 1), True), (math.isqrt(dim), False)):
        if size >= 2 and size * size == dim + dc_removed:
            return size, dc_removed
    raise DataError(f"{path}: patches have {dim} coordinates, neither n^2 - 1 (DC-removed n x n patches) nor n^2 "
                    f"(raw n x n patches); give a patch set written by `ride prepare` (63 for 8x8, 256 for 16x16)")


def patch_size_of(dim: int, path: str | Path) -> int:
    """The side n of DC-removed patches with ``dim = n^2 - 1`` coordinates (PatchRIDE's input)."""
    size, dc_removed = patch_layout(dim, path)
    if not dc_removed:
        raise DataError(f"{path}: {dim} coordinates are raw {size}x{size} patches; PatchRIDE models DC-removed "
                        f"patches (n^2 - 1 coordinates): use model.kind patch_mcgsm for raw patches")
    return size


def _values(path: str | Path, kind: str) -> tuple[torch.Tensor, dict[str, Any]]:
    """The training values of ``kind`` in a patch-set file: the patches, or for ``mogsm`` their ``dc``."""
    from .datasets.patches import load_patches

    patches, dc, attrs = load_patches(path)
    if kind == "mogsm":
        if dc is None:
            raise DataError(f"{path}: no dataset 'dc' (the patch means) to fit the DC model on; give a patch set "
                            f"written by `ride prepare` for a source with images (not MAF's, which has no DC)")
        return torch.from_numpy(dc.astype(np.float64)), attrs
    (patch_size_of if kind == "patch_ride" else patch_layout)(patches.shape[1], path)
    return torch.from_numpy(patches), attrs


def _plain(value: Any) -> Any:
    """An HDF5 attribute as JSON: arrays as lists, numpy scalars as numbers, anything else as text."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def build_model(kind: str, config: Mapping[str, Any]) -> nn.Module:
    """A fresh model of ``kind`` from its stored ``config`` (the model's ``config`` property)."""
    if kind == "patch_mcgsm":
        return PatchMCGSM(**config)
    if kind == "patch_ride":
        return PatchRIDE(**config)
    if kind == "mogsm":
        return MoGSM(**config)
    raise ConfigError(f"unknown patch model kind {kind!r}; known: {', '.join(KINDS)}")


def train_patch_model(
    config: Mapping[str, Any], data: str | Path, out_dir: str | Path, valid: str | Path | None = None,
    device: str = "auto", progress: bool = False, source: str = "config", seed: int | None = None,
    resume: bool = False, restart: bool = False,
) -> dict[str, Any]:
    """Fit the model of ``config`` on a patch set and write ``model.pt`` and ``train.json`` to ``out_dir``.

    ``seed`` overrides ``train.seed`` (the held-out split, the initialisation and every draw of
    the fit). PatchRIDE keeps ``out_dir/checkpoint.pt`` while it trains: ``resume`` continues
    it, ``restart`` discards it, and without either an existing one is an error (nothing is
    overwritten); it is removed after success. The L-BFGS kinds have no checkpoint.
    """
    from .data import atomic_write
    from .provenance import provenance, resolve_device

    start = time.perf_counter()
    kind, kwargs, opts = validate_patch_config(config, source)
    if seed is not None:
        if seed < 0:
            raise ConfigError(f"--seed {seed}: a seed is a non-negative integer")
        opts["seed"] = seed
    checkpoint = Path(out_dir) / "checkpoint.pt"
    check_resume_flags(checkpoint, resume, restart)
    dev = resolve_device(device)
    x, attrs = _values(data, kind)
    if valid is not None:
        held, _ = _values(valid, kind)
    else:
        gen = torch.Generator().manual_seed(opts["seed"])
        order = torch.randperm(x.shape[0], generator=gen)
        num_valid = max(1, round(opts["valid_fraction"] * x.shape[0]))
        if x.shape[0] - num_valid < 2:
            raise DataError(f"{data}: {x.shape[0]} values are too few to hold out {num_valid} for early stopping; "
                            f"give more patches or --valid")
        x, held = x[order[num_valid:]], x[order[:num_valid]]
    if opts["max_patches"] is not None:
        x = x[: opts["max_patches"]]
    if kind != "mogsm" and held.shape[1] != x.shape[1]:
        raise DataError(f"{valid}: patches have {held.shape[1]} coordinates, the training set {x.shape[1]}; "
                        f"give the validation split of the same patch set")
    if restart:
        checkpoint.unlink(missing_ok=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts["seed"])
    if kind == "patch_ride":
        model = PatchRIDE(size=patch_size_of(x.shape[1], data), **kwargs).to(dev)
        ride_opts = {k: v for k, v in opts.items() if k not in ("valid_fraction", "max_patches")}
        history = fit_patch_ride(model, x, held, progress=progress, checkpoint=checkpoint, resume=resume, **ride_opts)
    elif kind == "patch_mcgsm":
        model = PatchMCGSM(dim=x.shape[1], **kwargs).to(dev)
        history = model.fit(x, held, opts["max_iterations"], opts["check_every"], opts["patience"], progress=progress)
    else:
        model = MoGSM(**kwargs).to(dev)
        history = [model.fit(x.to(dev), held.to(dev), opts["max_iterations"], opts["check_every"], opts["patience"])]
    summary = {
        "kind": kind, "model_config": model.config, "train": opts, "data": str(data),
        "valid": None if valid is None else str(valid), "num_train": int(x.shape[0]), "num_valid": int(held.shape[0]),
        "data_attrs": {k: _plain(v) for k, v in attrs.items()},
        "history": history, "provenance": provenance(dev, opts["seed"], time.perf_counter() - start),
    }
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    save_verified(out / "model.pt", {"kind": kind, "config": model.config, "state_dict": state,
                                     "summary": summary}, "patch-model")
    text = json.dumps(summary, indent=2, default=float)
    atomic_write(out / "train.json", lambda tmp: Path(tmp).write_text(text + "\n"))
    # Done: a deliberate re-run (--forcerun, changed code) must train afresh, not reload this.
    checkpoint.unlink(missing_ok=True)
    return summary


def load_patch_model(path: str | Path, device: str | torch.device = "cpu", kinds: tuple[str, ...] = KINDS) -> nn.Module:
    """Rebuild a model written by :func:`train_patch_model` (sha256 verified); its kind must be in ``kinds``."""
    payload = load_verified(path, "patch-model", device)
    if payload.get("kind") not in kinds:
        raise ConfigError(f"{path}: a {payload.get('kind')!r} model where {' or '.join(kinds)} is needed; "
                          f"give a model trained with model.kind {kinds[0]}")
    model = build_model(payload["kind"], payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.train_summary = payload.get("summary", {})
    return model.to(device).eval()


@torch.no_grad()
def _batched(fn: Any, x: torch.Tensor, device: torch.device, batch: int) -> torch.Tensor:
    return torch.cat([fn(x[s : s + batch].to(device)).double().cpu() for s in range(0, x.shape[0], batch)])


def _mean_sem(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else float("nan")


def evaluate_patch_model(
    model: nn.Module, patches: torch.Tensor, size: int, dc: torch.Tensor | None = None,
    dc_model: nn.Module | None = None, ensemble: bool = False, batch_size: int = 1024, dc_removed: bool = True,
) -> dict[str, Any]:
    """Average log-likelihood (nats per patch, mean and SEM over patches) and the rate in bit/px.

    DC-removed patches (Table 1): the ``n^2``-pixel rate of ride.patch_rates with the paper's l_DC
    and, given ``dc_model``, ours. Raw patches (Table 2's "256 dim."): log-likelihood / n^2 / ln 2.
    """
    device = next(model.parameters()).device
    if ensemble and not dc_removed:
        raise ConfigError("--ensemble maps DC-removed patches (n^2 - 1 coordinates) only; drop it for raw patches")
    scorer = PatchEnsemble(model, size) if ensemble else model
    log_p = _batched(scorer.log_prob, patches, device, batch_size)
    if not torch.isfinite(log_p).all():
        raise EvaluationError(f"{int((~torch.isfinite(log_p)).sum())} of {log_p.numel()} patches have a non-finite "
                              f"log-likelihood")
    mean, sem = _mean_sem(log_p)
    scale = 1.0 / (size * size * math.log(2.0))
    result: dict[str, Any] = {
        "log_likelihood": mean, "sem": sem, "unit": "nat per patch", "num_patches": int(log_p.numel()),
        "dim": int(patches.shape[1]), "size": size, "dc_removed": dc_removed, "ensemble": ensemble,
        "bits_per_pixel": mean * scale, "sem_bits_per_pixel": sem * scale,
    }
    if not dc_removed:
        if dc_model is not None:
            raise ConfigError("--dc-model adds the DC of DC-removed patches; these patches are raw: drop it")
        return result
    log_det = log_abs_det_preprocessing(size)
    result.update(log_det_a=log_det, l_dc_paper=PAPER_L_DC, l_dc=None, sem_l_dc=None, bits_per_pixel_our_l_dc=None,
                  bits_per_pixel_paper_l_dc=bits_per_pixel_from_patch(mean, PAPER_L_DC, size, log_det))
    result["bits_per_pixel"] = result["bits_per_pixel_paper_l_dc"]
    if dc_model is not None:
        if dc is None:
            raise DataError("the test patch set has no 'dc' (patch means) to score the DC model on; drop --dc-model")
        dc_device = next(dc_model.parameters()).device
        log_dc = _batched(dc_model.log_prob, dc.float(), dc_device, 1 << 16)
        l_dc, sem_dc = _mean_sem(log_dc)
        # DC and x come from the same patches: the SEM of the rate is that of the per-patch totals.
        _, sem_total = _mean_sem(log_p + log_dc)
        rate = bits_per_pixel_from_patch(mean, l_dc, size, log_det)
        result.update(l_dc=l_dc, sem_l_dc=sem_dc, bits_per_pixel_our_l_dc=rate, bits_per_pixel=rate,
                      sem_bits_per_pixel=sem_total * scale)
    return result


def cmd_train(args: argparse.Namespace) -> int:
    from .kernels import tune_malloc

    config = _read_config(args.config)
    validate_patch_config(config, args.config)  # before the data is read
    tune_malloc()
    train_patch_model(config, args.data, args.out_dir, args.valid, args.device, not args.no_progress, args.config,
                      args.seed, args.resume, args.restart)
    print(f"wrote {Path(args.out_dir) / 'model.pt'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import atomic_write
    from .datasets.patches import load_patches
    from .provenance import provenance, resolve_device

    start = time.perf_counter()
    device = resolve_device(args.device)
    model = load_patch_model(args.model, device, ("patch_mcgsm", "patch_ride"))
    dc_model = load_patch_model(args.dc_model, device, ("mogsm",)) if args.dc_model else None
    patches, dc, _ = load_patches(args.data)
    size, dc_removed = patch_layout(patches.shape[1], args.data)
    if patches.shape[1] != model.dim:
        raise DataError(f"{args.data}: patches have {patches.shape[1]} coordinates, {args.model} models {model.dim}; "
                        f"give the test split of the patch set it was trained on")
    try:
        result = evaluate_patch_model(model, torch.from_numpy(patches), size,
                                      None if dc is None else torch.from_numpy(dc), dc_model, args.ensemble,
                                      args.batch_size, dc_removed)
    except (EvaluationError, DataError, ConfigError) as err:
        raise type(err)(f"{args.model} on {args.data}: {err}") from None
    result.update({"model": str(args.model), "dc_model": args.dc_model, "data": str(args.data),
                   "kind": model.train_summary.get("kind"), "model_config": model.config,
                   "provenance": provenance(device, model.train_summary.get("provenance", {}).get("seed"),
                                            time.perf_counter() - start)})
    text = json.dumps(result, indent=2)
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(text + "\n"))
    print(text)
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """``ride patch train|evaluate`` (Table 1's 63-dim column)."""
    from .cli import positive_int

    p = sub.add_parser("patch", help="patch models of Table 1's 63-dim column: train, evaluate")
    patch_sub = p.add_subparsers(dest="patch_command", required=True)
    q = patch_sub.add_parser("train", help="fit a PatchMCGSM, PatchRIDE or DC MoGSM (model.kind) on a patch set")
    q.add_argument("--config", required=True, help="YAML/JSON with 'model' (kind: patch_mcgsm|patch_ride|mogsm) and 'train'")
    q.add_argument("--data", required=True, help="patch-set HDF5 (`ride prepare`): dataset 'patches' N x 63, 'dc'")
    q.add_argument("--valid", help="held-out patch set for early stopping (default: valid_fraction of --data)")
    q.add_argument("--out-dir", required=True)
    q.add_argument("--seed", type=int, default=None, help="overrides train.seed (held-out split, initialisation, draws)")
    q.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt if present (patch_ride)")
    q.add_argument("--restart", action="store_true", help="discard OUT_DIR/checkpoint.pt and train afresh")
    q.add_argument("--device", default="auto")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_train)
    q = patch_sub.add_parser("evaluate", help="63-dim log-likelihood [nat] and 64-dim rate [bit/px] on a patch set")
    q.add_argument("--model", required=True)
    q.add_argument("--data", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--ensemble", action="store_true", help="the 8-symmetry ensemble (EoMCGSM, EoPatchRIDE)")
    q.add_argument("--dc-model", help="a mogsm model.pt: our l_DC on the test set's patch means")
    q.add_argument("--batch-size", type=positive_int, default=1024)
    q.add_argument("--device", default="auto")
    q.set_defaults(func=cmd_evaluate)
