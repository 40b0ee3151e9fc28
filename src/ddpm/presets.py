"""Every named preset, in one place: the paper's recipes (Ho et al. 2020, App. B), improved DDPM's,
small CPU recipes, the ``ddpm repro`` scales, and networks known by name only.

``get_preset(name)`` returns a fresh :class:`ddpm.config.Config` (callers may mutate it);
``get_network(name)`` returns a preset's network config, for ``UNet.from_preset``. ``PRESETS`` and
``NETWORKS`` list the names. ``ddpm info --preset NAME`` describes any of them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from ddpm.config import Config, DataConfig, DiffusionConfig, SamplerConfig, TrainConfig
from ddpm.errors import ConfigError
from ddpm.models.autoencoder import AutoencoderConfig
from ddpm.models.dit import DiTConfig
from ddpm.models.latent import LatentConfig
from ddpm.models.unet import UNetConfig

# The paper's CIFAR-10 network (run_cifar.py, "unet2d16b2"): 35,746,307 parameters.
CIFAR10_UNET = UNetConfig(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                          resolution=32)
# The 256x256 networks of the CelebA-HQ and LSUN scripts ("unet2d16b2c112244"): six levels, attention
# at 16, no dropout; 113,673,219 parameters at ch 128.
UNET_256 = UNetConfig(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0,
                      resolution=256)


def _cifar10() -> Config:
    # The defaults of every dataclass are the paper's CIFAR-10 run (run_cifar.py).
    return Config(model=dataclasses.replace(CIFAR10_UNET), diffusion=DiffusionConfig(var_type="fixedlarge"),
                  train=TrainConfig(), data=DataConfig(source="cifar10", resolution=32, channels=3),
                  preset="cifar10")


def _large(name: str, *, steps: int, flip: bool, ch: int = 128) -> Callable[[], Config]:
    """A 256x256 recipe (run_celebahq.py / run_lsun.py): lr 2e-5, batch 64, no dropout, and
    sampling with the posterior variance β̃ ("fixedsmall"), as the authors' 256 models did."""

    def make() -> Config:
        return Config(model=dataclasses.replace(UNET_256, ch=ch), diffusion=DiffusionConfig(var_type="fixedsmall"),
                      train=TrainConfig(lr=2e-5, batch_size=64, steps=steps, random_flip=flip),
                      data=DataConfig(source="folder", resolution=256, channels=3), preset=name)

    return make


def _digits() -> Config:
    """The offline demo's recipe: the bundled 28x28 MNIST digits, class-conditional so one
    checkpoint serves unconditional sampling (null label) and classifier-free guidance.

    Departures from the paper, chosen for a short CPU run: lr 1e-3 with a 100-step warm-up, batch 32,
    EMA 0.995 (0.9999 averages over ~10k steps, far longer than the whole run), no dropout, no flips
    (a mirrored digit is not a digit), and cheap 50-step sample grids every 250 steps."""
    return Config(
        model=UNetConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,), dropout=0.0,
                         norm_groups=8),
        diffusion=DiffusionConfig(),
        train=TrainConfig(lr=1e-3, warmup=100, batch_size=32, ema_decay=0.995, steps=4000,
                          random_flip=False, class_dropout=0.1, log_every=10, sample_every=250,
                          ckpt_every=100, keep_checkpoints=2, num_sample_images=20, sample_steps=50),
        data=DataConfig(source="digits", resolution=28, channels=1, class_labels=True),
        preset="digits",
    )


def _digits_dit() -> Config:
    """A class-conditional DiT on the 28×28 digits, in pixel space, at about the digits U-Net's cost per
    step on one CPU thread: patch 4 (7×7 = 49 tokens), hidden 192, 3 heads (DiT-S halved in width, as
    DeiT-Ti), depth 6; 4.18M parameters. The digits recipe otherwise (batch 32, EMA 0.995, 10% label
    drop-out, ε-prediction with fixed variances), except lr 5e-4: transformers train less stably than
    the U-Net at 1e-3. The paper's own recipe (AdamW lr 1e-4, batch 256, learned Σ) is the dit-* presets."""
    cfg = _digits()
    return dataclasses.replace(
        cfg, model=DiTConfig(patch_size=4, hidden_size=192, depth=6, num_heads=3),
        train=dataclasses.replace(cfg.train, lr=5e-4), preset="digits-dit")


