"""Classifier guidance (Dhariwal & Nichol 2021, §4, Algorithms 1 and 2) as a model wrapper.

A noise-aware classifier p_φ(y | x_t, t) (:mod:`ddpm.models.classifier`) steers any diffusion model
towards class y with scale s through the gradient g = s·∇_{x_t} log p_φ(y | x_t, t):

- **Algorithm 2** (the score view, for DDIM and every sampler whose step is a function of the
  model's ε̂): ε̂ = ε_θ(x_t) − √(1 − ᾱ_t)·g. Calling the wrapper returns the model's output with this
  shift applied *in the model's own parameterisation* (ε, x̂0, v or the posterior mean, each the same
  shift of ε for fixed x_t), so DDIM, the consistency sampler and any later ε̂-based solver are guided
  exactly.
- **Algorithm 1** (ancestral sampling): the mean is shifted, μ + s·Σ·∇ log p_φ, after μ is formed from
  the (clipped) x̂0. The wrapper offers this through :attr:`ClassifierGuidance.mean_shift`, which the
  ``ddpm`` sampler uses (:meth:`ddpm.diffusion.GaussianDiffusion.p_sample`'s ``cond_fn``), exactly as
  guided-diffusion's ``p_sample(cond_fn=...)``.

The gradient is taken inside the samplers' ``torch.no_grad()`` by enabling autograd locally, on a
detached copy of x_t; only the classifier's forward and backward run with autograd.

Labels: the requested class ``y`` (``model_kwargs["y"]``) always reaches the classifier; it reaches
the diffusion model only when ``condition_model`` is true and the model is class-conditional. With
``condition_model=False`` a class-conditional model is called with the null label, i.e. it draws
unconditional samples that only the classifier steers. Classifier-free guidance composes: wrap the
CFG model (:class:`ddpm.sampling.guidance.ClassifierFreeGuidance`) with this one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ddpm.errors import ConfigError


def _eps_shift_tables(diffusion) -> dict[str, np.ndarray]:
    """How a shift δε = −√(1−ᾱ_t)·g of ε moves each mean type's output, per unit of g."""
    ac = diffusion.alphas_cumprod
    return {
        "cg_eps": -np.sqrt(1.0 - ac),
        "cg_xstart": (1.0 - ac) / np.sqrt(ac),        # x̂0 = (x_t − √(1−ᾱ) ε) / √ᾱ
        "cg_v": -np.sqrt((1.0 - ac) / ac),            # v = √ᾱ ε − √(1−ᾱ) x̂0
        "cg_xprev": diffusion.betas / np.sqrt(diffusion.alphas),  # μ = (x_t − β/√(1−ᾱ) ε) / √α
    }


class ClassifierGuidance:
    """``model(x, t, y=labels)`` → the classifier-guided output (Algorithm 2 form).

    ``diffusion`` is the model's full (not respaced) diffusion: the wrapper is called with original
    timesteps. ``classifier(x_t, t)`` returns logits; ``scale`` is s ≥ 0.
    """

    def __init__(self, model, classifier, scale: float, diffusion, *, data_channels: int,
                 condition_model: bool = True, model_num_classes: int | None = None):
        scale = float(scale)
        if not scale >= 0 or scale == float("inf"):
            raise ConfigError(f"classifier scale must be a finite number ≥ 0, got {scale}")
        self.model, self.classifier, self.scale, self.diffusion = model, classifier, scale, diffusion
        self.data_channels = int(data_channels)
        self.pass_labels = bool(condition_model) and model_num_classes is not None
        diffusion.add_tables(_eps_shift_tables(diffusion))
        self.shift_table = f"cg_{diffusion.mean_type}"
        self._sigma_view = None  # built on the first call between code steps, then reused

    # -------------------------------------------------------------------------------- pieces
    def base(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """The diffusion model alone, with the labels routed as the class docstring says."""
        if self.pass_labels:
            return self.model(x, t, y=y, **kwargs)
        return self.model(x, t, **kwargs)

    def gradient(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """s·∇_x log p_φ(y | x, t) (guided-diffusion's ``cond_fn``), computed with autograd enabled."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = self.classifier(x_in, t)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least fp32 for the softmax
            chosen = F.log_softmax(logits, dim=-1).gather(1, y.long().view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(chosen, x_in)
        return (self.scale * grad).to(x.dtype)

    def cond_fn(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs):
        """Algorithm 1's gradient for a mean shift μ + Σ·cond_fn; zero without labels or scale."""
        if y is None or self.scale == 0.0:
            return torch.zeros_like(x)
        return self.gradient(x, t, y)

    @property
    def mean_shift(self):
        """(unguided model, cond_fn) for samplers that shift the mean themselves (Algorithm 1)."""
        return self.base, self.cond_fn

    def _shift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The per-unit-g shift of the output at code timesteps ``t``. The σ-grid solvers call the model
        between code steps (fractional t); there ᾱ is the σ view's (log σ linear in t), the same ᾱ the
        solver itself uses, and the shift is formed from it (posterior-mean models are only ever called
        on the grid)."""
        if not torch.is_floating_point(t):
            return self.diffusion.gather(self.shift_table, t, x)
        if bool((t == t.round()).all()):
            return self.diffusion.gather(self.shift_table, t.round().long(), x)
        if self._sigma_view is None:
            from ddpm.sampling.continuous import SigmaView

            self._sigma_view = SigmaView(self.diffusion)
        sigma = torch.as_tensor(self._sigma_view.t_to_sigma(t.detach().cpu().double().numpy()))
        ab = 1.0 / (1.0 + sigma**2)
        coef = {"eps": -torch.sqrt(1.0 - ab), "xstart": (1.0 - ab) / torch.sqrt(ab), "v": -sigma}
        if self.diffusion.mean_type not in coef:
            raise ConfigError(f"classifier guidance of a {self.diffusion.mean_type!r} model needs integer timesteps")
        return coef[self.diffusion.mean_type].to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))

    # -------------------------------------------------------------------------------- Algorithm 2
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        out = self.base(x, t, y, **kwargs)
        if y is None or self.scale == 0.0:
            return out
        g = self.gradient(x, t, y)
        c = self.data_channels
        shifted = out[:, :c] + self._shift(t, x) * g
        return shifted if out.shape[1] == c else torch.cat([shifted, out[:, c:]], dim=1)


def load_classifier(path, diffusion, device="cpu"):
    """The EMA network of a ``classifier`` checkpoint, checked to share ``diffusion``'s noise schedule
    (the classifier's t must mean the model's t)."""
    from ddpm.checkpoint import load_checkpoint

    ck = load_checkpoint(path, device=device)
    if getattr(ck.config.model, "arch", None) != "classifier":
        raise ConfigError(f"--classifier {path} is a {getattr(ck.config.model, 'arch', '?')!r} checkpoint, not a "
                          "noisy classifier (train one with `ddpm train --preset digits-classifier`)")
    theirs = ck.diffusion.alphas_cumprod
    ours = getattr(diffusion, "alphas_cumprod", None)
    if ours is None or len(theirs) != len(ours) or not np.allclose(theirs, ours, rtol=1e-6, atol=0):
        raise ConfigError(f"--classifier {path} was trained on another noise schedule (T={len(theirs)}) than this "
                          f"model (T={len(ours) if ours is not None else '?'}); train it on the model's diffusion")
    ck.model.requires_grad_(False)
    return ck.model


__all__ = ["ClassifierGuidance", "load_classifier"]
