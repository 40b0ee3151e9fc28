"""FLOP counting, matmul peak timing and GPU datasheet peaks: what the benchmarks need to turn
timings into achieved FLOP/s and a fraction of peak. Nothing in the library uses them."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

# Dense (no 2:4 sparsity) datasheet peaks in FLOP/s, keyed by a substring of the device name.
# Sources: NVIDIA H100/H200 SXM, A100 SXM and L4 datasheets.
DATASHEET_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
}


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels (CUDA); a no-op on CPU. Use only around timed regions."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn()`` by PyTorch's FLOP counter (matmuls/convs/SDPA; 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measure_matmul_flops(device: torch.device | str, dtype: torch.dtype = torch.float32,
                         n: int | None = None, repeats: int = 5) -> float:
    """Best achieved FLOP/s of a square matmul over ``repeats``: a practical peak where no datasheet
    figure applies (CPU). The best, not the median, so that a busy machine lowers it less."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / min(times)


def datasheet_peak_flops(device: torch.device | str, precision: str, tf32: bool = True) -> float | None:
    """Dense datasheet peak for a known GPU and precision (``fp32`` with ``tf32`` uses the TF32 peak)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    key = precision if precision == "bf16" else ("tf32" if tf32 else "fp32")
    for gpu, peaks in DATASHEET_PEAK_FLOPS.items():
        if gpu in name:
            return peaks[key]
    return None


