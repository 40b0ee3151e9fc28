"""``ddpm.Pipeline``: a checkpoint ready to draw images in a notebook, in the manner of diffusers.

    pipe = ddpm.load("google/ddpm-cifar10-32")         # a Hub id, a diffusers folder, a run or checkpoint dir
    images = pipe(4, sampler="ddim", steps=50)          # list of PIL images, image i from (seed, i)
    digits = ddpm.load("src/ddpm/assets/digits")(10, class_labels="all", guidance=2.0)

Everything is delegated: loading to :func:`ddpm.checkpoint.load_checkpoint`, sampling to
:func:`ddpm.sampling.api.generate` with the checkpoint's own sampler settings (``config.sampling``) as
the defaults, so a pipeline call and ``ddpm sample`` with the same arguments give the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ddpm.errors import ConfigError

OUTPUTS = ("pil", "tensor", "numpy")


@dataclass
class Pipeline:
    """A network, its diffusion and its configuration (with its default sampler)."""

    model: torch.nn.Module
    diffusion: Any
    config: Any
    step: int = 0
    weights: str = "ema"
    source: str = ""

    @classmethod
    def from_pretrained(cls, path, *, use_ema: bool = True, device=None) -> "Pipeline":
        """Load a run dir, checkpoint dir, ``.safetensors`` file, diffusers folder or Hub id ``org/name``."""
        from ddpm.accel import resolve_device
        from ddpm.checkpoint import load_checkpoint

        ck = load_checkpoint(path, use_ema=use_ema, device=resolve_device(device))
        return cls(ck.model, ck.diffusion, ck.config, ck.step, ck.weights, str(path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "Pipeline":
        from ddpm.accel import resolve_device

        self.model.to(resolve_device(device))
        return self

    def __call__(self, num_images: int = 1, *, sampler=None, steps: int | None = None, eta: float | None = None,
                 spacing: str | None = None, class_labels=None, guidance: float | None = None, seed: int = 0,
                 clip_denoised: bool | None = None, batch_size: int = 64, output: str = "pil",
                 progress: bool = False, **options):
        """Draw ``num_images`` images. ``sampler`` (a registry name or a SamplerConfig) and the other
        settings default to the checkpoint's ``config.sampling``; extra keyword arguments are sampler
        options (e.g. ``eta=0.5`` for ddim). ``class_labels``: an int, one int per image, ``"all"``
        (image i gets i % num_classes) or None (the null label). ``guidance`` is w of Ho & Salimans
        (diffusers' ``guidance_scale`` − 1). ``output``: ``pil`` (list of PIL images), ``tensor``
        (float (n, C, H, W) in [−1, 1]) or ``numpy`` (uint8 (n, H, W, C))."""
        from ddpm.images import to_uint8
        from ddpm.sampling.api import generate, sampler_config

        if output not in OUTPUTS:
            raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        from ddpm.sampling.memory import check_sampling_memory

        check_sampling_memory(self.config.model, int(num_images), int(batch_size), guidance=bool(guidance),
                              device=self.device)  # say what fits instead of failing on allocation
        if isinstance(class_labels, str):
            k = getattr(self.config.model, "num_classes", None)
            if class_labels != "all" or k is None:
                raise ConfigError(f"class_labels={class_labels!r}: only 'all' is a word here, and it needs a "
                                  "class-conditional model")
            class_labels = [i % k for i in range(int(num_images))]
        base = self.config.sampling if sampler is None else sampler
        cfg = sampler_config(base, steps=steps, spacing=spacing, guidance=guidance, eta=eta,
                             clip_denoised=clip_denoised, options=options)
        x = generate(self.model, self.diffusion, num_images, batch_size=batch_size, sampler=cfg,
                     class_labels=class_labels, seed=seed, device=self.device, progress=progress)
        if output == "tensor":
            return x
        images = to_uint8(x)
        if output == "numpy":
            return images
        from PIL import Image

        return [Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img) for img in images]

    def __repr__(self) -> str:
        m = self.config.model
        n = sum(p.numel() for p in self.model.parameters())
        d = self.diffusion
        classes = f", {m.num_classes} classes" if getattr(m, "num_classes", None) else ""
        c, h, w = m.image_shape
        return (f"Pipeline({self.source or self.config.preset or '?'}: {m.arch} {c}x{h}x{w}{classes}, "
                f"{n:,} parameters, T={d.num_timesteps}, {self.config.diffusion.mean_type}/"
                f"{self.config.diffusion.var_type}, sampler {self.config.sampling.sampler}, "
                f"{self.weights} weights at step {self.step}, on {self.device})")


def load(path, *, use_ema: bool = True, device=None) -> Pipeline:
    """:meth:`Pipeline.from_pretrained`: the shortest way from a checkpoint to images."""
    return Pipeline.from_pretrained(path, use_ema=use_ema, device=device)
