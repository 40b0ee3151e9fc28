"""Moved to :mod:`ddpm.checkpoint` (inference needs it without the training package).

This alias keeps ``ddpm.train.checkpoint`` importable for one release; it is the same module object.
"""

import sys

from ddpm import checkpoint as _moved

sys.modules[__name__] = _moved
