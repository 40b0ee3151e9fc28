"""Fast-path switches shared by training, sampling and the benchmarks.

Exact fast paths (same function up to float rounding, on by default): channels_last memory format,
foreach/fused optimizer and EMA updates, CUDA-graph replay of the network call. Paths that trade
precision are switches: bf16 autocast (fp32 master weights), TF32 matmuls in fp32 mode, and
``torch.compile`` (exact in principle, but it may reorder float reductions).

Each helper degrades to the plain path where the hardware cannot do better (CPU, pre-Ampere GPUs),
so callers can pass the same flags everywhere. ``tests/test_fast_path.py`` checks that each fast path
computes the same function as the plain one; ``benchmarks/bench.py`` measures what they buy (the
FLOP counting and peak figures it needs live in ``benchmarks/measure.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from ddpm.config import TRAIN_PRECISIONS
from ddpm.errors import ConfigError


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
        if precision not in TRAIN_PRECISIONS:
            raise ConfigError(f"precision must be one of {TRAIN_PRECISIONS}, got {precision!r}")
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
    """Autocast context for ``precision``: bf16 (or, for training with a loss scaler, fp16) autocast
    with the weights kept in fp32, or a no-op for fp32.

    Works on CPU too (PyTorch's CPU autocast), which is how the CPU test suite exercises it.
    ``cache_enabled=False`` is required inside CUDA-graph capture: cached bf16 weight copies are
    freed when the autocast region ends, while a captured graph would keep using their memory.
    """
    if precision not in TRAIN_PRECISIONS:
        raise ConfigError(f"precision must be one of {TRAIN_PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16  # fp16: training with a loss scaler
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)


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
    step (BENCHMARKS.md has the measured cost for the CIFAR-10 net).
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


def resolve_device(device: "str | torch.device | None" = None) -> torch.device:
    """The device a user names: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (Apple's Metal GPU); None means
    CUDA when available.

    The one place the CLI, the evaluation inputs and the DDP setup turn ``--device`` into a device,
    so every command rejects a bad name or a missing GPU with the same message.
    """
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        return device
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()) or (kind in ("cpu", "mps") and index):
        raise ConfigError(f"--device must be cpu, cuda, cuda:N or mps, got {device!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA GPU is available; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: Apple's Metal (MPS) backend is not available here (it needs Apple "
                          "silicon, macOS 12.3+ and a PyTorch build with MPS); use --device cpu")
    return torch.device(device)
