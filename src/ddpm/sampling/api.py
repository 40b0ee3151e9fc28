"""The two ways in: :func:`sample` (from a given x_T) and :func:`generate` (n images from a seed).

Both dispatch through the sampler registry (:mod:`ddpm.sampling.registry`), check the sampler settings
once (:func:`ddpm.sampling.registry.resolve_sampler`) and compose the network call with classifier-free
guidance, classifier guidance and the fast path, so every registered sampler gets them. ``generate`` is
what ``ddpm sample``, ``ddpm eval``, the figures and the trainer's sample grids use: it draws image i's
x_T and step noise from its own generator (:class:`ddpm.sampling.noise.PerImageNoise`), so image i
depends only on (seed, i) and the sampler settings, not on the batch size or the number of processes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import torch

from ddpm.config import SamplerConfig
from ddpm.errors import ConfigError
from ddpm.sampling.guidance import ClassifierFreeGuidance
from ddpm.sampling.noise import GeneratorNoise, PerImageNoise, image_generator
from ddpm.models.registry import noise_shape
from ddpm.sampling.registry import ResolvedSampler, resolve_sampler

__all__ = ["generate", "sample", "sampler_config", "FAST_SAMPLER", "PerImageNoise", "image_generator"]

# The measured fast default (`ddpm sample --fast`): on the shipped digits model DPM-Solver++(2M) at 10
# logSNR steps scores FD 0.73 (n = 500, seed 0; 5 steps 0.80), as good as the model's probability-flow
# ODE solved adaptively (0.79 in 59.9 calls) but 1.3x Algorithm 2 at 1000 (0.55 ± 0.02 over three sets),
# the gap every deterministic sampler of this model shows (docs/quality.md; docs/sampling.md, "Fast
# samplers on the digits model"); 10 keep a margin for larger models. Algorithm 2 stays the default.
FAST_SAMPLER = SamplerConfig(sampler="dpmpp-2m", steps=10, spacing="logsnr")


def sampler_config(sampler: str | SamplerConfig = "ddpm", *, steps: int | None = None, spacing: str | None = None,
                   guidance: float | None = None, clip_denoised: bool | None = None, eta: float | None = None,
                   options: dict | None = None) -> SamplerConfig:
    """A :class:`SamplerConfig` from a name or a base config, with the given fields overriding it.

    ``eta`` is shorthand for ``options={"eta": eta}`` (DDIM's η).
    """
    base = sampler if isinstance(sampler, SamplerConfig) else SamplerConfig(sampler=str(sampler))
    opts = dict(base.options or {})
    if options:
        opts.update(options)
    if eta is not None:
        opts["eta"] = eta
    return SamplerConfig(
        sampler=base.sampler,
        steps=base.steps if steps is None else steps,
        spacing=base.spacing if spacing is None else spacing,
        guidance=base.guidance if guidance is None else guidance,
        clip_denoised=base.clip_denoised if clip_denoised is None else clip_denoised,
        options=opts,
    )


def _model_config(model):
    """The network's config (through guidance / fast-path / DDP wrappers), or None."""
    for _ in range(8):
        cfg = getattr(model, "config", None)
        if cfg is not None:
            return cfg
        model = getattr(model, "model", None) or getattr(model, "module", None)
        if model is None:
            return None
    return None


def _latent(model, cfg):
    """The latent model inside ``model`` (None for pixel models); autoencoders do not sample."""
    if getattr(cfg, "arch", None) == "autoencoder":
        raise ConfigError("an autoencoder does not generate images; use it as model.autoencoder of a latent "
                          "model (model.arch=latent)")
    if getattr(cfg, "arch", None) != "latent":
        return None
    from ddpm.models.latent import find_latent_model

    return find_latent_model(model)


def _guided(net, resolved: ResolvedSampler, num_classes: int | None, channels: int, diffusion=None,
            classifier=None, classifier_scale: float = 0.0, condition_model: bool = True):
    if resolved.guidance > 0:
        if not condition_model:
            raise ConfigError("classifier-free guidance conditions the model on the class; it cannot be combined "
                              "with the null label for the model (drop --guidance or --model-null-label)")
        net = ClassifierFreeGuidance(net, resolved.guidance, null_label=num_classes, data_channels=channels)
    if classifier is not None:
        from ddpm.sampling.classifier_guidance import ClassifierGuidance

        net = ClassifierGuidance(net, classifier, classifier_scale, diffusion, data_channels=channels,
                                 condition_model=condition_model, model_num_classes=num_classes)
    return net


def _label_classes(num_classes: int | None, classifier, condition_model: bool) -> int | None:
    """How many classes the requested labels index: the classifier's when it guides, else the model's."""
    if classifier is None:
        return num_classes
    theirs = _model_config(classifier).num_classes
    if condition_model and num_classes is not None and num_classes != theirs:
        raise ConfigError(f"the classifier has {theirs} classes but the model {num_classes}; pass "
                          "--model-null-label to guide the model's unconditional samples")
    return theirs


def sample(model, diffusion, x_T: torch.Tensor, sampler: str | SamplerConfig | ResolvedSampler = "ddpm", *,
           steps: int | None = None, spacing: str | None = None, guidance: float | None = None,
           clip_denoised: bool | None = None, generator: torch.Generator | None = None,
           noise: Callable | None = None, model_kwargs: dict | None = None, callback: Callable | None = None,
           progress: bool = False, t_start: int | None = None, classifier=None, classifier_scale: float = 0.0,
           condition_model: bool = True, **options) -> torch.Tensor:
    """Run a registered sampler from the given starting noise ``x_T``; returns x_0 (not clamped).

    ``sampler``: a registry name (``ddpm``, ``ddim``, …), a :class:`SamplerConfig` or an already
    resolved sampler; ``steps``/``spacing``/``guidance``/``clip_denoised`` and sampler ``options``
    (e.g. ``eta=0.5``) override its fields. Step noise comes from ``noise(t)`` if given, else from
    ``generator`` (else the global RNG). ``model_kwargs`` are passed to every network call (e.g.
    ``{"y": labels}``); guidance needs them. ``callback(info)`` is called after every step. With the
    same ``x_T`` and noise this computes exactly what another library's sampler does, so results
    can be compared on the same starting point.

    For a latent model (``model.arch = "latent"``) ``x_T`` and the result are latents (decode them with
    the model's ``decode_latents``), and x̂0 is never clipped: latents have no [−1, 1] range.

    ``classifier``/``classifier_scale``/``condition_model``: classifier guidance towards
    ``model_kwargs["y"]``, as in :func:`generate`.
    """
    cfg = _model_config(model)
    num_classes = getattr(cfg, "num_classes", None)
    if isinstance(sampler, ResolvedSampler):
        resolved = sampler
    else:
        config = sampler_config(sampler, steps=steps, spacing=spacing, guidance=guidance,
                                clip_denoised=clip_denoised, options=options)
        labels = bool(model_kwargs) and model_kwargs.get("y") is not None
        resolved = resolve_sampler(config, diffusion.num_timesteps, num_classes=num_classes, labels=labels,
                                   t_start=t_start)
    if _latent(model, cfg) is not None:
        resolved = dataclasses.replace(resolved, clip_denoised=False)
    if classifier is not None and not (model_kwargs and model_kwargs.get("y") is not None):
        raise ConfigError("classifier guidance needs the classes to guide towards: model_kwargs={'y': labels}")
    net = _guided(model, resolved, num_classes, x_T.shape[1], diffusion, classifier, classifier_scale,
                  condition_model)
    source = noise if noise is not None else GeneratorNoise(x_T, generator)
    with torch.no_grad():
        return resolved(net, diffusion, x_T, noise=source, model_kwargs=model_kwargs, callback=callback,
                        progress=progress, t_start=t_start)


def generate(model, diffusion, num_images: int, *, batch_size: int = 64,
             sampler: str | SamplerConfig = "ddpm", steps: int | None = None, eta: float | None = None,
             spacing: str | None = None, class_labels=None, guidance: float | None = None,
             clip_denoised: bool | None = None, seed: int = 0, device=None, progress: bool = False,
             rank: int = 0, world_size: int = 1, image_shape: Sequence[int] | None = None, fast=None,
             options: dict | None = None, first_index: int = 0, classifier=None, classifier_scale: float = 0.0,
             condition_model: bool = True) -> torch.Tensor:
    """Sample ``num_images`` images; returns float32 (n, C, H, W) in [−1, 1] on the CPU.

    - ``sampler``: a registry name or a :class:`SamplerConfig` (e.g. a checkpoint's
      ``config.sampling``); ``steps``, ``spacing``, ``guidance``, ``clip_denoised``, ``eta`` and
      ``options`` override its fields. ``ddpm`` with all steps is the paper's Algorithm 2.
    - ``class_labels``: an int (every image that class), a sequence/tensor of length n (label of
      global image i), or None (the null label on a conditional model; unconditional models).
    - ``guidance``: classifier-free guidance w (ε̃ = (1+w)ε(x,c) − wε(x,∅)); needs a conditional
      model and labels.
    - ``rank``/``world_size``: return only the images i with i % world_size == rank, in order.
    - ``image_shape``: (C, H, W) for models without a ``config`` (otherwise read from it).
    - ``fast``: an optional :class:`ddpm.accel.FastPath` (channels_last, bf16 autocast, compile,
      CUDA graphs) applied to the network call; None runs the plain fp32 model.
    - ``first_index``: draw images first_index … first_index + n − 1 of the seed's stream (so two
      calls of n images, the second from n, give what one call of 2n gives); ``class_labels`` and
      the returned tensor are indexed from 0 all the same.
    - ``classifier``: a noise-aware classifier network (:func:`ddpm.sampling.classifier_guidance.load_classifier`)
      guiding towards ``class_labels`` with scale ``classifier_scale`` (Dhariwal & Nichol 2021: the
      ``ddpm`` sampler shifts the mean, Algorithm 1; the others use the shifted ε̂, Algorithm 2). The
      model sees the labels too unless ``condition_model=False`` (then a conditional model gets its null
      label; an unconditional model never sees labels).

    A latent model (``model.arch = "latent"``) samples its latents (never clipping x̂0: latents have no
    [−1, 1] range) and returns them decoded: images, like a pixel model.

    Image i depends only on (seed, i) and the sampler settings, not on batch_size or world_size.
    """
    T = diffusion.num_timesteps
    cfg = _model_config(model)
    if getattr(cfg, "arch", None) == "classifier":
        raise ConfigError("a noisy classifier does not draw images; pass it as --classifier (classifier=) to a "
                          "diffusion model")
    latent = _latent(model, cfg)
    if latent is not None and classifier is not None:
        raise ConfigError("classifier guidance needs a classifier of the model's own inputs; a latent model's "
                          "x_t are latents, which the pixel classifiers of this project do not take")
    if image_shape is None:
        if cfg is None:
            raise ConfigError("generate needs image_shape=(C, H, W) for a model without a .config")
        image_shape = cfg.image_shape
    image_shape = tuple(int(s) for s in image_shape)
    shape = noise_shape(cfg) if latent is not None else image_shape  # what the diffusion draws
    num_classes = getattr(cfg, "num_classes", None) if cfg is not None else None

    n = _check_int("num_images", num_images, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    first_index = _check_int("first_index", first_index, 0)
    world_size = _check_int("world_size", world_size, 1)
    if not 0 <= int(rank) < world_size:
        raise ConfigError(f"rank must be in 0..{world_size - 1}, got {rank}")
    config = sampler_config(sampler, steps=steps, spacing=spacing, guidance=guidance,
                            clip_denoised=clip_denoised, eta=eta, options=options)
    if latent is not None:
        config = dataclasses.replace(config, clip_denoised=False)
    resolved = resolve_sampler(config, T, num_classes=num_classes, labels=class_labels is not None)
    if classifier is not None and class_labels is None:
        raise ConfigError("classifier guidance needs the classes to guide towards: pass --class C (or class_labels)")
    labels = _labels(class_labels, n, _label_classes(num_classes, classifier, condition_model))

    if device is None:
        param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if isinstance(model, torch.nn.Module):
        model.to(device)
    if classifier is not None:
        classifier.to(device).eval()

    draws = resolved.noise_draws(T)
    net = model
    if fast is not None and isinstance(model, torch.nn.Module):
        from ddpm.accel import wrap_for_sampling

        net = wrap_for_sampling(model, fast, device)
    net = _guided(net, resolved, num_classes, shape[0], diffusion, classifier, classifier_scale, condition_model)

    local = list(range(int(rank), n, world_size))
    out = []
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(local), batch_size):
                idx = local[start:start + batch_size]
                noise = PerImageNoise([image_generator(seed, first_index + i, device) for i in idx], shape,
                                      draws, device)
                x_T = noise.initial()
                kwargs = None if labels is None else {"y": labels[idx].to(device)}
                x = resolved(net, diffusion, x_T, noise=noise, model_kwargs=kwargs, progress=progress)
                if latent is not None:
                    x = latent.decode_latents(x)
                out.append(x.float().clamp(-1.0, 1.0).cpu())
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    if not out:
        return torch.empty((0,) + image_shape)
    return torch.cat(out)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < low:
        raise ConfigError(f"{name} must be an integer ≥ {low}, got {value!r}")
    return int(value)


def _labels(class_labels, n: int, num_classes: int | None) -> torch.Tensor | None:
    """Labels of all n global images as a LongTensor, the null label for None, or None if unconditional."""
    if class_labels is None:
        return None if num_classes is None else torch.full((n,), num_classes, dtype=torch.long)
    if num_classes is None:
        raise ConfigError("class labels need a class-conditional model; this one has no "
                          "model.num_classes, drop --class")
    if isinstance(class_labels, (int, np.integer)) and not isinstance(class_labels, bool):
        labels = torch.full((n,), int(class_labels), dtype=torch.long)
    else:
        labels = torch.as_tensor(class_labels)
        labels = labels.expand(n) if labels.ndim == 0 else labels.reshape(-1)  # a 0-d tensor: one class
        if labels.is_floating_point() or labels.numel() != n:
            raise ConfigError(f"class_labels must be one int or {n} ints (one per image), "
                              f"got {labels.numel()} values")
        labels = labels.long()
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ConfigError(f"class labels must be in 0..{num_classes - 1}, got "
                          f"{int(labels.min())}..{int(labels.max())}")
    return labels