def _digits_autoencoder() -> Config:
    """A small KL autoencoder for the 28×28 digits (latent diffusion's first stage, Rombach et al. 2022):
    f = 4, 4 latent channels (28×28×1 <-> 7×7×4), ch 32 × (1, 2, 2), one residual block per level, mid
    attention, GroupNorm 8 groups; L1 reconstruction + 1e-6 KL (LDM's weights, without the perceptual
    and adversarial terms: see ddpm.train.autoencoding). LDM's Adam betas (0.5, 0.9), no gradient
    clipping and no EMA (decay 0: the "EMA" weights are the weights); lr 1e-3 with a 100-step warm-up
    and batch 32 for a short CPU run."""
    return Config(
        model=AutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, latent_channels=4, norm_groups=8),
        diffusion=DiffusionConfig(),
        train=TrainConfig(lr=1e-3, adam_betas=(0.5, 0.9), warmup=100, grad_clip=0.0, batch_size=32, ema_decay=0.0,
                          steps=2000, random_flip=False, log_every=10, sample_every=0, ckpt_every=200,
                          keep_checkpoints=2, objective="autoencoder"),
        data=DataConfig(source="digits", resolution=28, channels=1),
        preset="digits-autoencoder",
    )


def _digits_latent() -> Config:
    """Latent diffusion on the digits: a class-conditional U-Net on the 7×7×4 latents of a
    ``digits-autoencoder`` run, named by ``--set model.autoencoder=RUN`` (its config is read from there).
    ch 64 × (1, 2) with 2 blocks per level and attention at 4×4 (7 → 4): the latent is 16× smaller than
    the image, so the network can be wider than the pixel digits U-Net at a lower cost per step. The
    latent scale is measured when the run starts. Otherwise the digits recipe; samples never clip x̂0."""
    cfg = _digits()
    model = LatentConfig(autoencoder_config=_digits_autoencoder().model,
                         backbone=UNetConfig(ch=64, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,),
                                             dropout=0.0, norm_groups=8))
    return dataclasses.replace(cfg, model=model, sampling=dataclasses.replace(cfg.sampling, clip_denoised=False),
                               preset="digits-latent")


# DiT sizes (Peebles & Xie 2023, Table 1): hidden width, depth, heads.
DIT_SIZES = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "xl": (1152, 28, 16)}
# The VAE of the paper's latent setting (stabilityai/sd-vae-ft-ema; -mse has the same network): the
# Stable Diffusion KL-f8 autoencoder, 256×256×3 <-> 32×32×4, latent scale 0.18215.
SD_VAE = "stabilityai/sd-vae-ft-ema"
SD_VAE_CONFIG = {**dataclasses.asdict(AutoencoderConfig(scaling_factor=0.18215)), "_read_from": SD_VAE}


def _dit(size: str, patch: int) -> Callable[[], Config]:
    """DiT-{size}/{patch} with the paper's ImageNet 256×256 recipe (§5 and the official train.py): latent
    diffusion in the SD VAE's 32×32×4 latents, 1,000 classes with 10% label drop-out, learned Σ trained
    with improved DDPM's hybrid loss, linear β 1e-4..0.02 over T = 1000; AdamW lr 1e-4 without weight decay
    (= Adam), batch 256, no warm-up, no gradient clipping, horizontal flips, EMA 0.9999, 400k steps (the
    paper's comparison length); 250-step ancestral sampling without clipping. Data: an ImageNet folder
    (``--data``, one sub-folder per class)."""
    hidden, depth, heads = DIT_SIZES[size]
    name = f"dit-{size}-{patch}"

    def make() -> Config:
        model = LatentConfig(autoencoder=SD_VAE, autoencoder_config=SD_VAE_CONFIG, num_classes=1000,
                             backbone=DiTConfig(patch_size=patch, hidden_size=hidden, depth=depth, num_heads=heads))
        return Config(
            model=model,
            diffusion=DiffusionConfig(var_type="learned_range", loss_type="hybrid"),
            train=TrainConfig(lr=1e-4, warmup=0, grad_clip=0.0, batch_size=256, ema_decay=0.9999, steps=400_000,
                              random_flip=True, class_dropout=0.1, ckpt_every=50_000, sample_every=0),
            data=DataConfig(source="folder", resolution=256, channels=3, class_labels=True),
            sampling=SamplerConfig(sampler="ddpm", steps=250, clip_denoised=False),
            preset=name,
        )

    return make
