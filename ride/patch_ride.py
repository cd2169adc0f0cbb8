"""PatchRIDE: RIDE on DC-removed ``size x size`` patches (the paper's 63-dim column, section 3.2).

The 63 coordinates are rebuilt into the zero-sum 8x8 patch (the bottom-right pixel is minus
the sum of the others, ride/patch_rates.py) and placed into a zero frame: ``rows - 1`` (2 for
nb_size 5) rows on top and the neighbourhood's side margins (2 and 2) left and right, so that
RIDE's scored grid is exactly the patch, every patch pixel gets a state and a full causal
neighbourhood, and no padded pixel is ever scored. Of the 64 grid conditionals the first 63
(row-major) are scored and the bottom-right one, a function of the others, is not:
``log p(x) = sum_{k<63} log p(x_k | x_<k)``. Each is RIDE's normalised conditional given the
patch pixels before it (the padding is constant), so this is an exact log-density on R^63.
"""
from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checkpoint import CheckpointMismatch, check_same_run, discard_checkpoint, load_verified, save_verified
from .errors import CorruptFileError, TrainingError
from .model import RIDE
from .patch_rates import check_patches63, drop_pixel, patch_dim, rebuild_patch
from .refine import fit_mcgsm_lbfgs
from .train import stage_generator


class PatchRIDE(nn.Module):
    """RIDE scoring the 63 (``size^2 - 1``) DC-removed coordinates of zero-padded patches."""

    def __init__(self, size: int = 8, **ride_config: Any) -> None:
        super().__init__()
        patch_dim(size)
        self.size = size
        self.ride = RIDE(**ride_config)
        nb = self.ride.neighborhood
        # (top, left, right) zeros so that the scored grid of the frame is the patch itself.
        self.padding = (nb.rows - 1, nb.target[1], nb.cols - 1 - nb.target[1])

    @property
    def config(self) -> dict[str, Any]:
        return {"size": self.size, **self.ride.config}

    @property
    def dim(self) -> int:
        return self.size * self.size - 1

    def frame(self, x: torch.Tensor) -> torch.Tensor:
        """The padded frame ``N x (size + top) x (size + left + right)`` RIDE reads."""
        top, left, right = self.padding
        patches = rebuild_patch(x.to(self.ride.mcgsm.predictors), self.size)
        return F.pad(patches, (left, right, top, 0))

    def scored_positions(self) -> list[tuple[int, int]]:
        """Frame coordinates (row, column) of the scored pixels, in the order of the coordinates."""
        top, left, _ = self.padding
        return [(top + k // self.size, left + k % self.size) for k in range(self.dim)]

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        """``N x 63``: ``log p(x_k | x_<k)`` in nats (whitening log-Jacobian included)."""
        return drop_pixel(self.ride.log_prob(self.frame(x)))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` in nats per patch, shape ``N``."""
        return self.conditionals(x).sum(-1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per scored pixel (nats)."""
        return -self.conditionals(x).mean()

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``M x D`` and whitened targets ``M`` of the scored pixels (M = 63 N)."""
        hidden, target = self.ride.features(self.frame(x))
        return self._scored(hidden), drop_pixel(target).reshape(-1)

    def _scored(self, grid: torch.Tensor) -> torch.Tensor:
        """``(63 N) x D`` rows of an ``N x size x size x D`` grid tensor, the bottom-right left out."""
        return grid.reshape(grid.shape[0], -1, grid.shape[-1])[:, : self.dim].reshape(-1, grid.shape[-1])

    @torch.no_grad()
    def fit_whitening(self, x: torch.Tensor, max_samples: int = 500_000, generator: torch.Generator | None = None) -> None:
        """Conditional whitening from the neighbourhoods of the scored pixels only."""
        check_patches63(x, self.size)
        per_patch = max(1, math.ceil(max_samples / self.dim))
        if x.shape[0] > per_patch:
            x = x[torch.randperm(x.shape[0], generator=generator)[:per_patch]]
        inputs, targets = self.ride.neighborhood.extract(self.frame(x))
        self.ride.whitening.fit(self._scored(inputs), drop_pixel(targets).reshape(-1))

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral samples ``num x 63``: RIDE samples the patch in the zero frame in raster
        order; the bottom-right draw is discarded (its value is minus the sum of the others)."""
        top, left, right = self.padding
        ref = self.ride.mcgsm.predictors
        init = ref.new_zeros(num, self.size + top, self.size + left + right)
        frame = self.ride.sample(num, *init.shape[1:], init=init, generator=generator)
        return drop_pixel(frame[:, top:, left : left + self.size])


def fit_patch_ride(
    model: PatchRIDE,
    train: torch.Tensor,
    valid: torch.Tensor,
    learning_rates: Sequence[float] = (1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 0.0005),
    batch_size: int = 50,
    momentum: float = 0.9,
    clip_grad_norm: float | None = 1.0,
    max_patches: int | None = None,
    whitening_samples: int = 500_000,
    lbfgs_iterations: int = 500,
    lbfgs_samples: int = 1_000_000,
    seed: int = 0,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Train on 63-dim patches: one epoch of momentum SGD per learning rate (the paper's rate
    schedule of ride.train), each followed by an L-BFGS refinement of the MCGSM on fixed
    features with early stopping on ``valid`` (ride.refine.fit_mcgsm_lbfgs). Returns a record per epoch.

    With ``checkpoint`` (a path), the state is written there (ride.checkpoint, kind
    ``patch-checkpoint``) after the whitening, every ``checkpoint_every`` batches and after each
    epoch's refinement; ``resume`` continues from it. Every random draw of an epoch comes from a
    generator seeded by ``(seed, epoch)``, so a resumed fit retraces the uninterrupted one exactly.
    A corrupt checkpoint, or one of other options, model or data (the differing field is named),
    is discarded with a line on stderr and the fit starts afresh. The caller removes it after success.
    """
    check_patches63(train, model.size)
    check_patches63(valid, model.size)
    if (not learning_rates or min(learning_rates) <= 0 or batch_size < 1 or checkpoint_every < 1
            or (max_patches is not None and max_patches < 1)):
        raise ValueError(f"fit_patch_ride needs positive learning rates, batch_size, checkpoint_every and max_patches, "
                         f"got {list(learning_rates)}, {batch_size}, {checkpoint_every}, {max_patches}")
    device = model.ride.mcgsm.predictors.device
    path = None if checkpoint is None else Path(checkpoint)
    # What a checkpoint must have been written for to be resumed (checkpoint_every and progress
    # do not change the result, so they may differ). No checkpoint: the data are not hashed.
    digest = _digest if path is not None else lambda _: None
    fingerprint = {
        "options": ("train", {"learning_rates": [float(lr) for lr in learning_rates], "batch_size": batch_size,
                              "momentum": momentum, "clip_grad_norm": clip_grad_norm, "max_patches": max_patches,
                              "whitening_samples": whitening_samples, "lbfgs_iterations": lbfgs_iterations,
                              "lbfgs_samples": lbfgs_samples, "seed": seed}),
        "model_config": ("model", model.config),
        "train_digest": ("data: the training patches", digest(train)),
        "valid_digest": ("data: the validation patches", digest(valid)),
    }
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "whitened": False, "last_loss": None}
    history: list[dict[str, Any]] = []
    optimizer_state = None
    payload = _resumable(path, fingerprint, device) if resume and path is not None else None
    if payload is not None:
        model.load_state_dict(payload["model_state"])
        state, history, optimizer_state = payload["state"], payload["history"], payload["optimizer_state"]
        print(f"ride patch train: resuming from {path} (epoch {state['epoch'] + 1}, batch {state['batch']})",
              file=sys.stderr)

    def save(optimizer: torch.optim.Optimizer | None) -> None:
        if path is not None:
            save_verified(path, {**{k: v for k, (_, v) in fingerprint.items()}, "model_state": model.state_dict(),
                                 "optimizer_state": None if optimizer is None else optimizer.state_dict(),
                                 "state": dict(state), "history": history}, "patch-checkpoint")

    if not state["whitened"]:
        model.fit_whitening(train, whitening_samples, stage_generator(seed, -1))
        state["whitened"] = True
        save(None)
    for epoch in range(state["epoch"], len(learning_rates)):
        lr = learning_rates[epoch]
        gen = stage_generator(seed, epoch)
        order = torch.randperm(train.shape[0], generator=gen)[:max_patches]
        num_batches = math.ceil(len(order) / batch_size)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        if optimizer_state is not None:  # the momentum of the interrupted epoch
            optimizer.load_state_dict(optimizer_state)
            optimizer_state = None
        model.train()
        for b in tqdm(range(state["batch"], num_batches), initial=state["batch"], total=num_batches,
                      desc=f"epoch {epoch + 1} lr {lr:g}", disable=not progress):
            batch = train[order[b * batch_size : (b + 1) * batch_size]].to(device)
            optimizer.zero_grad()
            loss = model.loss(batch)
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite loss ({loss.item()}) in epoch {epoch + 1} (lr {lr:g}), batch "
                                    f"{b + 1}; lower this learning rate or set clip_grad_norm and train afresh (--restart)")
            loss.backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
            state["batch"], state["last_loss"] = b + 1, loss.item()
            if state["batch"] % checkpoint_every == 0:
                save(optimizer)
        # ``gen`` continues after the epoch's permutation: the same draws after a resume.
        refine = _refine_mcgsm(model, train, valid, lbfgs_iterations, lbfgs_samples, gen, device)
        record = {"epoch": epoch + 1, "lr": lr, "batches": num_batches, "train_nll_last": state["last_loss"], **refine}
        history.append(record)
        state.update(epoch=epoch + 1, batch=0, last_loss=None)
        save(None)
        if progress:
            print(f"fit_patch_ride: {record}", file=sys.stderr)
    return history


def _digest(x: torch.Tensor) -> str:
    """sha256 of a tensor's values (with its shape and dtype), so a checkpoint is never resumed on other data."""
    head = f"{tuple(x.shape)} {x.dtype}".encode()
    return hashlib.sha256(head + x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _resumable(path: Path, fingerprint: dict[str, tuple[str, Any]], device: torch.device) -> dict[str, Any] | None:
    """The checkpoint at ``path`` to resume from, or None: absent, corrupt or of another run (both discarded)."""
    if not path.exists():
        return None
    try:
        payload = load_verified(path, "patch-checkpoint", device)
        check_same_run(path, payload, fingerprint)
    except CorruptFileError as err:
        discard_checkpoint(path, "ride patch train", err, warning=True)
        return None
    except CheckpointMismatch as err:
        discard_checkpoint(path, "ride patch train", err)
        return None
    return payload


@torch.no_grad()
def _scored_data(model: PatchRIDE, x: torch.Tensor, max_samples: int, generator: torch.Generator,
                 device: torch.device, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    x = x[torch.randperm(x.shape[0], generator=generator)[: max(1, math.ceil(max_samples / model.dim))]]
    parts = [model.features(x[s : s + batch].to(device)) for s in range(0, x.shape[0], batch)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _refine_mcgsm(model: PatchRIDE, train: torch.Tensor, valid: torch.Tensor, iterations: int, samples: int,
                  generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    train_data = _scored_data(model, train, samples, generator, device)
    valid_data = _scored_data(model, valid, max(samples // 5, 1), generator, device)
    info = fit_mcgsm_lbfgs(model.ride.mcgsm, *train_data, *valid_data, iterations)
    if not math.isfinite(info.get("valid_nll", 0.0)):
        raise TrainingError("L-BFGS refinement of the PatchRIDE MCGSM diverged")
    return info
