"""Native kernels of the spatial LSTM and the MCGSM and what builds and loads them.

| module | owns |
| --- | --- |
| ``build`` | building ``slstm.cpp`` + ``mcgsm.cpp`` (+ ``fastmath.h``) on first use with ``torch.utils.cpp_extension``, the cache, ctypes signatures, torch's BLAS pointers, the no-compiler fallback |
| ``fused_slstm`` | the fused SLSTM autograd Function, its C and torch sweeps, image groups |
| ``fused_mcgsm`` | the fused MCGSM autograd Function, :func:`mcgsm_log_prob` and :func:`mcgsm_nll_grad` (L-BFGS value and gradient) |
| ``malloc`` | :func:`tune_malloc` (glibc settings for long jobs) |
| ``triton_slstm``, ``triton_kernels`` | the fused SLSTM sweeps on CUDA: one Triton kernel per anti-diagonal and direction (Triton imported only where they run) |
"""
from .build import blas_pointers, c_kernels, c_kernels_error, use_c_kernels
from .fused_mcgsm import FusedMCGSM, mcgsm_log_prob, mcgsm_nll_grad
from .fused_slstm import FusedSLSTM, fused_inference, num_groups
from .malloc import tune_malloc

__all__ = ["FusedMCGSM", "FusedSLSTM", "blas_pointers", "c_kernels", "c_kernels_error", "fused_inference",
           "mcgsm_log_prob", "mcgsm_nll_grad", "num_groups", "tune_malloc", "use_c_kernels"]
