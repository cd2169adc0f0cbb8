"""Training protocol of the paper (section 3; REFERENCE.md).

RIDE: SGD with heavy-ball momentum 0.9, batch 50, one epoch of non-overlapping patches per
stage, patch sizes growing 8..22 with learning rates 1..5e-4, horizontal-flip augmentation,
and after each stage an L-BFGS refinement of the MCGSM alone (features fixed) with early
stopping on held-out pixels. Layers may be added between stages. MCGSM baselines
(``num_layers=0``) are trained by L-BFGS only.

Every random choice of a stage is drawn from a generator seeded by ``(seed, stage)``, so a
run resumed from a checkpoint retraces the uninterrupted run exactly.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from .data import atomic_write, load_images
from .mcgsm import MCGSM
from .model import RIDE
from .provenance import provenance, resolve_device

PAPER_STAGES = [
    {"patch": p, "lr": lr}
    for p, lr in zip([8, 10, 12, 14, 16, 18, 20, 22], [1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 0.0005])
]


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss, bad configuration)."""


class _Diverged(Exception):
    """A non-finite loss; :meth:`Trainer.run` restores the last checkpoint with a lower rate."""


@dataclass
class TrainConfig:
    stages: list[dict[str, float]] = field(default_factory=lambda: copy.deepcopy(PAPER_STAGES))
    batch_size: int = 50
    momentum: float = 0.9
    max_patches: int | None = None
    max_images: int | None = None
    valid_fraction: float = 0.1
    flip: bool = True
    grow_layers: bool = False
    whitening_samples: int = 500_000
    lbfgs_iterations: int = 500
    lbfgs_samples: int = 1_000_000
    lbfgs_patch: int | None = None
    lbfgs_check_every: int = 25
    lbfgs_patience: int = 2
    checkpoint_every: int = 100
    nan_retries: int = 3
    # None = the paper's plain momentum SGD; a number rescales each batch's gradient to at most
    # this global L2 norm before the step (documented deviation, see config.yaml).
    clip_grad_norm: float | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "TrainConfig":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known options: {sorted(known)}")
        config = cls(**values)
        for stage in config.stages:
            if set(stage) != {"patch", "lr"} or int(stage["patch"]) < 1 or float(stage["lr"]) <= 0:
                raise ValueError(f"each stage needs a positive 'patch' and 'lr', got {stage}")
        if not 0 < config.valid_fraction < 1:
            raise ValueError(f"valid_fraction must lie in (0, 1), got {config.valid_fraction}")
        if config.clip_grad_norm is not None and not config.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive or null, got {config.clip_grad_norm}")
        return config


