"""Named U-Net architectures: the paper's networks (spec §5.1, §5.4) and small CPU-friendly ones.

Parameter counts (out_channels 3 unless noted) are asserted in ``tests/test_unet.py``.
"""

from __future__ import annotations

import dataclasses

from ddpm.config import UNetConfig
from ddpm.errors import ConfigError

UNET_PRESETS: dict[str, UNetConfig] = {
    # run_cifar.py, "unet2d16b2": 35,746,307 parameters (35,749,766 with out_channels=6).
    "cifar10": UNetConfig(
        ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1, resolution=32
    ),
    # run_celebahq.py / run_lsun.py, "unet2d16b2c112244": 113,673,219 parameters.
    "celebahq256": UNetConfig(
        ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0, resolution=256
    ),
    "lsun256": UNetConfig(
        ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0, resolution=256
    ),
    # The paper's "large" LSUN Bedroom (~256M parameters): ch=192 is inferred from the count (255,677,955).
    "lsun256-large": UNetConfig(
        ch=192, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0, resolution=256
    ),
    # The configuration of the authors'-code fixture official_unet_tiny.npz (703,366 parameters).
    "tiny": UNetConfig(
        out_channels=6, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, resolution=16
    ),
    # A 32x32 RGB net that trains on a laptop CPU: the CIFAR-10 topology at quarter width
    # (2,245,763 parameters, ~0.84 GFLOP per image forward).
    "small": UNetConfig(
        ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1, resolution=32
    ),
    # 28x28 greyscale digits (MNIST-like): 28 -> 14 -> 7, attention at 14. One res block per level
    # keeps CPU training fast (1,112,801 parameters, ~0.42 GFLOP per image forward).
    "digits": UNetConfig(
        in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(14,),
        dropout=0.0, resolution=28,
    ),
}


def get_unet_config(name: str, **overrides) -> UNetConfig:
    """A copy of preset ``name`` with ``overrides`` (UNetConfig field names) applied."""
    if name not in UNET_PRESETS:
        raise ConfigError(f"unknown U-Net preset {name!r}; choose one of: {', '.join(UNET_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown UNetConfig field(s) {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(UNET_PRESETS[name], **overrides)
