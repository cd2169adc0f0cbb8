"""Build and load the CPU kernels (``slstm.cpp``, ``mcgsm.cpp``, shipped with the package).

``torch.utils.cpp_extension.load`` compiles the sources on first use (C++ compiler ``$CXX``,
default ``c++``, and ninja) into one shared library, in ``$RIDE_CACHE_DIR`` (default
``~/.cache/ride``) under a name keyed by the CPU's feature flags: the kernels are built with
``-march=native``, so a library built on one machine of a cluster is never loaded on another
(which is also why they are not built at install time). Later processes load it directly
while a stamp says it was built from the same sources, flags and torch; otherwise
cpp_extension rebuilds what changed. The library is loaded with ctypes; where any of this
fails (no compiler, no ninja, no OpenMP, unwritable cache) :func:`c_kernels` returns None after
one warning and every caller runs the same sweeps with torch ops. Why this route and what it
costs against the former gcc call: README.performance.md.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ..provenance import cpu_info

SOURCES = ("slstm.cpp", "mcgsm.cpp")
HEADERS = ("fastmath.h",)

# -fno-trapping-math lets gcc vectorise the selects and floorf of exp_f (torch builds with it
# too); -funsafe-math-optimizations goes to the compile step only (cpp_extension links with
# LINK_FLAGS): linked into a shared library by gcc < 13 it would add crtfastmath.o, which turns
# on flush-to-zero for the whole process. NaNs still propagate (no -ffinite-math-only).
COMPILE_FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-fno-math-errno",
                 "-fno-trapping-math", "-funsafe-math-optimizations"]
LINK_FLAGS = ["-fopenmp"]
# cpp_extension waits while its lock file exists, and a process killed mid-build leaves it behind.
# Builders hold an flock on build.flock (released by the kernel when a process dies), so a lock
# file found while holding it is stale; where flock fails (some network filesystems), a lock file
# older than this is taken for stale instead (a build takes seconds).
STALE_LOCK_S = 600

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_blas: dict[str, int | None] | None = None


def cache_dir() -> Path:
    """Where built libraries are kept: ``$RIDE_CACHE_DIR``, ``~/.cache/ride`` or a temp folder."""
    cache = Path(os.environ.get("RIDE_CACHE_DIR", Path.home() / ".cache" / "ride"))
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / "ride-cache"
        cache.mkdir(parents=True, exist_ok=True)
    return cache


def build_library() -> Path:
    """Build the kernels for this CPU with ``torch.utils.cpp_extension`` (a no-op when up to date)
    and return the library's path; raises where the compiler or ninja is missing or fails."""
    cpu = cpu_info("flags") or platform.processor() or platform.machine()
    compiler = os.environ.get("CXX", "c++")
    name = "ride_kernels_" + hashlib.sha256(f"{cpu}\n{compiler}".encode()).hexdigest()[:12]
    build_dir = cache_dir() / name
    build_dir.mkdir(exist_ok=True)
    # A library built from these very sources and flags is loaded without asking cpp_extension,
    # whose up-to-date check (compiler and ninja subprocesses) costs every process ~0.3 s.
    folder = Path(__file__).parent
    inputs = [(folder / src).read_bytes() for src in (*SOURCES, *HEADERS)]
    digest = hashlib.sha256(b"\0".join([*inputs, *map(str.encode, COMPILE_FLAGS + LINK_FLAGS),
                                         torch.__version__.encode()])).hexdigest()
    stamp = build_dir / "built-from.sha256"

    def built() -> Path | None:
        if stamp.exists():
            done, _, path = stamp.read_text().partition("\n")
            if done == digest and Path(path).exists():
                return Path(path)
        return None

    if (path := built()) is not None:
        return path
    if shutil.which(compiler) is None:
        raise FileNotFoundError(f"C++ compiler {compiler!r} not found")
    with _exclusive(build_dir / "build.flock") as held:
        if (path := built()) is not None:  # another process built it while this one waited
            return path
        lock = build_dir / "lock"
        if lock.exists() and (held or time.time() - lock.stat().st_mtime > STALE_LOCK_S):
            lock.unlink(missing_ok=True)
        from torch.utils import cpp_extension

        # Copies of the flags: cpp_extension appends its own to the lists it is given.
        path = Path(cpp_extension.load(name, [str(folder / src) for src in SOURCES], extra_cflags=list(COMPILE_FLAGS),
                                       extra_ldflags=list(LINK_FLAGS), build_directory=str(build_dir),
                                       is_python_module=False, verbose=False))
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(f"{digest}\n{path}")
        os.replace(tmp, stamp)  # atomic: a concurrent reader sees the old stamp or the new one
    return path


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on ``path`` (waiting for other holders); yields whether it is held
    (False where flock is unavailable: no fcntl, or a filesystem that refuses it)."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = True
        except OSError:
            held = False
        yield held
    finally:
        os.close(fd)  # releases the flock


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """ctypes signatures of the exported functions (see the sources)."""
    i, p, i64 = ctypes.c_int, ctypes.c_void_p, ctypes.c_int64
    signatures = {
        "slstm_fwd": [i, i, i, i, p, p, p, p, i, i, i, p, p, i, i, i, i, i],
        "slstm_bwd": [i, i, i, i, p, p, p, p, p, p, i, i, p, i, i, i, i, i, i, i, i, p, p, p, i],
        "slstm_fwd_sweep": [i, i, p, i, i, i, p, p, p, p, i, i, p, p, i64, p, p, i, p, p],
        "slstm_bwd_sweep": [i, i, p, i, i, i, i, i, i, p, p, i64, p, p, p, p, p, i64, i, p, p, i64, p, i, p, p, p, p,
                            i, p, i],
        "mcgsm_fwd": [i64, i, i, p, p, p, p, p, p, p, p, i],
        "mcgsm_bwd": [i64, i, i, p, p, p, p, p, p, p, p, p, p, p, p, i],
        "mcgsm_train": [i64, i, i, i, i, p, p, p, p, p, p, p, p, p, i, i, p, p, p, p, i, p, p],
    }
    for stem, argtypes in signatures.items():
        for suffix in ("_f32", "_f64"):
            fn = getattr(lib, stem + suffix)
            fn.argtypes, fn.restype = argtypes, None
    lib.probe_f32.argtypes = [i, p, p, p]
    lib.mcgsm_nll_grad_work.argtypes, lib.mcgsm_nll_grad_work.restype = [i, i, i, i, i], i64
    lib.mcgsm_nll_grad_groups.argtypes, lib.mcgsm_nll_grad_groups.restype = [i64, i], i64
    return lib


