"""L-BFGS refinement of an MCGSM on fixed inputs (paper section 3: after each SGD stage, the
MCGSM alone is refined with features fixed; the MCGSM baselines, the per-pixel patch MCGSMs and
the MoGSM are trained by it alone). float64, early stopping on held-out pixels. On the CPU the
closure's value and gradient come from one fused C pass (ride.kernels.mcgsm_nll_grad).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch

from .kernels import mcgsm_nll_grad
from .mcgsm import MCGSM


def _mean_nll(mcgsm: MCGSM, inputs: torch.Tensor, outputs: torch.Tensor, chunk: int | None = None, grad: bool = False) -> torch.Tensor:
    # Small chunks keep the temporaries in the allocator's cache on the CPU (64k-row chunks spent
    # most of their time in page faults); on a GPU each chunk costs ~20 kernel launches, so 1e6
    # rows go in one chunk (about 1 GB per float64 temporary).
    if chunk is None:
        chunk = 4096 if inputs.device.type == "cpu" else 1 << 20
    total = inputs.new_zeros((), dtype=torch.float64)
    for start in range(0, inputs.shape[0], chunk):
        part = -mcgsm.log_prob(inputs[start : start + chunk], outputs[start : start + chunk]).sum()
        if grad:
            (part / inputs.shape[0]).backward()
        total = total + part.detach()
    return total / inputs.shape[0]


def _mean_nll_and_grad(mcgsm: MCGSM, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """The mean NLL, with its gradient added to the parameters' ``.grad``: the fused C pass where it
    applies (CPU, C kernels and BLAS, not RIDE_MCGSM_IMPL=torch), else autograd by chunks."""
    fused = mcgsm_nll_grad(mcgsm, inputs, outputs)  # None off the CPU and wherever it does not apply
    if fused is None:
        return _mean_nll(mcgsm, inputs, outputs, grad=True)
    loss, grads = fused
    for param, grad in zip(mcgsm.parameters(), grads):  # mcgsm_nll_grad returns them in this order
        param.grad = grad if param.grad is None else param.grad + grad
    return loss


def mcgsm_lbfgs(mcgsm: MCGSM, inputs: torch.Tensor, outputs: torch.Tensor,
                check_every: int) -> tuple[torch.optim.LBFGS, Callable[[], torch.Tensor]]:
    """The L-BFGS optimiser of the MCGSM refinement and its closure (the mean NLL on all pixels)."""
    optimizer = torch.optim.LBFGS(
        mcgsm.parameters(), lr=1, max_iter=check_every, history_size=10, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        return _mean_nll_and_grad(mcgsm, inputs, outputs)

    return optimizer, closure


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
    optimizer, closure = mcgsm_lbfgs(work, x, y, check_every)

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
