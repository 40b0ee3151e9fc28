"""Fast-path switches shared by training, sampling and the benchmarks.

Exact fast paths (same function up to float rounding, on by default): channels_last memory format,
foreach/fused optimizer and EMA updates, CUDA-graph replay of the network call. Paths that trade
precision are switches: bf16 autocast (fp32 master weights), TF32 matmuls in fp32 mode, and
``torch.compile`` (exact in principle, but it may reorder float reductions).

Each helper degrades to the plain path where the hardware cannot do better (CPU, pre-Ampere GPUs),
so callers can pass the same flags everywhere. ``tests/test_fast_path.py`` checks that each fast path
computes the same function as the plain one; ``benchmarks/bench.py`` measures what they buy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ddpm.config import PRECISIONS
from ddpm.errors import ConfigError


# Dense (no 2:4 sparsity) datasheet peaks in FLOP/s, keyed by a substring of the device name.
# Sources: NVIDIA H100/H200 SXM, A100 SXM and L4 datasheets.
DATASHEET_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
}


@dataclasses.dataclass
class FastPath:
    """Which fast paths to use. ``resolve(device)`` fills in the hardware-dependent defaults."""

    channels_last: bool = True
    precision: str | None = None  # None: bf16 on CUDA with bf16 tensor cores (Ampere+), else fp32
    compile: bool = False
    cuda_graph: bool = False  # sampling only: replay the network call from a captured graph
    tf32: bool = True  # fp32 matmuls/convs on TF32 tensor cores (CUDA only)

    def resolve(self, device: torch.device | str) -> "FastPath":
        device = torch.device(device)
        precision = self.precision or default_precision(device)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        return dataclasses.replace(self, precision=precision, cuda_graph=self.cuda_graph and device.type == "cuda")


def default_precision(device: torch.device | str) -> str:
    """bf16 where the GPU has bf16 tensor cores (compute capability >= 8.0), fp32 otherwise."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"
    return "fp32"


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 tensor cores for fp32 matmuls and convolutions on CUDA."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def autocast(device: torch.device | str, precision: str = "fp32", *,
             cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision``: bf16 autocast (weights stay fp32) or a no-op for fp32.

    Works on CPU too (PyTorch's CPU autocast), which is how the CPU test suite exercises it.
    ``cache_enabled=False`` is required inside CUDA-graph capture: cached bf16 weight copies are
    freed when the autocast region ends, while a captured graph would keep using their memory.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store 4-D weights NHWC (in place). Inputs follow automatically: conv outputs are NHWC."""
    return model.to(memory_format=torch.channels_last)


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last layout if it is 4-D (a no-op copy-free view when it already is)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def compile_model(model: nn.Module, *, mode: str | None = None, dynamic: bool = False) -> Callable:
    """``torch.compile`` with a one-line error if the toolchain is missing (e.g. no C compiler)."""
    try:
        return torch.compile(model, mode=mode, dynamic=dynamic)
    except Exception as exc:  # pragma: no cover - depends on the installed toolchain
        raise ConfigError(f"torch.compile is unavailable here ({exc}); run without --compile") from exc


def optimizer_kwargs(device: torch.device | str) -> dict[str, bool]:
    """Fastest exact Adam implementation for ``device``: fused (one kernel per tensor, no
    temporaries) on CUDA and CPU, foreach (multi-tensor) elsewhere.

    On CPU the fused step matters: foreach Adam allocates several parameter-sized temporaries per
    step, and for the 35.7M-parameter net that costs ~2.4x the fused step's CPU time.
    """
    return {"fused": True} if torch.device(device).type in ("cuda", "cpu") else {"foreach": True}


def prepare_model(model: nn.Module, fast: FastPath, device: torch.device | str) -> nn.Module:
    """Move ``model`` to ``device`` and apply the layout / TF32 switches of ``fast`` (in place)."""
    fast = fast.resolve(device)
    model = model.to(device)
    if fast.channels_last:
        to_channels_last(model)
    if torch.device(device).type == "cuda":
        set_tf32(fast.tf32)
    return model


class CUDAGraphModel:
    """Replays one captured call of ``model(x, t, **kwargs)`` for a fixed batch shape.

    Sampling calls the network ~1000 times with identical shapes; on a GPU the Python and kernel
    launch overhead of a 35.7M U-Net at small batch is a large share of each call. Capturing the call
    once and replaying it removes that overhead and computes exactly the same kernels.
    Inputs are copied into static buffers; the output is returned as a fresh tensor (a clone), so
    callers may keep it across calls. Calls with another shape, dtype or kwarg set run eagerly.
    On a non-CUDA device this is a transparent wrapper (plain calls).
    """

    def __init__(self, model: Callable, *, precision: str = "fp32", warmup: int = 3):
        self.model = model
        self.precision = precision
        self.warmup = warmup
        self._graph = None
        self._key = None
        self._static: dict[str, Any] = {}

    def _eager(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        with autocast(x.device, self.precision, cache_enabled=False):
            out = self.model(x, t, **kwargs)
        return out.float()  # the diffusion maths downstream stays fp32

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        if x.device.type != "cuda":
            return self._eager(x, t, kwargs)
        t = t.to(x.device) if torch.is_tensor(t) else torch.full((x.shape[0],), int(t), device=x.device)
        key = (x.shape, x.dtype, x.stride(), t.shape, tuple(sorted(
            (k, v.shape if torch.is_tensor(v) else v) for k, v in kwargs.items())))
        if self._graph is None:
            self._capture(x, t, kwargs, key)
        if key != self._key:
            return self._eager(x, t, kwargs)
        self._static["x"].copy_(x)
        self._static["t"].copy_(t)
        for k, v in kwargs.items():
            if torch.is_tensor(v):
                self._static["kw"][k].copy_(v)
        self._graph.replay()
        return self._static["out"].clone()

    @torch.no_grad()
    def _capture(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict, key) -> None:
        static_kw = {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
        static_x, static_t = x.clone(), t.clone()
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):  # warm-up on a side stream, as CUDA graphs require
            for _ in range(self.warmup):
                self._eager(static_x, static_t, static_kw)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._eager(static_x, static_t, static_kw)
        self._graph, self._key = graph, key
        self._static = {"x": static_x, "t": static_t, "kw": static_kw, "out": out}


def wrap_for_sampling(model: nn.Module, fast: FastPath, device: torch.device | str) -> Callable:
    """The callable that samplers should use as the network: eval mode, layout, precision, graph.

    Returns ``model`` itself when no fast path changes the call (fp32, no compile, no graph).
    """
    fast = fast.resolve(device)
    model = prepare_model(model, fast, device).eval()
    fn: Callable = compile_model(model) if fast.compile else model
    if fast.cuda_graph:
        return CUDAGraphModel(fn, precision=fast.precision)
    if fast.precision != "fp32":
        return _Autocast(fn, device, fast.precision)
    return fn


class _Autocast:
    """``fn`` called under autocast, output cast back to fp32 (the diffusion maths stays fp32)."""

    def __init__(self, fn: Callable, device: torch.device | str, precision: str):
        self.fn, self.device, self.precision = fn, torch.device(device), precision

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        with autocast(self.device, self.precision):
            out = self.fn(x, t, **kwargs)
        return out.float()


# --------------------------------------------------------------------------- measurement helpers


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


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None`` leaves it alone)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
