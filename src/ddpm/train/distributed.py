"""Moved to :mod:`ddpm.distributed` (inference needs it without the training package).

This alias keeps ``ddpm.train.distributed`` importable for one release; it is the same module object.
"""

import sys

from ddpm import distributed as _moved

sys.modules[__name__] = _moved
