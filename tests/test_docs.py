"""Documentation that must run as written: the first snippet of docs/diffusion.md."""

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"


def first_snippet(name: str) -> str:
    return re.search(r"```python\n(.*?)```", (DOCS / name).read_text(), re.S).group(1)


def test_diffusion_md_first_snippet_runs_at_small_T():
    """Every name in the snippet is defined and every call works (T = 10 instead of 1000 for speed)."""
    code = first_snippet("diffusion.md").replace("num_timesteps=1000", "num_timesteps=10")
    code = code.replace("progress=True", "progress=False")
    scope: dict = {}
    exec(compile(code, "docs/diffusion.md", "exec"), scope)
    assert scope["samples"].shape == (4, 3, 16, 16) and scope["bpd"]["total_bpd"].shape == (2,)
    assert torch.isfinite(scope["loss"]) and scope["diffusion"].num_timesteps == 10


@pytest.mark.slow
def test_diffusion_md_first_snippet_runs_as_written():
    scope: dict = {}
    exec(compile(first_snippet("diffusion.md"), "docs/diffusion.md", "exec"), scope)
    assert scope["samples"].shape == (4, 3, 16, 16) and scope["diffusion"].num_timesteps == 1000
