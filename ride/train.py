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
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from .checkpoint import (  # CheckpointMismatch is re-exported: callers catch it from here
    CheckpointMismatch, check_resume_flags, check_same_run, discard_checkpoint, load_verified, save_verified,
)
from .cuda_graph import GraphedLoss, graphs_enabled
from .data import atomic_write, load_images
from .errors import CorruptFileError, TrainingError
from .model import RIDE
from .provenance import provenance, resolve_device
from .refine import _mean_nll, fit_mcgsm_lbfgs
from .train_config import TrainConfig, validate_config



class _Diverged(Exception):
    """A non-finite or diverged loss; :meth:`Trainer.run` restores the last checkpoint with a lower rate."""


def gaussian_nll(white_targets: torch.Tensor) -> float:
    """Mean NLL (nats per pixel, whitened units) of the linear Gaussian model the whitening defines.

    Conditional whitening makes each target standard normal given its neighbourhood under a
    Gaussian model, so this is what a model with an uninformative MCGSM scores (the original
    initialisation lands within ~0.1 nat of it); a trained model far above it has diverged.
    """
    return float(0.5 * (math.log(2 * math.pi) + white_targets.double().square().mean()))


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


def stage_generator(seed: int, stage: int, epoch: int = 0) -> torch.Generator:
    # Epoch 0 keeps the one-epoch protocol's draws; later epochs get keys far from the others.
    return torch.Generator().manual_seed(seed * 1_000_003 + stage + 100_000 * epoch)


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
        data_name: str = "the training images",
        on_stage: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.model_config = dict(model_config)
        self.config = train_config
        self.out_dir = Path(out_dir)
        self.device = resolve_device(device)
        self.progress = progress
        self.callback = callback  # after every SGD step, with the state
        # At a stage's "start" (also after a restore), "sgd_end" and "refined" (after L-BFGS): ride.curves
        self.on_stage = on_stage
        images = images[: train_config.max_images] if train_config.max_images else images
        num_valid = max(1, int(round(len(images) * train_config.valid_fraction)))
        if len(images) - num_valid < 1:
            raise TrainingError(
                f"{data_name}: need at least 2 images to hold some out for validation, got {len(images)}"
            )
        if bool((images == images[:, :1, :1]).all()):
            # Caught here: the whitening would divide by a zero variance and stop "on NaN".
            raise TrainingError(
                f"{data_name}: every image is constant (zero variance), so there is no density to fit; "
                f"check how the data were made (grey levels need dequantisation noise)"
            )
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
        size = min(images.shape[1:])
        for k, spec in enumerate(train_config.stages if self.target_layers else []):
            patch = self._stage_patch(int(spec["patch"]))
            if patch > size:
                raise TrainingError(
                    f"{data_name}: images of {images.shape[1]}x{images.shape[2]} pixels are smaller than stage "
                    f"{k + 1}'s {patch}x{patch} patches (requested {spec['patch']}, at least nb_size + 3); use "
                    f"larger images or smaller patches"
                )
        if (train_config.lbfgs_patch or 0) > size:
            raise TrainingError(
                f"{data_name}: images of {images.shape[1]}x{images.shape[2]} pixels are smaller than lbfgs_patch "
                f"{train_config.lbfgs_patch}; use larger images or a smaller lbfgs_patch"
            )
        self.state: dict[str, Any] = {"stage": 0, "batch": 0, "whitened": False, "finished": False, "lr_scale": {}}
        self.history: list[dict[str, Any]] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.elapsed = 0.0
        self._stage_start: dict[str, Any] | None = None  # see _snapshot
        self._stage_best: dict[str, torch.Tensor] | None = None  # see _end_epoch

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
            "stage_start": self._stage_start,
            "stage_best": self._stage_best,
        }
        save_verified(self.checkpoint_path, payload, "checkpoint")

    def load_checkpoint(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        payload = load_verified(self.checkpoint_path, "checkpoint", self.device)
        check_same_run(self.checkpoint_path, payload, {
            "train_config": ("train config", asdict(self.config)),
            "requested_model_config": ("model", self.requested_model_config),
            "data_digest": ("data: the training images", self.data_digest),
        })
        self.model = RIDE(**payload["model_config"]).to(self.device)
        self.model.load_state_dict(payload["model_state"])
        self.state = payload["state"]
        self.history = payload["history"]
        self.elapsed = payload["elapsed"]
        self._stage_start = payload.get("stage_start")
        self._stage_best = payload.get("stage_best")
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
        """Halve the failing stage's learning rate and go back: to the last checkpoint after a
        non-finite batch, to the stage's start after a diverged validation (``batch`` None)."""
        stage, batch, event, detail = err.args
        retries = self.state.get("nan_retries", 0) + 1
        lr = self._stage_lr(stage)
        where = f"batch {batch + 1}" if batch is not None else "its end"
        if retries > self.config.nan_retries:
            # A checkpoint is only resumed by the config that wrote it, so the advice is --restart.
            raise TrainingError(
                f"{detail} at stage {stage + 1}, {where} (lr {lr:g}) after {self.config.nan_retries} restarts "
                f"with halved learning rates; no model was written. Lower stages[{stage}].lr (or set "
                f"clip_grad_norm) in the config and re-run `ride train` with --restart to train afresh"
            )
        scales = dict(self.state["lr_scale"])
        if batch is None:
            self._restore(self._stage_start)
        else:
            self.load_checkpoint()
        scales[str(stage)] = scales.get(str(stage), 1.0) * 0.5
        self.state["lr_scale"], self.state["nan_retries"] = scales, retries
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self._stage_lr(self.state["stage"])
        event = {"event": event, "detail": detail, "stage": stage + 1, "batch": None if batch is None else batch + 1,
                 "lr": lr,
                 "restored": {"stage": self.state["stage"] + 1, "batch": self.state["batch"]},
                 "new_lr": self._stage_lr(stage)}
        self.history.append(event)
        print(f"ride train: {event}; restored the {'stage start' if batch is None else 'last checkpoint'}",
              file=sys.stderr)

    def _snapshot(self) -> dict[str, Any]:
        """What a stage starts from; a stage whose validation diverged is redone from it."""
        return {"model_config": self.model.config,
                "model_state": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "state": copy.deepcopy(self.state), "history": copy.deepcopy(self.history)}

    def _restore(self, snapshot: dict[str, Any]) -> None:
        self.model = RIDE(**snapshot["model_config"]).to(self.device)
        self.model.load_state_dict(snapshot["model_state"])
        self.state, self.history = copy.deepcopy(snapshot["state"]), copy.deepcopy(snapshot["history"])
        self.optimizer, self._stage_best = None, None

    # protocol --------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> RIDE:
        if resume:
            try:
                if self.load_checkpoint():
                    print(f"ride train: resuming from {self.checkpoint_path} (stage {self.state['stage'] + 1}, "
                          f"batch {self.state['batch']})", file=sys.stderr)
            except CorruptFileError as err:
                # A damaged checkpoint cannot be resumed; dropping it lets the same command (and a
                # Snakemake re-run) succeed instead of failing on it forever.
                discard_checkpoint(self.checkpoint_path, "ride train", err, warning=True)
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
            self._refine_mcgsm(stage=-1, patch=cfg.lbfgs_patch or min(64, *self.train_images.shape[1:]))
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
            self._stage_start = self._snapshot()
            if cfg.grow_layers and stage > 0 and self.model.slstm.num_layers < self.target_layers:
                torch.manual_seed(cfg.seed * 1_000_003 + 20_000 + stage)  # same new layer after a resume
                self.model.add_layer()
            self.optimizer = self._make_optimizer(lr)
        if self.state["batch"] == 0:
            self.state.pop("early_stop", None)
            self._stage_best = None
        epochs = int(spec.get("epochs", cfg.epochs))
        patches, drawn = self.epoch_patches(stage, patch, 0), 0
        per_epoch = max(1, patches.shape[0] // cfg.batch_size)
        num_batches = epochs * per_epoch
        gh, gw = self.model.neighborhood.grid_shape(patches.shape[1], patches.shape[2])
        stage_info = {"stage": stage, "num_batches": num_batches, "patch": patch, "pixels_per_patch": gh * gw}
        self._notify("start", stage_info)
        bar = tqdm(
            total=num_batches, initial=self.state["batch"], desc=f"stage {stage + 1}/{len(cfg.stages)} patch {patch}",
            disable=not self.progress, dynamic_ncols=True, mininterval=2.0,
        )
        losses: list[float] = []
        tick = time.perf_counter()
        self.model.train()
        # Forward + backward replayed from a CUDA graph (ride/cuda_graph.py), where enabled; a capture
        # that fails leaves the stage eager and says so.
        graphed: GraphedLoss | None = None
        use_graph, graph_info = graphs_enabled(self.device), {}
        while self.state["batch"] < num_batches:
            b = self.state["batch"]
            epoch, k = divmod(b, per_epoch)
            if epoch != drawn:  # a new epoch (or a resume inside one): its own offsets, flips and order
                patches, drawn = self.epoch_patches(stage, patch, epoch), epoch
            batch = patches[k * cfg.batch_size : (k + 1) * cfg.batch_size].to(self.device)
            self.optimizer.zero_grad()
            if use_graph and (graphed is None or graphed.model is not self.model or graphed.input.shape != batch.shape):
                graphed, graph_info = self._capture(batch)
                use_graph = graphed is not None
            if graphed is not None:
                loss = graphed(batch)  # the gradients are formed already; the step below applies them
            else:
                loss = self.model.loss(batch)
            if not torch.isfinite(loss):
                bar.close()
                raise _Diverged(stage, b, "non-finite loss", f"non-finite loss ({loss.item()})")
            if graphed is None:
                loss.backward()
            if cfg.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
            self.optimizer.step()
            losses.append(loss.item())
            self.state["batch"] = b + 1
            if cfg.early_stopping and self.state["batch"] % per_epoch == 0 and self._end_epoch(stage, patch, epoch):
                bar.update(num_batches - self.state["batch"])
                self.state["batch"] = num_batches  # patience ran out: the stage ends here
            now = time.perf_counter()
            bar.set_postfix(loss=f"{losses[-1]:.4f}", px_s=f"{batch.shape[0] * gh * gw / max(now - tick, 1e-9):.3g}")
            tick = now
            bar.update(1)
            if self.state["batch"] % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if self.callback is not None:
                self.callback(dict(self.state))
        bar.close()
        graphed = None  # its memory pool goes before the L-BFGS refinement
        epochs_info: dict[str, Any] = {}
        if epochs > 1 or cfg.early_stopping:
            epochs_info = {"epochs": epochs, "batches_per_epoch": per_epoch}
        early = self.state.pop("early_stop", None)
        if early is not None and self._stage_best is not None:
            self.model.load_state_dict(self._stage_best)  # the best held-out state of the stage
            epochs_info.update(valid_nll_epochs=early["valid_nll"], best_epoch=early["best_epoch"],
                               epochs_run=len(early["valid_nll"]))
        self._stage_best = None
        self._notify("sgd_end", stage_info)
        refine = self._refine_mcgsm(stage, patch)
        self._notify("refined", stage_info)
        self.history.append({"stage": stage + 1, "patch": patch, "requested_patch": int(spec["patch"]), "lr": lr,
                             "batches": num_batches, **epochs_info,
                             **graph_info,
                             "train_nll_first": losses[0] if losses else None,
                             "train_nll_last": losses[-1] if losses else None, **refine})
        self.state["stage"], self.state["batch"] = stage + 1, 0
        self.optimizer = None
        self.save_checkpoint()

    def _capture(self, batch: torch.Tensor) -> tuple[GraphedLoss | None, dict[str, Any]]:
        """The training step captured for ``batch``'s shape and the stage's history entry for it;
        None where the capture fails (the stage then runs eager)."""
        try:
            return GraphedLoss(self.model, batch), {"cuda_graph": True}
        except RuntimeError as exc:
            self.optimizer.zero_grad()  # a capture cut short may have left gradients behind
            print(f"ride train: CUDA graph capture failed ({exc}); this stage runs without it", file=sys.stderr)
            return None, {"cuda_graph": f"capture failed, ran eager: {exc}"[:500]}

    def _notify(self, event: str, info: dict[str, Any]) -> None:
        if self.on_stage is not None:
            self.on_stage(event, {**info, "batch": self.state["batch"]})

    def epoch_patches(self, stage: int, patch: int, epoch: int) -> torch.Tensor:
        """The training patches of one epoch of a stage: grid offset, flips and order drawn per epoch."""
        cfg = self.config
        gen = stage_generator(cfg.seed, stage, epoch)
        patches = extract_patches(self.train_images, patch, gen)  # fits: checked in __init__
        if cfg.flip:
            flip = torch.rand(patches.shape[0], generator=gen) < 0.5
            patches = torch.where(flip[:, None, None], patches.flip(-1), patches)
        patches = patches[torch.randperm(patches.shape[0], generator=gen)]
        cap = cfg.stages[stage].get("max_patches", cfg.max_patches)  # a stage's own cap (ride.curves budgets)
        return patches[:cap] if cap else patches

    @torch.no_grad()
    def valid_nll(self, stage: int, patch: int, batch: int = 256) -> float:
        """Mean NLL (nats per scored pixel) of the held-out images in the stage's patches (fixed grid)."""
        size = min(patch, *self.valid_images.shape[1:])
        patches = extract_patches(self.valid_images, size, stage_generator(self.config.seed, 30_000 + stage))
        total, count = 0.0, 0
        for start in range(0, patches.shape[0], batch):
            log_p = self.model.log_prob(patches[start : start + batch].to(self.device))
            total, count = total - float(log_p.double().sum()), count + log_p.numel()
        return total / count

    def _end_epoch(self, stage: int, patch: int, epoch: int) -> bool:
        """Score the held-out images, keep the best state; True when ``early_stopping`` epochs brought no gain."""
        early = self.state.setdefault("early_stop", {"valid_nll": [], "best": None, "best_epoch": None, "bad": 0})
        nll = self.valid_nll(stage, patch)
        early["valid_nll"].append(nll)
        if math.isfinite(nll) and (early["best"] is None or nll < early["best"]):
            early.update(best=nll, best_epoch=epoch + 1, bad=0)
            self._stage_best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            early["bad"] += 1
        return early["bad"] >= self.config.early_stopping

    def _refine_mcgsm(self, stage: int, patch: int) -> dict[str, Any]:
        cfg = self.config
        gen = stage_generator(cfg.seed, 10_000 + stage)
        size = min(patch, *self.train_images.shape[1:])
        train = mcgsm_data(self.model, extract_patches(self.train_images, size, gen), cfg.lbfgs_samples, gen)
        vsize = min(patch, *self.valid_images.shape[1:])
        valid = mcgsm_data(self.model, extract_patches(self.valid_images, vsize, gen), max(cfg.lbfgs_samples // 5, 1), gen)
        info = fit_mcgsm_lbfgs(self.model.mcgsm, *train, *valid, cfg.lbfgs_iterations, cfg.lbfgs_check_every, cfg.lbfgs_patience)
        if "valid_nll" not in info:  # no L-BFGS iterations: still judge the model on held-out pixels
            with torch.no_grad():
                info["valid_nll"] = float(_mean_nll(self.model.mcgsm, *valid))
        if not math.isfinite(info["valid_nll"]):
            raise TrainingError(f"L-BFGS refinement diverged at stage {stage + 1}; no model was written")
        info["valid_nll_gaussian"] = gaussian_nll(valid[1])
        excess = info["valid_nll"] - info["valid_nll_gaussian"]
        if cfg.divergence_margin is not None and excess > cfg.divergence_margin:
            detail = (f"diverged: validation NLL {info['valid_nll']:.3f} nats/px (whitened), {excess:.3f} above the "
                      f"whitened Gaussian's {info['valid_nll_gaussian']:.3f} (divergence_margin {cfg.divergence_margin:g})")
            if stage < 0:  # an MCGSM baseline has no SGD stage to retry
                raise TrainingError(f"{detail}; no model was written. Check the data and the lbfgs_* options")
            raise _Diverged(stage, None, "diverged", detail)
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
        save_verified(self.out_dir / "model.pt", payload, "model")
        atomic_write(self.out_dir / "train.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> RIDE:
    """Rebuild a model written by :class:`Trainer` (``model.pt``, its sha256 verified)."""
    payload = load_verified(path, "model", device)
    model = RIDE(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.train_summary = payload.get("summary", {})  # history and provenance of its training
    return model.to(device).eval()


def train(
    config: dict[str, Any], data: str | Path, out_dir: str | Path, resume: bool = False, device: str = "auto",
    seed: int | None = None, progress: bool = True, restart: bool = False, source: str = "config",
) -> RIDE:
    """Train the model described by ``{"model": {...}, "train": {...}}`` on an HDF5 dataset.

    Everything that can be checked is checked before any file is written: the config against
    its schema (``source`` names it in errors), the device, the data, and an unfinished run in
    ``out_dir``, which is continued with ``resume`` and discarded only with ``restart``.
    """
    validate_config(config, source)
    train_cfg = TrainConfig.from_dict(config["train"], source)
    if seed is not None:
        train_cfg.seed = seed
    checkpoint = Path(out_dir) / "checkpoint.pt"
    check_resume_flags(checkpoint, resume, restart)
    resolve_device(device)
    images = torch.from_numpy(load_images(data))
    trainer = Trainer(config["model"], train_cfg, images, out_dir, device, progress, data_name=str(data))
    if restart:
        checkpoint.unlink(missing_ok=True)
    try:
        model = trainer.run(resume=resume)
    except CheckpointMismatch as err:
        # A re-run after the config, model or data changed (Snakemake re-runs the job): the old
        # checkpoint cannot be continued, so the run starts afresh; nothing was loaded from it.
        discard_checkpoint(checkpoint, "ride train", err)
        model = trainer.run()
    # Done: a deliberate re-run (--forcerun, changed code) must train afresh, not reload this.
    checkpoint.unlink(missing_ok=True)
    return model
