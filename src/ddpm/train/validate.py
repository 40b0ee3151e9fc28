"""Checks a :class:`Config` before anything is built, so that mistakes give one clear line."""

from __future__ import annotations

import dataclasses

from ddpm.config import PRECISION_CHOICES, Config
from ddpm.errors import ConfigError

_OPTIONAL = {("model", "num_classes"): int, ("data", "path"): str, ("train", "sample_steps"): int}


def _check_types(cfg: Config) -> None:
    """Each field must have the type of its default (ints where ints belong, and so on)."""
    for section in ("model", "diffusion", "train", "data"):
        obj = getattr(cfg, section)
        default = type(obj)()
        for f in dataclasses.fields(obj):
            value, ref, key = getattr(obj, f.name), getattr(default, f.name), f"{section}.{f.name}"
            if (section, f.name) in _OPTIONAL:
                if value is not None and (type(value) is not _OPTIONAL[(section, f.name)]):
                    raise ConfigError(f"{key} must be {_OPTIONAL[(section, f.name)].__name__} or null, "
                                      f"got {value!r}")
                continue
            if isinstance(ref, bool):
                ok = isinstance(value, bool)
            elif isinstance(ref, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(ref, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if ok:
                    setattr(obj, f.name, float(value))
            elif isinstance(ref, tuple):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = (value,)  # "model.attn_resolutions=16" means a one-element tuple
                    setattr(obj, f.name, value)
                ok = isinstance(value, tuple) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            else:
                ok = isinstance(value, type(ref))
            if not ok:
                raise ConfigError(f"{key} must be of type {type(ref).__name__} like {ref!r}, got {value!r}")


def validate_config(cfg: Config) -> Config:
    """Raise ConfigError naming the first invalid or inconsistent setting; returns ``cfg``."""
    _check_types(cfg)
    t, m, d = cfg.train, cfg.model, cfg.data
    positive = {"train.batch_size": t.batch_size, "train.steps": t.steps, "train.lr": t.lr,
                "train.log_every": t.log_every, "model.ch": m.ch, "model.resolution": m.resolution,
                "model.in_channels": m.in_channels, "model.out_channels": m.out_channels,
                "data.resolution": d.resolution, "data.channels": d.channels,
                "diffusion.num_timesteps": cfg.diffusion.num_timesteps}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    non_negative = {"train.warmup": t.warmup, "train.grad_clip": t.grad_clip,
                    "train.sample_every": t.sample_every, "train.ckpt_every": t.ckpt_every,
                    "train.keep_checkpoints": t.keep_checkpoints, "train.num_sample_images": t.num_sample_images,
                    "model.num_res_blocks": m.num_res_blocks}
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if not 0.0 <= t.class_dropout < 1.0:
        raise ConfigError(f"train.class_dropout must be in [0, 1), got {t.class_dropout}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if t.precision not in PRECISION_CHOICES:
        raise ConfigError(f"train.precision must be {', '.join(PRECISION_CHOICES[:-1])} or {PRECISION_CHOICES[-1]}, "
                          f"got {t.precision!r}")
    if m.in_channels != d.channels:
        raise ConfigError(f"model.in_channels={m.in_channels} but data.channels={d.channels}; make them equal")
    if m.resolution != d.resolution:
        raise ConfigError(f"model.resolution={m.resolution} but data.resolution={d.resolution}; make them equal")
    if m.num_classes is not None:
        if m.num_classes <= 0:
            raise ConfigError(f"model.num_classes must be positive or null, got {m.num_classes}")
        if not d.class_labels:
            raise ConfigError("model.num_classes is set but data.class_labels is false; "
                              "set data.class_labels=true (or model.num_classes=null)")
    elif t.class_dropout > 0:
        raise ConfigError("train.class_dropout > 0 needs a class-conditional model (set model.num_classes)")
    from ddpm.resample import create_timestep_sampler

    create_timestep_sampler(t.timestep_sampler, cfg.diffusion.num_timesteps)
    return cfg
