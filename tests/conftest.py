import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# Caches the code writes (the digits reference features) go to a folder of this test session.
os.environ.setdefault("DDPM_CACHE", os.path.join(__import__("tempfile").mkdtemp(prefix="ddpm-test-cache-")))

# One thread: the suite runs on 2-core CI machines where oversubscription makes tests several
# times slower; the tests measure correctness, never speed. numpy's BLAS too (the quality metrics'
# matrix products were 10–20× slower with one spinning OpenBLAS thread per core on a busy machine).
torch.set_num_threads(1)
from threadpoolctl import threadpool_limits  # noqa: E402

threadpool_limits(limits=1)


def fixture_dir() -> Path | None:
    """Directory of the authors'-code fixtures, from $DDPM_FIXTURES (CI sets it), else ../shared/fixtures."""
    env = os.environ.get("DDPM_FIXTURES")
    if env:
        return Path(env)
    guess = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
    return guess if guess.is_dir() else None


@pytest.fixture
def fixtures() -> Path:
    d = fixture_dir()
    if d is None or not d.is_dir():
        pytest.skip("authors' fixtures not found: set DDPM_FIXTURES to the folder holding official_unet_tiny.npz")
    return d


def _load_benchmark_script(name: str):
    """Import ``benchmarks/<name>.py`` (a folder of scripts, not a package) as a module."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"ddpm_benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bench():
    """benchmarks/bench.py, the timing harness."""
    return _load_benchmark_script("bench")


@pytest.fixture(scope="session")
def measure():
    """benchmarks/measure.py, FLOP counting and peak figures."""
    return _load_benchmark_script("measure")


@pytest.fixture(scope="session")
def report():
    """benchmarks/report.py, the Markdown tables and target verdicts."""
    return _load_benchmark_script("report")
