"""Moved to :mod:`ddpm.train.timesteps` (training's timestep samplers, not image samplers).

This alias keeps ``ddpm.resample`` importable for one release; it is the same module object.
"""

import sys

from ddpm.train import timesteps as _moved

sys.modules[__name__] = _moved