def extract_patches(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Non-overlapping ``size x size`` patches of ``N x H x W`` images (random grid offset)."""
    _, height, width = images.shape
    if height < size or width < size:
        raise ValueError(f"patch size {size} exceeds image size {height}x{width}")
    dy = int(torch.randint(height % size + 1, (1,), generator=generator)) if generator is not None else 0
    dx = int(torch.randint(width % size + 1, (1,), generator=generator)) if generator is not None else 0
    rows, cols = (height - dy) // size, (width - dx) // size
    crop = images[:, dy : dy + rows * size, dx : dx + cols * size]
    return crop.reshape(-1, rows, size, cols, size).transpose(2, 3).reshape(-1, size, size)


def stage_generator(seed: int, stage: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stage)


@torch.no_grad()
def mcgsm_data(model: RIDE, patches: torch.Tensor, max_samples: int, generator: torch.Generator, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed features and whitened targets of (a random subset of) the patches' scored pixels."""
    device = next(model.parameters()).device
    gh, gw = model.neighborhood.grid_shape(patches.shape[1], patches.shape[2])
    per_patch = gh * gw
    num = min(patches.shape[0], max(1, math.ceil(max_samples / per_patch)))
    patches = patches[torch.randperm(patches.shape[0], generator=generator)[:num]]
    feats, outs = [], []
    for start in range(0, num, batch):
        h, y = model.features(patches[start : start + batch].to(device))
        feats.append(h.reshape(-1, h.shape[-1]))
        outs.append(y.reshape(-1))
    feats, outs = torch.cat(feats), torch.cat(outs)
    if feats.shape[0] > max_samples:
        idx = torch.randperm(feats.shape[0], generator=generator)[:max_samples].to(device)
        feats, outs = feats[idx], outs[idx]
    return feats, outs


def _mean_nll(mcgsm: MCGSM, inputs: torch.Tensor, outputs: torch.Tensor, chunk: int = 4096, grad: bool = False) -> torch.Tensor:
    # Small chunks keep the temporaries in the allocator's cache: 64k-row chunks spent most of
    # their time in page faults (system time) on the CPU.
    total = inputs.new_zeros((), dtype=torch.float64)
    for start in range(0, inputs.shape[0], chunk):
        part = -mcgsm.log_prob(inputs[start : start + chunk], outputs[start : start + chunk]).sum()
        if grad:
            (part / inputs.shape[0]).backward()
        total = total + part.detach()
    return total / inputs.shape[0]


def fit_mcgsm_lbfgs(
    mcgsm: MCGSM,
    inputs: torch.Tensor,
    outputs: torch.Tensor,
    valid_inputs: torch.Tensor | None,
    valid_outputs: torch.Tensor | None,
    max_iterations: int,
    check_every: int = 25,
    patience: int = 2,
) -> dict[str, Any]:
    """Refine the MCGSM by L-BFGS in float64, keeping the parameters best on held-out pixels."""
    if max_iterations <= 0:
        return {"iterations": 0}
    dtype = mcgsm.predictors.dtype
    work = copy.deepcopy(mcgsm).double()
    x, y = inputs.double(), outputs.double()
    vx = valid_inputs.double() if valid_inputs is not None else None
    vy = valid_outputs.double() if valid_outputs is not None else None
    optimizer = torch.optim.LBFGS(
        work.parameters(), lr=1, max_iter=check_every, history_size=10, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        return _mean_nll(work, x, y, grad=True)

    def valid_loss() -> float:
        with torch.no_grad():
            return float(_mean_nll(work, vx, vy)) if vx is not None else float(_mean_nll(work, x, y))

    best = valid_loss()
    best_state = copy.deepcopy(work.state_dict())
    start_loss, bad, done = best, 0, 0
    while done < max_iterations:
        optimizer.param_groups[0]["max_iter"] = min(check_every, max_iterations - done)
        optimizer.step(closure)
        done += optimizer.param_groups[0]["max_iter"]
        current = valid_loss()
        if not math.isfinite(current):
            break
        if current < best - 1e-7:
            best, bad = current, 0
            best_state = copy.deepcopy(work.state_dict())
        else:
            bad += 1
            if bad >= patience:
                break
    work.load_state_dict(best_state)
    with torch.no_grad():
        for target, source in zip(mcgsm.parameters(), work.parameters()):
            target.copy_(source.to(dtype))
    return {"iterations": done, "valid_nll_start": start_loss, "valid_nll": best}


class Trainer:
    """Runs the protocol into ``out_dir`` (``model.pt``, ``checkpoint.pt``, ``train.json``)."""

    def __init__(
        self,
        model_config: dict[str, Any],
        train_config: TrainConfig,
        images: torch.Tensor,
        out_dir: str | Path,
        device: str = "auto",
        progress: bool = True,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.model_config = dict(model_config)
        self.config = train_config
        self.out_dir = Path(out_dir)
        self.device = resolve_device(device)
        self.progress = progress
        self.callback = callback
        images = images[: train_config.max_images] if train_config.max_images else images
        num_valid = max(1, int(round(len(images) * train_config.valid_fraction)))
        if len(images) - num_valid < 1:
            raise TrainingError(f"need at least 2 images to hold some out for validation, got {len(images)}")
        self.train_images = images[: len(images) - num_valid]
        self.valid_images = images[len(images) - num_valid :]
        self.requested_model_config = dict(self.model_config)
        # Fingerprint of the training data, so a checkpoint is never resumed on other data.
        self.data_digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
        self.target_layers = int(self.model_config.get("num_layers", 1))
        if train_config.grow_layers and self.target_layers > 1:
            self.model_config["num_layers"] = 1
        torch.manual_seed(train_config.seed)
        self.model = RIDE(**self.model_config).to(self.device)
        self.state: dict[str, Any] = {"stage": 0, "batch": 0, "whitened": False, "finished": False, "lr_scale": {}}
        self.history: list[dict[str, Any]] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.elapsed = 0.0

    # checkpoints -----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        payload = {
            "model_config": self.model.config,
            "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict() if self.optimizer is not None else None,
            "train_config": asdict(self.config),
            "requested_model_config": self.requested_model_config,
            "data_digest": self.data_digest,
            "state": dict(self.state),
            "history": self.history,
            "elapsed": self.elapsed,
        }
        atomic_write(self.checkpoint_path, lambda tmp: torch.save(payload, tmp))

    def load_checkpoint(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        payload = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        for key, mine in [("train_config", asdict(self.config)), ("requested_model_config", self.requested_model_config),
                          ("data_digest", self.data_digest)]:
            if payload.get(key) != mine:
                raise TrainingError(
                    f"{self.checkpoint_path} was written with another {key.replace('_', ' ')}; delete it "
                    f"to start afresh, or resume with the same configuration and data"
                )
        self.model = RIDE(**payload["model_config"]).to(self.device)
        self.model.load_state_dict(payload["model_state"])
        self.state = payload["state"]
        self.history = payload["history"]
        self.elapsed = payload["elapsed"]
        if payload["optimizer_state"] is not None:
            self.optimizer = self._make_optimizer(self._stage_lr(self.state["stage"]))
            self.optimizer.load_state_dict(payload["optimizer_state"])
        return True

    def _make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=lr, momentum=self.config.momentum)

    def _stage_patch(self, patch: int) -> int:
        # The paper's stages start at 8x8 patches, made for its 5-wide neighbourhood (6x4 scored
        # pixels). Wider neighbourhoods (figure 2: widths 7, 9) get the same margin: a patch at
        # least nb_size + 3 wide, so every stage scores a grid at least 4 pixels wide.
        return max(patch, self.model.neighborhood.n + 3)

    def _stage_lr(self, stage: int) -> float:
        return float(self.config.stages[stage]["lr"]) * self.state["lr_scale"].get(str(stage), 1.0)

    def _recover(self, err: _Diverged) -> None:
        """Restore the last checkpoint and halve the failing stage's learning rate."""
        stage, batch, value = err.args
        retries = self.state.get("nan_retries", 0) + 1
        lr = self._stage_lr(stage)
        if retries > self.config.nan_retries:
            raise TrainingError(
                f"non-finite loss ({value}) at stage {stage + 1}, batch {batch + 1} (lr {lr:g}) after "
                f"{self.config.nan_retries} restarts with halved learning rates; no model was written. "
                f"Lower this stage's learning rate in the config and re-run with --resume to continue "
                f"from {self.checkpoint_path}"
            )
        scales = dict(self.state["lr_scale"])
        self.load_checkpoint()
        scales[str(stage)] = scales.get(str(stage), 1.0) * 0.5
        self.state["lr_scale"], self.state["nan_retries"] = scales, retries
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self._stage_lr(self.state["stage"])
        event = {"event": "non-finite loss", "stage": stage + 1, "batch": batch + 1, "lr": lr,
                 "restored": {"stage": self.state["stage"] + 1, "batch": self.state["batch"]},
                 "new_lr": self._stage_lr(stage)}
        self.history.append(event)
        print(f"ride train: {event}; restored the last checkpoint", file=sys.stderr)

    # protocol --------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> RIDE:
        if resume:
            self.load_checkpoint()
        t0 = time.perf_counter() - self.elapsed
        if self.state["finished"]:
            if not (self.out_dir / "model.pt").exists() or not (self.out_dir / "train.json").exists():
                self._write_outputs()
            return self.model
        cfg = self.config
        if not self.state["whitened"]:
            self.model.fit_whitening(self.train_images.to(self.device), cfg.whitening_samples, stage_generator(cfg.seed, -1))
            self.state["whitened"] = True
            self.save_checkpoint()  # a state to return to should the first stage diverge
        if self.model.slstm.num_layers == 0:
            self._refine_mcgsm(stage=-1, patch=cfg.lbfgs_patch or 64)
        while self.model.slstm.num_layers and self.state["stage"] < len(cfg.stages):
            try:
                self._run_stage(self.state["stage"])
            except _Diverged as err:
                self._recover(err)
            self.elapsed = time.perf_counter() - t0
        self.state["finished"] = True
        self.elapsed = time.perf_counter() - t0
        self.save_checkpoint()
        self._write_outputs()
        return self.model

    def _run_stage(self, stage: int) -> None:
        cfg = self.config
        spec = cfg.stages[stage]
        patch, lr = self._stage_patch(int(spec["patch"])), self._stage_lr(stage)
        if self.state["batch"] == 0:
            if cfg.grow_layers and stage > 0 and self.model.slstm.num_layers < self.target_layers:
                torch.manual_seed(cfg.seed * 1_000_003 + 20_000 + stage)  # same new layer after a resume
                self.model.add_layer()
            self.optimizer = self._make_optimizer(lr)
        gen = stage_generator(cfg.seed, stage)
        patches = extract_patches(self.train_images, min(patch, *self.train_images.shape[1:]), gen)
        if cfg.flip:
            flip = torch.rand(patches.shape[0], generator=gen) < 0.5
            patches = torch.where(flip[:, None, None], patches.flip(-1), patches)
        patches = patches[torch.randperm(patches.shape[0], generator=gen)]
        if cfg.max_patches:
            patches = patches[: cfg.max_patches]
        num_batches = max(1, patches.shape[0] // cfg.batch_size)
        gh, gw = self.model.neighborhood.grid_shape(patches.shape[1], patches.shape[2])
        bar = tqdm(
            total=num_batches, initial=self.state["batch"], desc=f"stage {stage + 1}/{len(cfg.stages)} patch {patch}",
            disable=not self.progress, dynamic_ncols=True, mininterval=2.0,
        )
        losses: list[float] = []
        tick = time.perf_counter()
        self.model.train()
        while self.state["batch"] < num_batches:
            b = self.state["batch"]
            batch = patches[b * cfg.batch_size : (b + 1) * cfg.batch_size].to(self.device)
            self.optimizer.zero_grad()
            loss = self.model.loss(batch)
            if not torch.isfinite(loss):
                bar.close()
                raise _Diverged(stage, b, loss.item())
            loss.backward()
            if cfg.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
            self.optimizer.step()
            losses.append(loss.item())
            self.state["batch"] = b + 1
            now = time.perf_counter()
            bar.set_postfix(loss=f"{losses[-1]:.4f}", px_s=f"{batch.shape[0] * gh * gw / max(now - tick, 1e-9):.3g}")
            tick = now
            bar.update(1)
            if self.state["batch"] % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if self.callback is not None:
                self.callback(dict(self.state))
        bar.close()
        refine = self._refine_mcgsm(stage, patch)
        self.history.append({"stage": stage + 1, "patch": patch, "requested_patch": int(spec["patch"]), "lr": lr,
                             "batches": num_batches,
                             "train_nll_first": losses[0] if losses else None,
                             "train_nll_last": losses[-1] if losses else None, **refine})
        self.state["stage"], self.state["batch"] = stage + 1, 0
        self.optimizer = None
        self.save_checkpoint()

    def _refine_mcgsm(self, stage: int, patch: int) -> dict[str, Any]:
        cfg = self.config
        gen = stage_generator(cfg.seed, 10_000 + stage)
        size = min(patch, *self.train_images.shape[1:])
        train = mcgsm_data(self.model, extract_patches(self.train_images, size, gen), cfg.lbfgs_samples, gen)
        vsize = min(patch, *self.valid_images.shape[1:])
        valid = mcgsm_data(self.model, extract_patches(self.valid_images, vsize, gen), max(cfg.lbfgs_samples // 5, 1), gen)
        info = fit_mcgsm_lbfgs(self.model.mcgsm, *train, *valid, cfg.lbfgs_iterations, cfg.lbfgs_check_every, cfg.lbfgs_patience)
        if not math.isfinite(info.get("valid_nll", 0.0)):
            raise TrainingError(f"L-BFGS refinement diverged at stage {stage + 1}; no model was written")
        if stage < 0:
            self.history.append({"stage": 0, "lbfgs": True, **info})
        return info

    def _write_outputs(self) -> None:
        log_jac = float(self.model.whitening.log_jacobian)
        final_valid = next((h["valid_nll"] for h in reversed(self.history) if "valid_nll" in h), None)
        summary = {
            "model_config": self.model.config,
            "train_config": asdict(self.config),
            "history": self.history,
            "valid_bits_per_pixel": None if final_valid is None else (log_jac - final_valid) / math.log(2),
            "provenance": provenance(self.device, self.config.seed, self.elapsed),
        }
        payload = {"config": self.model.config, "state_dict": self.model.state_dict(), "summary": summary}
        atomic_write(self.out_dir / "model.pt", lambda tmp: torch.save(payload, tmp))
        atomic_write(self.out_dir / "train.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> RIDE:
    """Rebuild a model written by :class:`Trainer` (``model.pt``)."""
    payload = torch.load(path, map_location=device, weights_only=False)
    model = RIDE(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.train_summary = payload.get("summary", {})  # history and provenance of its training
    return model.to(device).eval()


def train(
    config: dict[str, Any], data: str | Path, out_dir: str | Path, resume: bool = False, device: str = "auto",
    seed: int | None = None, progress: bool = True,
) -> RIDE:
    """Train the model described by ``{"model": {...}, "train": {...}}`` on an HDF5 dataset."""
    unknown = sorted(set(config) - {"model", "train"})
    if unknown:
        raise ValueError(f"unknown top-level config key(s) {unknown}; expected 'model' and 'train'")
    train_cfg = TrainConfig.from_dict(config.get("train"))
    if seed is not None:
        train_cfg.seed = seed
    images = torch.from_numpy(load_images(data))
    trainer = Trainer(config.get("model", {}), train_cfg, images, out_dir, device, progress)
    return trainer.run(resume=resume)
