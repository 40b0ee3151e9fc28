"""Dataclass configs. The whole :class:`Config` is saved inside every checkpoint as JSON, so sampling
and evaluation never need the training flags repeated.

Defaults are the paper's CIFAR-10 setting (spec §5.1, §6); named presets live in :mod:`ddpm.presets`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ddpm.errors import ConfigError

PRECISIONS = ("fp32", "bf16")  # what the network runs in
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what users may ask for: auto picks per device


@dataclass
class UNetConfig:
    """The authors' U-Net (``diffusion_tf/models/unet.py::model``) plus optional class conditioning."""

    in_channels: int = 3
    out_channels: int = 3  # 2 * in_channels for learned variances
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resolution: int = 32
    resamp_with_conv: bool = True
    # Class conditioning (beyond the paper): a label embedding added to the time embedding.
    # Label index ``num_classes`` is the null label used for unconditional / guided sampling.
    num_classes: int | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the network denoises."""
        return (self.in_channels, self.resolution, self.resolution)


@dataclass
class DiffusionConfig:
    """β schedule and the reverse-process parameterisation, with the authors' option names."""

    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_timesteps: int = 1000
    mean_type: str = "eps"  # eps | xstart | xprev
    var_type: str = "fixedlarge"  # fixedlarge | fixedsmall | learned | learned_range
    loss_type: str = "mse"  # mse | kl | hybrid

    def build(self):
        """The :class:`ddpm.diffusion.GaussianDiffusion` this config describes."""
        from ddpm.diffusion import GaussianDiffusion
        from ddpm.schedules import get_beta_schedule

        betas = get_beta_schedule(
            self.schedule,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            num_timesteps=self.num_timesteps,
        )
        return GaussianDiffusion(betas, self.mean_type, self.var_type, self.loss_type)


@dataclass
class TrainConfig:
    """Optimisation recipe (spec §6.1). Defaults: the paper's CIFAR-10 run."""

    lr: float = 2e-4
    adam_eps: float = 1e-8
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 5000
    grad_clip: float = 1.0
    batch_size: int = 128  # global batch, split across DDP ranks
    ema_decay: float = 0.9999
    steps: int = 800_000
    random_flip: bool = True
    timestep_sampler: str = "uniform"  # uniform | loss-second-moment
    class_dropout: float = 0.0  # probability of replacing a label by the null label (for guidance)
    seed: int = 0
    # auto: bf16 autocast on GPUs with bf16 tensor cores (Ampere and later), fp32 elsewhere; the
    # Trainer writes the resolved value into the run's config. bf16 keeps fp32 master weights.
    precision: str = "auto"  # auto | fp32 | bf16
    compile: bool = False
    log_every: int = 100
    sample_every: int = 5000
    ckpt_every: int = 5000
    keep_checkpoints: int = 2
    num_sample_images: int = 64
    sample_steps: int | None = None  # steps of the periodic sample grids (None: the full T-step chain)


@dataclass
class DataConfig:
    """Where the training images come from."""

    source: str = "cifar10"  # digits | folder | cifar10 | mnist
    path: str | None = None
    resolution: int = 32
    channels: int = 3
    class_labels: bool = False  # read labels (CIFAR-10 classes, MNIST digits, sub-folder names)
    split: str = "train"  # train | test
    # Fetch CIFAR-10 / MNIST (checksum-verified) when not found locally; off so nothing downloads
    # unless asked for.
    download: bool = False


@dataclass
class SamplerConfig:
    """How images are drawn: a sampler of :data:`ddpm.sampling.registry.SAMPLERS` and its settings.

    Saved in every checkpoint as the model's default (``ddpm sample`` with no flags uses it; a
    distilled model records the few-step sampler it was made for). Checked once, against the model,
    by :func:`ddpm.sampling.registry.resolve_sampler`.
    """

    sampler: str = "ddpm"  # Algorithm 2: the paper's sampler
    steps: int | None = None  # network steps; None: the sampler's default (all T for ddpm/ddim)
    spacing: str | None = None  # which timesteps K steps visit; None: the sampler's first choice
    guidance: float = 0.0  # classifier-free guidance w (Ho & Salimans 2021); needs class labels
    clip_denoised: bool = True  # clip x̂0 to [-1, 1] inside every step, as the authors
    options: dict = field(default_factory=dict)  # the sampler's own settings, e.g. {"eta": 0.5}


@dataclass
class Config:
    """Everything needed to rebuild a run: network, diffusion, training recipe, data and sampler."""

    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplerConfig = field(default_factory=SamplerConfig)
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return cls(
            model=_from_dict(UNetConfig, d.get("model", {})),
            diffusion=_from_dict(DiffusionConfig, d.get("diffusion", {})),
            train=_from_dict(TrainConfig, d.get("train", {})),
            data=_from_dict(DataConfig, d.get("data", {})),
            sampling=_from_dict(SamplerConfig, d.get("sampling", {})),
            preset=d.get("preset"),
        )

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))


def _from_dict(kind, d: dict[str, Any]):
    """Build dataclass ``kind`` from a JSON dict: lists become tuples, unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(d) - set(names)
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} field(s) {sorted(unknown)}; known: {sorted(names)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings (e.g. ``train.lr=1e-4``, ``model.ch_mult=1,2,2``).

    Values are parsed as JSON where possible; comma lists become tuples. Returns a new Config.
    """
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r} must look like section.field=value, e.g. train.lr=1e-4")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        if section not in ("model", "diffusion", "train", "data") or name not in d[section]:
            raise ConfigError(f"unknown config key {key!r}; sections are model, diffusion, train, data")
        d[section][name] = _parse_value(raw)
    return Config.from_dict(d)


def _parse_value(raw: str):
    if "," in raw and not raw.strip().startswith("["):
        return tuple(_parse_value(p) for p in raw.split(",") if p != "")
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if raw.lower() in ("none", "null"):
            return None
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        return raw
