"""Named experiment presets: the paper's recipes (spec §6.2) plus small CPU ones, in one place.

Each entry is a function returning a fresh :class:`ddpm.config.Config`, so callers may mutate what
they get. ``get_preset(name)`` is the public way in; ``PRESETS`` lists the names.
"""

from __future__ import annotations

from typing import Callable

from ddpm.config import Config, DataConfig, DiffusionConfig, TrainConfig, UNetConfig
from ddpm.errors import ConfigError

# The 256x256 nets of the CelebA-HQ and LSUN scripts (spec §5.1): six levels, attention at 16.
_UNET_256 = dict(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,),
                 dropout=0.0, resolution=256)


def _cifar10() -> Config:
    # The defaults of every dataclass are the paper's CIFAR-10 run (run_cifar.py, spec §6.2).
    return Config(
        model=UNetConfig(),
        diffusion=DiffusionConfig(var_type="fixedlarge"),
        train=TrainConfig(),
        data=DataConfig(source="cifar10", resolution=32, channels=3),
        preset="cifar10",
    )


def _large(name: str, *, steps: int, flip: bool, ch: int = 128) -> Callable[[], Config]:
    """A 256x256 recipe (run_celebahq.py / run_lsun.py): lr 2e-5, batch 64, no dropout, and
    sampling with the posterior variance beta-tilde ("fixedsmall"), as the authors' 256 models did."""

    def make() -> Config:
        return Config(
            model=UNetConfig(**{**_UNET_256, "ch": ch}),
            diffusion=DiffusionConfig(var_type="fixedsmall"),
            train=TrainConfig(lr=2e-5, batch_size=64, steps=steps, random_flip=flip),
            data=DataConfig(source="folder", resolution=256, channels=3),
            preset=name,
        )

    return make


def _digits() -> Config:
    """The offline demo's recipe: the bundled 28x28 MNIST digits, class-conditional so one
    checkpoint serves unconditional sampling (null label) and classifier-free guidance.

    Departures from the paper, chosen for a short CPU run: lr 1e-3 with a 100-step warm-up, batch 32,
    EMA 0.995 (0.9999 averages over ~10k steps, far longer than the whole run), no dropout, no flips
    (a mirrored digit is not a digit), and cheap 50-step sample grids every 250 steps."""
    return Config(
        model=UNetConfig(in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                         attn_resolutions=(7,), dropout=0.0, resolution=28, num_classes=10),
        diffusion=DiffusionConfig(),
        train=TrainConfig(lr=1e-3, warmup=100, batch_size=32, ema_decay=0.995, steps=4000,
                          random_flip=False, class_dropout=0.1, log_every=10, sample_every=250,
                          ckpt_every=100, keep_checkpoints=2, num_sample_images=20, sample_steps=50),
        data=DataConfig(source="digits", resolution=28, channels=1, class_labels=True),
        preset="digits",
    )


def _digits_tiny() -> Config:
    """A one-level net (~0.2M parameters) and T=100 so that tests train and sample in seconds."""
    return Config(
        model=UNetConfig(in_channels=1, out_channels=1, ch=32, ch_mult=(1,), num_res_blocks=1,
                         attn_resolutions=(), dropout=0.0, resolution=28),
        diffusion=DiffusionConfig(num_timesteps=100, beta_end=0.2),
        train=TrainConfig(lr=1e-3, warmup=2, batch_size=8, ema_decay=0.9, steps=20, random_flip=True,
                          log_every=1, sample_every=0, ckpt_every=10, keep_checkpoints=2,
                          num_sample_images=4),
        data=DataConfig(source="digits", resolution=28, channels=1),
        preset="digits-tiny",
    )


def _improved_cifar10(name: str, *, loss_type: str, timestep_sampler: str) -> Callable[[], Config]:
    """Improved DDPM's CIFAR-10 recipe (Nichol & Dhariwal 2021; spec §8.6): cosine schedule,
    T = 4000, learned_range variances, 128 channels, 3 res blocks, dropout 0.3, lr 1e-4, batch 128.

    ``hybrid`` is L_simple + 0.001·L_vlb (their main setting); ``kl`` with loss-second-moment
    timestep sampling is their L_vlb setting. Our U-Net is the DDPM one with attention at 16 and 8;
    theirs adds scale-shift norm and 4-head attention (spec §8.6), so numbers will not match exactly.
    The network sees the raw index 0..3999 (improved DDPM feeds t·1000/T; both are just inputs to
    the sinusoidal embedding). Like their trainer: no warm-up, no gradient clipping, no flips, EMA
    0.9999, 500k steps (the step count is our reading of the paper, not checked against their logs).
    """

    def make() -> Config:
        return Config(
            model=UNetConfig(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=3, attn_resolutions=(16, 8),
                             dropout=0.3, resolution=32, out_channels=6),
            diffusion=DiffusionConfig(schedule="cosine", num_timesteps=4000, var_type="learned_range",
                                      loss_type=loss_type),
            train=TrainConfig(lr=1e-4, batch_size=128, warmup=0, grad_clip=0.0, random_flip=False,
                              steps=500_000, timestep_sampler=timestep_sampler),
            data=DataConfig(source="cifar10", resolution=32, channels=3),
            preset=name,
        )

    return make


def _cifar10_cond() -> Config:
    """The paper's CIFAR-10 recipe made class-conditional for classifier-free guidance (Ho &
    Salimans 2021): labels from the dataset, dropped to the null label with probability 0.1."""
    cfg = _cifar10()
    cfg.model.num_classes = 10
    cfg.data.class_labels = True
    cfg.train.class_dropout = 0.1
    cfg.preset = "cifar10-cond"
    return cfg


PRESETS: dict[str, Callable[[], Config]] = {
    "cifar10": _cifar10,
    "celebahq256": _large("celebahq256", steps=500_000, flip=True),
    # [P] App. B: flips for every dataset except LSUN Bedroom (spec §6.2 note).
    "lsun-church": _large("lsun-church", steps=1_200_000, flip=True),
    "lsun-bedroom": _large("lsun-bedroom", steps=2_400_000, flip=False),
    "lsun-bedroom-large": _large("lsun-bedroom-large", steps=1_150_000, flip=False, ch=192),
    "lsun-cat": _large("lsun-cat", steps=1_800_000, flip=True),
    "digits": _digits,
    "digits-tiny": _digits_tiny,
    "improved-cifar10": _improved_cifar10("improved-cifar10", loss_type="hybrid", timestep_sampler="uniform"),
    "improved-cifar10-kl": _improved_cifar10("improved-cifar10-kl", loss_type="kl",
                                             timestep_sampler="loss-second-moment"),
    "cifar10-cond": _cifar10_cond,
}


def get_preset(name: str) -> Config:
    """A fresh :class:`Config` for the preset called ``name``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