def _digits_classifier() -> Config:
    """The noise-aware digits classifier for classifier guidance (Dhariwal & Nichol 2021, §4): the
    encoder half of the digits U-Net with attention pooling, trained with cross-entropy on x_t of the
    digits diffusion (same schedule, so its t means what the denoiser's t means). lr 5e-4 with a
    100-step warm-up, batch 32, EMA 0.995, no flips, every label kept."""
    from ddpm.models.classifier import ClassifierConfig

    return Config(
        model=ClassifierConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,), dropout=0.0,
                               norm_groups=8, head_channels=32),
        diffusion=DiffusionConfig(),
        train=TrainConfig(lr=5e-4, warmup=100, batch_size=32, ema_decay=0.995, steps=5000, random_flip=False,
                          class_dropout=0.0, log_every=10, sample_every=0, ckpt_every=250, keep_checkpoints=2,
                          objective="classifier"),
        data=DataConfig(source="digits", resolution=28, channels=1, class_labels=True),
        preset="digits-classifier",
    )


def _digits_ct() -> Config:
    """Improved consistency training (Song & Dhariwal 2023) of a digits consistency model from data: the
    digits U-Net under the consistency boundary parameterisation (σ_data 0.5), x0 output on the digits
    schedule, pseudo-Huber loss, log-normal σ sampling and a doubling discretisation (s0 10, s1 1280);
    class-conditional with label drop-out 0.1 like the digits model. CPU recipe: lr 5e-4, warm-up 100,
    batch 32, EMA 0.995, 3000 steps; one-step sample grids every 250 steps."""
    from ddpm.models.consistency import ConsistencyConfig

    return Config(
        model=ConsistencyConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,), dropout=0.0,
                                norm_groups=8, sigma_data=0.5),
        diffusion=DiffusionConfig(mean_type="xstart"),
        train=TrainConfig(lr=5e-4, warmup=100, batch_size=32, ema_decay=0.995, steps=3000, random_flip=False,
                          class_dropout=0.1, log_every=10, sample_every=250, ckpt_every=100, keep_checkpoints=2,
                          num_sample_images=20, objective="consistency-training"),
        data=DataConfig(source="digits", resolution=28, channels=1, class_labels=True),
        sampling=SamplerConfig(sampler="consistency", steps=1, spacing="trailing"),
        preset="digits-ct",
    )


def _digits_tiny() -> Config:
    """A one-level net (~0.2M parameters) and T=100 so that tests train and sample in seconds."""
    return Config(
        model=UNetConfig(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0),
        diffusion=DiffusionConfig(num_timesteps=100, beta_end=0.2),
        train=TrainConfig(lr=1e-3, warmup=2, batch_size=8, ema_decay=0.9, steps=20, random_flip=True,
                          log_every=1, sample_every=0, ckpt_every=10, keep_checkpoints=2,
                          num_sample_images=4),
        data=DataConfig(source="digits", resolution=28, channels=1),
        preset="digits-tiny",
    )


def _repro_tiny() -> Config:
    """``ddpm repro --scale tiny``: digits at 16×16, ch 32 ×(1, 2), T = 100 with the linear schedule
    scaled by 1000/T, 1,000 steps; a few minutes per model on a laptop CPU. GroupNorm in 8 groups, as the
    digits preset: 32 groups of one channel would normalise the time embedding's bias away."""
    return Config(
        model=UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                         norm_groups=8),
        diffusion=DiffusionConfig(num_timesteps=100, beta_start=1e-3, beta_end=0.2),
        train=TrainConfig(lr=1e-3, warmup=50, batch_size=32, ema_decay=0.99, steps=1000, random_flip=False,
                          log_every=50, sample_every=0, ckpt_every=1000, keep_checkpoints=1),
        data=DataConfig(source="digits", resolution=16, channels=1),
        preset="repro-tiny",
    )


def _repro_smoke() -> Config:
    """``ddpm repro --scale smoke``: seconds, for tests of the pipeline only."""
    return Config(
        model=UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0),
        diffusion=DiffusionConfig(num_timesteps=10, beta_start=1e-2, beta_end=0.5),
        train=TrainConfig(lr=1e-3, warmup=1, batch_size=8, ema_decay=0.9, steps=3, random_flip=False,
                          log_every=1, sample_every=0, ckpt_every=3, keep_checkpoints=1),
        data=DataConfig(source="digits", resolution=8, channels=1),
        preset="repro-smoke",
    )


