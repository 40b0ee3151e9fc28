"""Every sampling path against outputs recorded before the sampler registry existed.

``tests/data/golden_sampling.npz`` was written by ``tests/golden_sampling.py`` on the code before the
registry refactor. On the machine that recorded it the refactored code reproduces it bit for bit; the
tolerance here only absorbs other CPUs' float rounding in convolutions.
"""

import numpy as np
import pytest

import golden_sampling

GOLDEN = golden_sampling.__file__.replace("golden_sampling.py", "data/golden_sampling.npz")


@pytest.fixture(scope="module")
def current():
    return golden_sampling.compute()


def test_golden_file_covers_every_path(current):
    recorded = np.load(GOLDEN)
    assert sorted(recorded.files) == sorted(current)


@pytest.mark.parametrize("key", sorted(np.load(GOLDEN).files))
def test_sampling_unchanged(current, key):
    recorded = np.load(GOLDEN)[key]
    assert current[key].shape == recorded.shape
    # bf16 convolutions round differently on CPUs with and without native bf16 instructions
    atol = 2e-2 if "bf16" in key else 2e-5
    np.testing.assert_allclose(current[key], recorded, rtol=0, atol=atol)
