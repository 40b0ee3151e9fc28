"""Import diffusers ``AutoencoderKL`` folders (the Stable Diffusion VAE layout, e.g.
``stabilityai/sd-vae-ft-mse``) as :class:`ddpm.models.autoencoder.AutoencoderKL`.

Their blocks are named like ``UNet2DModel``'s (``down_blocks.i.resnets.j``, ``mid_block.attentions.0.to_q``,
up blocks numbered from the bottom, ``conv_norm_out``), so the U-Net importer's renaming
(:func:`ddpm.models.convert_diffusers.diffusers_name`) applies under the ``encoder.``/``decoder.`` prefixes;
attention projections are ``Linear`` s there and 1×1 convs here. The published ``scaling_factor`` (and
``shift_factor``) are kept in the config, so a latent model built on the VAE uses them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ddpm.errors import CheckpointError, ConfigError
from ddpm.models.autoencoder import AutoencoderConfig, AutoencoderKL
from ddpm.models.convert_diffusers import diffusers_name, read_diffusers_weights, remap_diffusers_weights

DIFFUSERS_SCALING_DEFAULT = 0.18215  # AutoencoderKL's default scaling_factor (the SD VAEs')
_REQUIRED = {"act_fn": "silu", "latents_mean": None, "latents_std": None}


def autoencoder_config_from_diffusers(cfg: dict[str, Any]) -> AutoencoderConfig:
    """The :class:`AutoencoderConfig` of an ``AutoencoderKL`` ``config.json``; ConfigError for settings
    this network cannot express."""
    if cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ConfigError(f"expected a diffusers AutoencoderKL config, got {cfg.get('_class_name')!r}")
    for key, want in _REQUIRED.items():
        if cfg.get(key, want) != want:
            raise ConfigError(f"diffusers AutoencoderKL config has {key}={cfg.get(key)!r}; supported: {want!r}")
    down = list(cfg.get("down_block_types", ["DownEncoderBlock2D"]))
    up = list(cfg.get("up_block_types", ["UpDecoderBlock2D"]))
    if set(down) != {"DownEncoderBlock2D"} or set(up) != {"UpDecoderBlock2D"} or len(down) != len(up):
        raise ConfigError(f"diffusers AutoencoderKL blocks {down} / {up} are not the KL autoencoder's")
    chans = list(cfg.get("block_out_channels", [64]))
    if len(chans) != len(down) or any(c % chans[0] for c in chans):
        raise ConfigError(f"diffusers block_out_channels {chans} do not fit {len(down)} levels of multiples "
                          "of the first width")
    c_in, c_out = int(cfg.get("in_channels", 3)), int(cfg.get("out_channels", 3))
    if c_in != c_out:
        raise ConfigError(f"diffusers AutoencoderKL maps {c_in} to {c_out} channels; ours reconstructs its input")
    size = cfg.get("sample_size", 32)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    factor = 2 ** (len(chans) - 1)
    return AutoencoderConfig(
        in_channels=c_in,
        resolution=max(factor, size - size % factor),
        ch=int(chans[0]),
        ch_mult=tuple(c // chans[0] for c in chans),
        num_res_blocks=int(cfg.get("layers_per_block", 1)),
        latent_channels=int(cfg.get("latent_channels", 4)),
        norm_groups=int(cfg.get("norm_num_groups", 32)),
        mid_attention=bool(cfg.get("mid_block_add_attention", True)),
        use_quant_conv=bool(cfg.get("use_quant_conv", True)),
        use_post_quant_conv=bool(cfg.get("use_post_quant_conv", True)),
        scaling_factor=float(cfg.get("scaling_factor", DIFFUSERS_SCALING_DEFAULT)),
        shift_factor=float(cfg.get("shift_factor") or 0.0),
    )


def diffusers_autoencoder_name(name: str, config: AutoencoderConfig) -> str:
    """The diffusers key of one of our keys."""
    part, rest = name.split(".", 1)
    if part in ("encoder", "decoder"):
        return f"{part}.{diffusers_name(rest, len(config.ch_mult))}"
    return name


def convert_autoencoder_state_dict(sd: dict[str, torch.Tensor], config: AutoencoderConfig) -> dict[str, torch.Tensor]:
    """An ``AutoencoderKL`` state dict (new or legacy attention names) -> ours for ``config``."""
    with torch.device("meta"):
        reference = AutoencoderKL(config).state_dict()
    return remap_diffusers_weights(sd, reference, lambda name: diffusers_autoencoder_name(name, config),
                                   "AutoencoderKL weights")


def autoencoder_folder(path: str | Path) -> Path:
    """The folder holding the AutoencoderKL ``config.json``: ``path`` itself or its ``vae/``."""
    root = Path(path)
    for d in (root, root / "vae"):
        cfg = d / "config.json"
        if cfg.is_file():
            try:
                if json.loads(cfg.read_text()).get("_class_name") == "AutoencoderKL":
                    return d
            except json.JSONDecodeError:
                raise CheckpointError(f"{cfg} is not valid JSON") from None
    raise CheckpointError(f"{root} holds no diffusers AutoencoderKL (config.json with _class_name AutoencoderKL, "
                          "directly or in vae/)")


def load_autoencoder_folder(path: str | Path) -> AutoencoderKL:
    """A diffusers ``AutoencoderKL`` folder (or a pipeline's ``vae/``) -> our autoencoder, in eval mode."""
    from ddpm.models.convert_diffusers import WEIGHT_NAMES

    folder = autoencoder_folder(path)
    config = autoencoder_config_from_diffusers(json.loads((folder / "config.json").read_text()))
    weights = next((folder / w for w in WEIGHT_NAMES if (folder / w).is_file()), None)
    if weights is None:
        raise CheckpointError(f"no {' or '.join(WEIGHT_NAMES)} in {folder}; download the weights file there")
    model = AutoencoderKL(config)
    model.load_state_dict(convert_autoencoder_state_dict(read_diffusers_weights(weights), config))
    return model.eval()
