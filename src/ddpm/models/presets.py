"""Moved to :mod:`ddpm.presets` (every preset in one table): ``get_unet_config(name, **overrides)`` is
:func:`ddpm.presets.get_network`. Kept for one release."""

from ddpm.presets import get_network as get_unet_config  # noqa: F401