def c_kernels() -> ctypes.CDLL | None:
    """The compiled CPU kernels, or None when they cannot be built (reason in :func:`c_kernels_error`).
    ``RIDE_SLSTM_NO_C`` disables them."""
    global _lib, _error
    if _lib is not None or _error is not None:
        return _lib
    with _lock:
        if _lib is None and _error is None:
            if os.environ.get("RIDE_SLSTM_NO_C"):
                _error = "disabled by RIDE_SLSTM_NO_C"
            else:
                try:
                    _lib = _declare(ctypes.CDLL(str(build_library())))
                except Exception as exc:  # no compiler or ninja, no OpenMP, read-only cache, ...
                    _error = f"{type(exc).__name__}: {exc}"
                    first = _error.splitlines()[0]
                    warnings.warn(f"ride C kernels unavailable, using torch ops ({first}); for the fast CPU "
                                  "path install a C++ compiler (g++; or set CXX) and ninja (pip install ninja)",
                                  stacklevel=3)
    return _lib


def c_kernels_error() -> str | None:
    """Why :func:`c_kernels` is None (None when the kernels are loaded)."""
    c_kernels()
    return _error


def use_c_kernels(x: torch.Tensor, force_torch: bool = False) -> bool:
    """Whether the C kernels serve tensor ``x`` (CPU, float32/float64, kernels built)."""
    return (
        not force_torch
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and c_kernels() is not None
    )


def blas_pointers() -> dict[str, int | None]:
    """Addresses of ``sgemm_``/``dgemm_`` and ``MKL_Set_Num_Threads_Local`` exported by torch's
    CPU library (MKL builds), which the C kernels call per thread on their rows; empty where torch
    has no such symbols (the sweeps then call torch GEMMs per diagonal). RIDE_SLSTM_NO_BLAS
    disables them."""
    global _blas
    if _blas is None:
        found: dict[str, int | None] = {}
        if not os.environ.get("RIDE_SLSTM_NO_BLAS"):
            try:
                lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
                names = {"sgemm": "sgemm_", "dgemm": "dgemm_", "set_threads": "MKL_Set_Num_Threads_Local"}
                found = {key: ctypes.cast(getattr(lib, sym), ctypes.c_void_p).value for key, sym in names.items()}
            except (OSError, AttributeError):
                found = {}
        _blas = found
    return _blas


def gemm_args(dtype: torch.dtype) -> tuple[int | None, int | None]:
    """(gemm, set_threads) addresses for the C kernels, or (None, None) to use torch GEMMs."""
    blas = blas_pointers()
    gemm = blas.get("sgemm" if dtype == torch.float32 else "dgemm")
    return (gemm, blas.get("set_threads")) if gemm else (None, None)
