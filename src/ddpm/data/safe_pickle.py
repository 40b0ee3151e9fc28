"""A pickle reader that can rebuild plain containers and numpy arrays and nothing else.

The CIFAR-10 "python version" batches are pickles. A plain ``pickle.load`` runs whatever callable a
file names (``os.system`` included), so a tampered download could run code. This unpickler resolves
only an allow-list of globals: numpy's array and scalar reconstruction and ``_codecs.encode`` (how Python 3 writes
bytes at protocol 2). Builtin containers, strings, bytes and numbers need no globals at all.
"""

from __future__ import annotations

import _codecs
import io
import pickle

import numpy as np

try:  # numpy >= 2 moved the module; old pickles still name numpy.core
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar
    from numpy.core.numeric import _frombuffer

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol 5 arrays
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` refuses every global outside the allow-list."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def safe_loads(data: bytes, *, encoding: str = "bytes"):
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    ``encoding="bytes"`` keeps Python 2 ``str`` objects (CIFAR-10's dict keys) as ``bytes``.
    Raises ``pickle.UnpicklingError`` for a forbidden global.
    """
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
