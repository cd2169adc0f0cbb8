"""A training step's forward and backward captured in one CUDA graph.

At small batches a CUDA training step is bound by kernel launches, not by the GPU: a 1-layer RIDE
on 50 patches of 22x22 launches a GEMM and a Triton kernel per anti-diagonal and direction, and
took ~14 ms on an H200 (results/benchmarks/gpu-h200-2026-11-26/), most of it Python and launch
overhead. Replaying a captured graph issues all of those launches at once.

:class:`GraphedLoss` captures ``model.loss(batch).backward()`` for one batch shape; the optimiser
step stays outside (eager), so a non-finite loss can still be caught before it is applied.
Training on CUDA uses it unless ``RIDE_CUDA_GRAPH=0`` (on by default since its CUDA tests passed on an
H200, results/benchmarks/gpu-h200-2026-11-27/); ``ride bench --cuda-graph`` times it.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .neighborhood import check_images


def graphs_enabled(device: torch.device) -> bool:
    """Whether training on ``device`` replays its steps from a CUDA graph (CUDA, unless ``RIDE_CUDA_GRAPH=0``)."""
    return device.type == "cuda" and os.environ.get("RIDE_CUDA_GRAPH", "1") != "0"


class GraphedLoss:
    """``model.loss(images)`` and its backward for ``images`` of one shape, replayed from a CUDA graph.

    Calling it with a batch checks the batch (the graph has no room for a check: it would wait
    for the GPU), copies it into the graph's input, replays, and points every parameter's
    ``.grad`` at the gradient the replay wrote (fresh values, not accumulated, whatever
    ``zero_grad`` did in between). Returns the loss, a tensor the next call overwrites.

    The graph reads the parameters and buffers where they are: in-place updates (optimisers,
    ``load_state_dict``) are seen; a changed model (new layer, other device or dtype) needs a
    new ``GraphedLoss``.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, warmup: int = 3) -> None:
        if example.device.type != "cuda":
            raise ValueError(f"GraphedLoss captures CUDA graphs; the example batch is on {example.device}")
        check_images(example)
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.input = example.detach().clone()
        with torch.cuda.device(example.device):
            # Warm-up on a side stream (PyTorch's recipe for whole-network capture): cuBLAS handles,
            # Triton compilations and cached index maps are made here, not during the capture.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    for p in self.params:
                        p.grad = None
                    model.loss(self.input).backward()
            torch.cuda.current_stream().wait_stream(stream)
            for p in self.params:
                p.grad = None  # backward inside the capture then allocates the gradients in the graph's pool
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss = model.loss(self.input)
                self.loss.backward()
        self.grads = [p.grad for p in self.params]
        if any(g is None for g in self.grads):
            raise RuntimeError("GraphedLoss: a trainable parameter got no gradient in the captured backward")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape != self.input.shape or images.dtype != self.input.dtype:
            raise ValueError(f"GraphedLoss was captured for {tuple(self.input.shape)} {self.input.dtype} batches, "
                             f"got {tuple(images.shape)} {images.dtype}; capture a new one for this shape")
        check_images(images)
        self.input.copy_(images)
        self.graph.replay()
        for p, g in zip(self.params, self.grads):
            p.grad = g
        return self.loss
