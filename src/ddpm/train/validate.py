"""Checks a :class:`Config` before anything is built, so that mistakes give one clear line."""

from __future__ import annotations

import dataclasses
import math

from ddpm.config import SECTIONS, TRAIN_PRECISION_CHOICES, Config
from ddpm.errors import ConfigError

_OPTIONAL = {("model", "num_classes"): int, ("data", "path"): str, ("train", "sample_steps"): int,
             ("sampling", "steps"): int, ("sampling", "spacing"): str}


def _check_types(cfg: Config) -> None:
    """Each field must have the type of its default (ints where ints belong, and so on)."""
    for section in SECTIONS:
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
    """Raise ConfigError naming the first invalid or inconsistent setting; returns the config with its
    derived fields recomputed (so a Config mutated after construction is consistent again)."""
    _check_types(cfg)
    cfg = dataclasses.replace(cfg)  # re-derive the network's image shape, classes and output channels
    t, m, d = cfg.train, cfg.model, cfg.data
    m.validate()
    positive = {"train.batch_size": t.batch_size, "train.steps": t.steps, "train.lr": t.lr,
                "train.log_every": t.log_every, "data.resolution": d.resolution, "data.channels": d.channels,
                "diffusion.num_timesteps": cfg.diffusion.num_timesteps}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    non_negative = {"train.warmup": t.warmup, "train.grad_clip": t.grad_clip,
                    "train.sample_every": t.sample_every, "train.ckpt_every": t.ckpt_every,
                    "train.keep_checkpoints": t.keep_checkpoints, "train.num_sample_images": t.num_sample_images}
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if not 0.0 <= t.class_dropout < 1.0:
        raise ConfigError(f"train.class_dropout must be in [0, 1), got {t.class_dropout}")
    if t.precision not in TRAIN_PRECISION_CHOICES:
        raise ConfigError(f"train.precision must be {', '.join(TRAIN_PRECISION_CHOICES[:-1])} or "
                          f"{TRAIN_PRECISION_CHOICES[-1]}, got {t.precision!r}")
    _check_training_knobs(t)
    if d.class_labels and m.num_classes is None:
        raise ConfigError(f"data.class_labels is set but data source {d.source!r} does not say how many classes "
                          "there are; set model.num_classes to the number of class sub-folders")
    if m.num_classes is None and t.class_dropout > 0:
        raise ConfigError("train.class_dropout > 0 needs class labels (set data.class_labels=true)")
    _check_ranges(cfg)
    from ddpm.sampling.registry import resolve_sampler

    resolve_sampler(cfg.sampling, cfg.diffusion.num_timesteps, num_classes=m.num_classes, labels=True)
    from ddpm.train.timesteps import create_timestep_sampler

    create_timestep_sampler(t.timestep_sampler, cfg.diffusion.num_timesteps)
    from ddpm.train.objectives import get_objective, resolve_options

    resolve_options(get_objective(t.objective), t.objective_options)
    return cfg


# Upper bounds of existing fields (issue 17): values past them fail at once instead of hanging,
# crashing or overflowing minutes later.
SEED_LIMIT = 2**32  # train.seed also seeds NumPy's legacy generator, which takes 0 <= seed < 2**32
MAX_BATCH = 1 << 20  # a global batch of a million images is already far beyond one machine's memory


def _check_ranges(cfg: Config) -> None:
    """Every float finite, seeds within the generators' range, sizes within reason."""
    for section in SECTIONS:
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))) for v in values):
                raise ConfigError(f"{section}.{f.name} must be a finite number, got {value!r}")
    t = cfg.train
    if not 0 <= t.seed < SEED_LIMIT:
        raise ConfigError(f"train.seed must be in 0..{SEED_LIMIT - 1} (NumPy's seed range), got {t.seed}")
    if t.batch_size > MAX_BATCH:
        raise ConfigError(f"train.batch_size must be at most {MAX_BATCH:,}, got {t.batch_size:,}")
    if t.num_sample_images > MAX_BATCH:
        raise ConfigError(f"train.num_sample_images must be at most {MAX_BATCH:,}, got {t.num_sample_images:,}")
    if not 0.0 <= t.adam_betas[0] < 1.0 or not 0.0 <= t.adam_betas[-1] < 1.0 or len(t.adam_betas) != 2:
        raise ConfigError(f"train.adam_betas must be two numbers in [0, 1), got {t.adam_betas}")
    if t.adam_eps <= 0:
        raise ConfigError(f"train.adam_eps must be positive, got {t.adam_eps}")


# ----------------------------------------------------------------------------- training knobs
# Settings beyond the paper's recipe (ddpm.train.optim, ddpm.train.loop_io): gradient accumulation,
# learning-rate decay, weight decay, time-based checkpoints.
def _check_training_knobs(t) -> None:
    from ddpm.train.optim import LR_SCHEDULES

    if t.grad_accum < 1:
        raise ConfigError(f"train.grad_accum must be >= 1 (micro-batches per step), got {t.grad_accum}")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}: "
                          "each global batch is split into grad_accum equal micro-batches")
    if t.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {t.lr_schedule!r}")
    if not (math.isfinite(t.lr_final_ratio) and 0.0 <= t.lr_final_ratio <= 1.0):
        raise ConfigError(f"train.lr_final_ratio must be in [0, 1] (a fraction of train.lr), got {t.lr_final_ratio}")
    if not (math.isfinite(t.weight_decay) and t.weight_decay >= 0.0):
        raise ConfigError(f"train.weight_decay must be a finite number >= 0, got {t.weight_decay}")
    if not (math.isfinite(t.ckpt_minutes) and t.ckpt_minutes >= 0.0):
        raise ConfigError(f"train.ckpt_minutes must be a finite number >= 0 (0: no time-based checkpoints), "
                          f"got {t.ckpt_minutes}")