def _improved_cifar10(name: str, *, loss_type: str, timestep_sampler: str) -> Callable[[], Config]:
    """Improved DDPM's CIFAR-10 recipe (Nichol & Dhariwal 2021, §2–3 and App. A): cosine schedule,
    T = 4000, learned_range variances, 128 channels, 3 res blocks, dropout 0.3, lr 1e-4, batch 128.

    ``hybrid`` is L_simple + 0.001·L_vlb (their main setting); ``kl`` with loss-second-moment
    timestep sampling is their L_vlb setting. Our U-Net is the DDPM one with attention at 16 and 8;
    theirs adds scale-shift norm and 4-head attention, so numbers will not match exactly.
    The network sees the raw index 0..3999 (improved DDPM feeds t·1000/T; both are just inputs to
    the sinusoidal embedding). Like their trainer: no warm-up, no gradient clipping, no flips, EMA
    0.9999, 500k steps (the step count is our reading of the paper, not checked against their logs).
    """

    def make() -> Config:
        return Config(
            model=UNetConfig(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=3, attn_resolutions=(16, 8),
                             dropout=0.3),
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
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, class_labels=True),
                              train=dataclasses.replace(cfg.train, class_dropout=0.1), preset="cifar10-cond")
    return cfg


PRESETS: dict[str, Callable[[], Config]] = {
    "cifar10": _cifar10,
    "celebahq256": _large("celebahq256", steps=500_000, flip=True),
    # App. B: flips for every dataset except LSUN Bedroom.
    "lsun-church": _large("lsun-church", steps=1_200_000, flip=True),
    "lsun-bedroom": _large("lsun-bedroom", steps=2_400_000, flip=False),
    # The paper's larger LSUN Bedroom model: ch 192 is inferred from its count (255,677,955).
    "lsun-bedroom-large": _large("lsun-bedroom-large", steps=1_150_000, flip=False, ch=192),
    "lsun-cat": _large("lsun-cat", steps=1_800_000, flip=True),
    "digits": _digits,
    "digits-tiny": _digits_tiny,
    "digits-dit": _digits_dit,
    "digits-autoencoder": _digits_autoencoder,
    "digits-latent": _digits_latent,
    **{f"dit-{size}-{patch}": _dit(size, patch) for size in DIT_SIZES for patch in (2, 4, 8)},
    "digits-classifier": _digits_classifier,
    "digits-ct": _digits_ct,
    "improved-cifar10": _improved_cifar10("improved-cifar10", loss_type="hybrid", timestep_sampler="uniform"),
    "improved-cifar10-kl": _improved_cifar10("improved-cifar10-kl", loss_type="kl",
                                             timestep_sampler="loss-second-moment"),
    "cifar10-cond": _cifar10_cond,
    "repro-tiny": _repro_tiny,
    "repro-smoke": _repro_smoke,
}

# Networks known by name without a training recipe.
NETWORKS: dict[str, Callable[[], object]] = {
    # The configuration of the authors'-code fixture official_unet_tiny.npz (703,366 parameters).
    "tiny": lambda: UNetConfig(out_channels=6, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                               dropout=0.0, resolution=16),
    # A 32x32 RGB net that trains on a laptop CPU: the CIFAR-10 topology at quarter width (2,245,763).
    "small": lambda: dataclasses.replace(CIFAR10_UNET, ch=32),
    "lsun256": lambda: dataclasses.replace(UNET_256),
}


def get_preset(name: str) -> Config:
    """A fresh :class:`Config` for the preset called ``name``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


def get_network(name: str, **overrides):
    """The network config of preset (or named network) ``name``, with field ``overrides`` applied."""
    if name in NETWORKS:
        cfg = NETWORKS[name]()
    elif name in PRESETS:
        cfg = PRESETS[name]().model
    else:
        choices = ", ".join(sorted({*PRESETS, *NETWORKS}))
        raise ConfigError(f"unknown network preset {name!r}; choose one of {choices}")
    fields = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown {type(cfg).__name__} field(s) {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(cfg, **overrides)


__all__ = ["PRESETS", "NETWORKS", "get_preset", "get_network", "CIFAR10_UNET", "UNET_256"]
