"""Dataclass configs. The whole :class:`Config` is saved inside every checkpoint as JSON, so sampling
and evaluation never need the training flags repeated.

Defaults are the paper's CIFAR-10 setting (Ho et al. 2020, §4 and App. B); named presets live in
:mod:`ddpm.presets`. The network's config is the dataclass of its architecture (``model.arch``, see
:mod:`ddpm.models.registry`); its image shape, class count and output channels are derived from the data
and the diffusion when a :class:`Config` is built, so they are never set twice.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ddpm.errors import ConfigError

LEARNED_VARIANCES = ("learned", "learned_range")
PRECISIONS = ("fp32", "bf16")  # what the network runs in
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what users may ask for: auto picks per device
# Training may also use fp16 autocast with a loss scaler (CUDA only: for GPUs without bf16 tensor cores).
TRAIN_PRECISIONS = (*PRECISIONS, "fp16")
TRAIN_PRECISION_CHOICES = ("auto", *TRAIN_PRECISIONS)


@dataclass
class DiffusionConfig:
    """β schedule and the reverse-process parameterisation, with the authors' option names."""

    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_timesteps: int = 1000
    mean_type: str = "eps"  # eps | xstart | xprev | v
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
    """Optimisation recipe (Ho et al. 2020, App. B). Defaults: the paper's CIFAR-10 run."""

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
    # Trainer writes the resolved value into the run's config. bf16 keeps fp32 master weights;
    # fp16 (CUDA only) adds a loss scaler (ddpm.train.optim).
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    log_every: int = 100
    sample_every: int = 5000
    ckpt_every: int = 5000
    ckpt_minutes: float = 30.0  # also checkpoint every N minutes of wall time (0: off)
    keep_checkpoints: int = 2
    num_sample_images: int = 64
    sample_steps: int | None = None  # steps of the periodic sample grids (None: the full T-step chain)
    # What a step minimises (ddpm.train.objectives): "diffusion" is the paper's loss (diffusion.loss_type);
    # other entries train classifiers, distilled students, autoencoders with the same loop.
    objective: str = "diffusion"
    objective_options: dict = field(default_factory=dict)
    # Knobs beyond the paper (ddpm.train.optim); the defaults are the paper's recipe.
    grad_accum: int = 1  # split each global batch into this many micro-batches (same update, less memory)
    lr_schedule: str = "constant"  # constant | cosine | linear decay after the warm-up, to train.steps
    lr_final_ratio: float = 0.0  # the decayed rate at train.steps, as a fraction of train.lr
    weight_decay: float = 0.0  # > 0: AdamW (decoupled weight decay) instead of Adam


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

    model: Any = field(default_factory=lambda: _registry().default_model_config())
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplerConfig = field(default_factory=SamplerConfig)
    preset: str | None = None
    # Set on weights imported from elsewhere (``ddpm convert``): what they came from. Such a checkpoint
    # records no training recipe or dataset of its own; ``train``/``data`` then hold defaults only.
    imported_from: str | None = None

    def __post_init__(self):
        # The network follows the data and the diffusion: image shape and labels from ``data``, doubled
        # output channels from a learned variance. Derived here so they are never set twice.
        self.model = self.model.with_data(channels=self.data.channels, resolution=self.data.resolution,
                                          num_classes=data_num_classes(self.data, self.model),
                                          learn_sigma=self.diffusion.var_type in LEARNED_VARIANCES)
        # Networks whose parameterisation depends on the noise schedule (a consistency model's
        # boundary coefficients) take it from the diffusion, again so it is never set twice.
        if hasattr(self.model, "with_diffusion"):
            self.model = self.model.with_diffusion(self.diffusion)

    @classmethod
    def for_network(cls, model, diffusion: DiffusionConfig | None = None, **kw) -> "Config":
        """A Config around an existing network config (e.g. imported weights): data of its shape."""
        c, h, _ = model.image_shape
        source = "cifar10" if (c, h) == (3, 32) else "folder"
        data = DataConfig(source=source, resolution=h, channels=c, class_labels=model.num_classes is not None)
        cfg = cls(model=model, diffusion=diffusion or DiffusionConfig(), data=data, **kw)
        if cfg.model != model:  # e.g. a learned-variance network paired with a fixed-variance schedule
            diff = [f.name for f in dataclasses.fields(model) if getattr(model, f.name) != getattr(cfg.model, f.name)]
            raise ConfigError(f"the network does not fit its diffusion settings ({', '.join(diff)}: "
                              f"{[getattr(model, k) for k in diff]} vs {[getattr(cfg.model, k) for k in diff]}); "
                              f"check var_type={cfg.diffusion.var_type!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return cls(
            model=_registry().model_config_from_dict(d.get("model", {})),
            diffusion=_from_dict(DiffusionConfig, d.get("diffusion", {})),
            train=_from_dict(TrainConfig, d.get("train", {})),
            data=_from_dict(DataConfig, d.get("data", {})),
            sampling=_from_dict(SamplerConfig, d.get("sampling", {})),
            preset=d.get("preset"),
            imported_from=d.get("imported_from"),
        )

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))


