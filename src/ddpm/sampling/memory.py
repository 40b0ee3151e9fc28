"""How much memory drawing n images in batches of b will take, estimated before anything is allocated.

A CPU process that asks for more memory than there is is usually killed by the kernel without a word
(or fails with a bare ``MemoryError`` after minutes of work), so ``ddpm sample`` and the evaluation
commands check first and say what would fit. Two parts:

- the results: the float32 images that :func:`ddpm.sampling.api.generate` returns (plus the copy
  ``torch.cat`` makes and the uint8 copy that is written), proportional to n;
- one batch through the network: the peak of the tensors alive during one forward pass, measured
  by running the network on fake tensors (PyTorch's ``FakeTensorMode``: shapes and dtypes only,
  nothing allocated) under a dispatch mode that adds each new tensor's bytes when it is made and
  subtracts them when it is freed.
  Classifier-free guidance doubles the batch the network sees.
"""

from __future__ import annotations

import os
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ddpm.errors import ConfigError

# bytes per image element kept for the results: float32 list + float32 torch.cat + uint8 written
RESULT_BYTES_PER_ELEMENT = 4 + 4 + 1
# the estimate covers the network's tensors; the allocator and the interpreter need some room too
HEADROOM = 1.25
# A quick upper bound on one image's activations per image element, in bytes, used to skip the
# measurement when a batch clearly fits: the measured peak is about 1,500 (digits U-Net, 28x28;
# LSUN U-Net, 256x256) to 2,600 (CIFAR-10 U-Net) bytes per element.
QUICK_BYTES_PER_ELEMENT = 8192


class _PeakMeter(TorchDispatchMode):
    """Live and peak bytes of the tensors created under it (views and in-place results are free)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t) for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in inputs and not t._is_view():
                n = t.numel() * t.element_size()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out


def forward_peak_bytes(model_config, batch: int) -> int:
    """Peak bytes of the tensors alive during one no-grad forward pass of a batch (weights excluded)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ddpm.models.registry import build_model

    c, h, w = model_config.image_shape
    meter = _PeakMeter()
    with FakeTensorMode(allow_non_fake_inputs=True):
        net = build_model(model_config).eval()  # fake weights: initialising them computes nothing
        x = torch.empty(batch, c, h, w)
        t = torch.zeros(batch, dtype=torch.long)
        kwargs = {"y": torch.zeros(batch, dtype=torch.long)} if getattr(model_config, "num_classes", None) else {}
        with torch.no_grad(), meter:
            net(x, t, **kwargs)
    return meter.peak


def available_bytes(device) -> int | None:
    """Memory this process can still use on ``device`` (None when it cannot be told)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except RuntimeError:
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


def check_sampling_memory(model_config, num_images: int, batch_size: int, *, guidance: bool = False,
                          device="cpu", available: int | None = None) -> None:
    """ConfigError, saying what would fit, when ``num_images`` in batches of ``batch_size`` cannot fit."""
    if available is None:
        available = available_bytes(device)
    if available is None:
        return
    c, h, w = model_config.image_shape
    per_image = RESULT_BYTES_PER_ELEMENT * c * h * w
    results = num_images * per_image
    if results * HEADROOM > available:
        fit = int(available / HEADROOM // per_image)
        raise ConfigError(f"{num_images:,} images of {c}x{h}x{w} need about {gib(results)} of memory for the "
                          f"results; {gib(available)} is available, enough for about {fit:,}: draw them in "
                          "parts (e.g. -n N --out-dir DIR repeatedly: numbering and the images continue)")
    batch = min(batch_size, num_images)
    scale = 2 if guidance else 1
    if (results + batch * scale * c * h * w * QUICK_BYTES_PER_ELEMENT) * HEADROOM <= available:
        return  # fits even under the quick bound: no need to measure
    one = forward_peak_bytes(model_config, 1) * scale
    need = one * batch  # every activation is proportional to the batch (the weights are not counted)
    if (results + need) * HEADROOM > available:
        fit = max(1, int((available / HEADROOM - results) // max(one, 1)))
        raise ConfigError(f"a batch of {batch:,} images needs about {gib(need)} for the network's activations "
                          f"on {torch.device(device).type} (plus {gib(results)} for the results); "
                          f"{gib(available)} is available: use --batch-size {fit:,} or less")


__all__ = ["forward_peak_bytes", "available_bytes", "check_sampling_memory"]
