"""Building and loading the C++ kernels of :mod:`tda.engine.kernels` (sources in ``csrc/``).

The library is compiled on first use into ``$TDA_CACHE_DIR/kernels`` (default
``~/.cache/tda-workbench/kernels``) under a key of its sources (every header included), torch
and Python versions, compiler and flags — AVX2/FMA/F16C, AVX-512 (F, BW, VL) and AVX512-BF16
where this CPU has them (``TDA_KERNELS_ISA=avx2`` caps the level) — so a library built for
another machine or source is never loaded. Builds are serialized by a file lock (safe across
processes) and appear atomically. ``TDA_KERNELS_BACKEND=torch|cpp|auto`` disables them, makes a
failed build an error, or falls back to torch with a warning (default).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

_BACKENDS = ("auto", "cpp", "torch")
_NAMESPACE = "tda_kernels"

_CSRC = Path(__file__).with_name("csrc")
_CPP_FILE = _CSRC / "sparse_kernels.cpp"  # the C++ source (headers beside it)


def _cpp_source() -> str:
    """The kernels' C++ source, with every header in ``csrc/`` (all of it is part of the cache key)."""
    parts = [p.read_text() for p in sorted(_CSRC.glob("*.h"))]
    return "\n".join([*parts, _CPP_FILE.read_text()])


# ---------------------------------------------------------------------------------------------
# Building and loading the C++ extension
# ---------------------------------------------------------------------------------------------


class _State:
    lock = threading.Lock()
    tried = False
    ops = None  # torch.ops.tda_kernels once loaded
    error: str | None = None
    build_seconds: float | None = None
    library: str | None = None
    flags: list[str] = []


def _env_backend() -> str:
    b = os.environ.get("TDA_KERNELS_BACKEND", "auto").strip().lower() or "auto"
    if b not in _BACKENDS:
        from tda.common.errors import BadInput

        raise BadInput(f"TDA_KERNELS_BACKEND must be one of {', '.join(_BACKENDS)}, got {b!r}")
    return b


def _cache_root() -> Path:
    root = Path(os.environ.get("TDA_CACHE_DIR") or Path.home() / ".cache" / "tda-workbench")
    return root.expanduser() / "kernels"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _compile_flags(cpu: set[str] | None = None) -> list[str]:
    """-O3, plus AVX2/FMA/F16C when this x86 CPU has them, AVX-512 (F, BW, VL; 512-bit vectors
    preferred) when it has those too, AVX-512 BF16 on top, and AMX tiles (BF16, INT8) on top of
    that. Part of the cache key, so a library built on another CPU is never loaded. ``cpu``: the CPU's flags (default: this one's).
    ``TDA_KERNELS_ISA=avx2`` caps the level at AVX2 (to compare builds side by side);
    ``TDA_KERNELS_CFLAGS`` adds flags (a kernel's tuning macros, e.g. ``-DTDA_TILE_PF=16384``)."""
    flags = ["-O3", "-fopenmp"]
    have = _cpu_flags() if cpu is None else set(cpu)
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    wide = os.environ.get("TDA_KERNELS_ISA", "auto").strip().lower() != "avx2"
    if x86 and {"avx2", "fma", "f16c"} <= have:
        flags += ["-mavx2", "-mfma", "-mf16c"]
        if wide and {"avx512f", "avx512bw", "avx512vl"} <= have:
            flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mprefer-vector-width=512"]
            if "avx512_bf16" in have:
                flags += ["-mavx512bf16"]
                if {"amx_tile", "amx_bf16"} <= have:  # prefill of quantized weights on AMX tiles
                    flags += ["-mamx-tile", "-mamx-bf16"]
                    if "amx_int8" in have:  # decode steps on AMX-INT8 (opt-in: quant_kernels.decode_kernel)
                        flags += ["-mamx-int8"]
    extra = os.environ.get("TDA_KERNELS_CFLAGS", "").split()  # e.g. -DTDA_TILE_PF=16384 (tuning a kernel's macros)
    return flags + extra


def _cache_key(flags: list[str]) -> str:
    parts = [
        _cpp_source(),
        torch.__version__,
        str(getattr(torch.version, "git_version", "")),
        sys.version.split()[0],
        platform.machine(),
        os.environ.get("CXX", "c++"),
        " ".join(flags),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _build_and_load() -> None:
    """Load the cached library, or build it under a file lock (safe across processes)."""
    from filelock import FileLock

    flags = _compile_flags()
    key = _cache_key(flags)
    name = f"{_NAMESPACE}_{key}"
    root = _cache_root()
    from tda.engine import kernel_cache  # verified before mapping, built and probed in a child

    kernel_cache.prepare_root(root)  # 0700; stale build folders of killed builds removed
    final = root / name
    lib = final / f"{name}.so"
    _State.flags = flags
    with FileLock(str(root / f"{name}.lock"), timeout=900):
        if not kernel_cache.check_library(lib):  # missing, or damaged (removed with a line)
            tmp = root / f"{name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                src = tmp / f"{name}.cpp"
                shutil.copy(_CPP_FILE, src)
                for h in _CSRC.glob("*.h"):
                    shutil.copy(h, tmp / h.name)
                from tda.common import progress

                t0 = time.perf_counter()
                with progress.task("building the C++ kernels (one time per machine)") as job, \
                        job.heartbeat("compiling"):
                    kernel_cache.compile_in_child(name, [src], tmp, flags, ["-fopenmp"])
                _State.build_seconds = time.perf_counter() - t0
                kernel_cache.record(tmp / f"{name}.so")
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)  # the finished build appears atomically
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        torch.ops.load_library(str(lib))
    _State.library = str(lib)
    _State.ops = DirectOps(getattr(torch.ops, _NAMESPACE))


class DirectOps:
    """The ops of a ``torch.ops`` namespace, each as the dispatcher's own callable (the packet's
    ``_op``): the same call without ``OpOverloadPacket.__call__``'s Python frame (~0.3 µs of
    ~1.7 per call; a decode step makes ~300 of them). Unknown names raise ``AttributeError``
    (``hasattr`` works as on the namespace)."""

    def __init__(self, namespace):
        self._ns = namespace

    def __getattr__(self, name: str):
        packet = getattr(self._ns, name)  # AttributeError / RuntimeError for an unknown op
        fn = getattr(packet, "_op", packet)
        setattr(self, name, fn)  # found once, then a plain attribute
        return fn

    def __repr__(self) -> str:
        return f"DirectOps({self._ns!r})"


def _ops():
    """``torch.ops.tda_kernels`` (building it on first use), or None when unavailable."""
    if _State.tried:
        return _State.ops
    with _State.lock:
        if not _State.tried:
            mode = _env_backend()
            if mode == "torch":
                _State.error = "disabled by TDA_KERNELS_BACKEND=torch"
            else:
                try:
                    _build_and_load()
                except Exception as e:  # noqa: BLE001 - any build failure means "use torch"
                    _State.ops = None
                    _State.error = f"{type(e).__name__}: {str(e).strip()[-2000:]}"
                    if mode == "cpp":
                        _State.tried = True
                        raise RuntimeError(f"C++ kernels failed to build: {_State.error}") from e
                    warnings.warn(f"tda kernels: C++ build failed, using the torch path "
                                  f"({_State.error[-300:]})", RuntimeWarning, stacklevel=3)
            _State.tried = True
    return _State.ops


def build() -> bool:
    """Build/load the C++ kernels now (normally done on first use); True when available."""
    return _ops() is not None


def backend() -> str:
    """Which implementation CPU calls get by default: ``"cpp"`` or ``"torch"``."""
    return "cpp" if _ops() is not None else "torch"
