"""The machine's streaming-read bandwidth, and the roofline time of a decode step.

At batch 1 a decode step reads every weight it uses once, so its time is at best
``bytes read per step / read bandwidth``. The bandwidth is measured the way a decode step reads:
``torch.sum`` over one large fp32 buffer (default 256 MB: far larger than any cache), with torch's
intra-op threads as currently configured (``torch.get_num_threads()``, or ``threads`` for the
measurement only). The buffer is written once first (so its pages exist), then summed once
untimed and ``repeats`` times timed. The reported figure is the **best** repeat (the least
disturbed by other processes on a shared machine: a roofline is a bound, so the fastest read the
machine managed is the right denominator); the median is reported next to it.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from tda.common.errors import BadInput


@contextlib.contextmanager
def _threads(n: int | None):
    if n is None or n == torch.get_num_threads():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


GEMV_WIDTH = 640  # the probe's row length: Gemma 3 270M's d_model (the lm_head's rows)


def _gemv_reader(device: torch.device):
    """The decode's own access pattern: the C++ row-major GEMV (``row_dense``, the kernel and
    thread split every fp32 decode step uses) over a buffer viewed as ``[rows, 640]``; None where the
    kernels are not built (or not on CPU)."""
    if device.type != "cpu":
        return None
    from tda.engine import kernels

    ops = kernels.cpp_ops()
    if ops is None:
        return None
    x = torch.ones(1, GEMV_WIDTH)

    def read(buf: torch.Tensor):
        return ops.row_dense(x, buf.view(-1, GEMV_WIDTH), None)

    return read


def measure_bandwidth(buffer_mb: float = 256, repeats: int = 7, *, threads: int | None = None,
                      device: str | torch.device = "cpu", pattern: str = "gemv") -> dict:
    """Streaming-read bandwidth: ``{"gbps": best, "median_gbps", "all_gbps", "buffer_mb", "threads",
    "repeats", "device", "how"}`` (GB = 1e9 bytes).

    ``pattern="gemv"`` (default) reads the buffer the way a decode step reads its weights — the C++
    row-major GEMV over ``[rows, 640]`` fp32, with ``threads`` threads (pass the decode's own
    count): a ``torch.sum`` probe (``pattern="sum"``, also the fallback without the C++ kernels or
    on CUDA) under-reads what the decode's GEMVs achieve, so that a decode could be reported above
    100% of its roofline."""
    if not buffer_mb > 0 or repeats < 1:
        raise BadInput("need a buffer of > 0 MB and at least one repeat")
    if pattern not in ("gemv", "sum"):
        raise BadInput(f"unknown bandwidth pattern '{pattern}'; use gemv or sum")
    device = torch.device(device)
    n = max(GEMV_WIDTH, int(buffer_mb * 1e6) // 4 // GEMV_WIDTH * GEMV_WIDTH)
    with _threads(threads), torch.inference_mode():
        buf = torch.empty(n, dtype=torch.float32, device=device)
        buf.fill_(1.0)
        nbytes = buf.numel() * buf.element_size()
        read = _gemv_reader(device) if pattern == "gemv" else None
        how = "best of the C++ row-major GEMV over [rows, 640] fp32" if read else "best of torch.sum over an fp32 buffer"
        read = read or (lambda b: b.sum())
        read(buf)  # warm-up (thread pool, page tables)
        rates = []
        for _ in range(int(repeats)):
            _sync(device)
            t0 = time.perf_counter()
            s = read(buf)
            _sync(device)
            dt = time.perf_counter() - t0
            float(s.reshape(-1)[0])
            rates.append(nbytes / max(dt, 1e-9) / 1e9)
        used = torch.get_num_threads()
    del buf
    return {"gbps": max(rates), "median_gbps": statistics.median(rates), "all_gbps": rates,
            "buffer_mb": nbytes / 1e6, "threads": used, "repeats": int(repeats), "device": str(device),
            "how": how}


def stream_read_gbps(buffer_mb: float = 256, repeats: int = 7, **kw) -> float:
    """The best streaming-read bandwidth in GB/s (see :func:`measure_bandwidth`)."""
    return measure_bandwidth(buffer_mb, repeats, **kw)["gbps"]


def roofline_ms(bytes_per_step: float, gbps: float) -> float:
    """The fastest a step reading ``bytes_per_step`` bytes can run at ``gbps`` GB/s, in ms."""
    if not gbps or gbps != gbps or gbps <= 0:
        return float("nan")
    return 1000.0 * bytes_per_step / (gbps * 1e9)


def roofline_pct(roofline: float, measured_ms: float) -> float:
    """How close a measured step time is to its roofline: ``100 · roofline / measured``."""
    if not measured_ms or measured_ms != measured_ms or roofline != roofline:
        return float("nan")
    return 100.0 * roofline / measured_ms