# Network fields that Config derives from data/diffusion, with the setting to change instead.
DERIVED_MODEL_FIELDS = {"in_channels": "data.channels", "resolution": "data.resolution",
                        "out_channels": "diffusion.var_type", "num_classes": "data.class_labels",
                        # a consistency model's copy of the noise schedule
                        "schedule": "diffusion.schedule", "beta_start": "diffusion.beta_start",
                        "beta_end": "diffusion.beta_end", "num_timesteps": "diffusion.num_timesteps"}


def _registry():
    from ddpm.models import registry

    return registry


def data_num_classes(data: DataConfig, model=None) -> int | None:
    """How many classes a model trained on ``data`` distinguishes: None without labels, the source's
    count for built-in data sets, and the model's own setting for folders (their sub-folders)."""
    if not data.class_labels:
        return None
    from ddpm.data.load import source_num_classes

    known = source_num_classes(data.source)
    return known if known is not None else getattr(model, "num_classes", None)


def __getattr__(name: str):
    # The U-Net's config lives with the network since the model factory (ddpm.models.unet); this alias
    # keeps ``from ddpm.config import UNetConfig`` working for one release.
    if name == "UNetConfig":
        from ddpm.models.unet import UNetConfig

        return UNetConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _from_dict(kind, d: dict[str, Any]):
    """Build dataclass ``kind`` from a JSON dict: lists become tuples, unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(d) - set(names)
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} field(s) {sorted(unknown)}; known: {sorted(names)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


SECTIONS = ("model", "diffusion", "train", "data", "sampling")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings (e.g. ``train.lr=1e-4``, ``model.ch_mult=1,2,2``,
    ``sampling.options.eta=0.5``, ``train.objective_options.NAME=value``).

    Values are parsed as JSON where possible; comma lists become tuples. Returns a new Config.
    Derived network fields (image shape, classes, output channels) are refused with the setting to
    change instead; ``model.arch`` switches the network (its other fields then start from defaults).
    """
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r} must look like section.field=value, e.g. train.lr=1e-4")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        if section == "sampling" and name.startswith("options."):
            d["sampling"]["options"][name.split(".", 1)[1]] = _parse_value(raw)
            continue
        if section == "train" and name.startswith("objective_options."):
            d["train"]["objective_options"][name.split(".", 1)[1]] = _parse_value(raw)
            continue
        if section == "model" and name == "arch":
            d["model"] = {"arch": _parse_value(raw)}
            continue
        if section not in SECTIONS or name not in d[section]:
            raise ConfigError(f"unknown config key {key!r}; sections are {', '.join(SECTIONS)} "
                              f"(see `ddpm info --preset NAME --json` for every key)")
        if section == "model" and name in DERIVED_MODEL_FIELDS and not (
                name == "num_classes" and cfg.data.source == "folder"):
            raise ConfigError(f"{key} follows {DERIVED_MODEL_FIELDS[name]}; set that instead")
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
