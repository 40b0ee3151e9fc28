"""Checkpoint averaging (stochastic weight averaging) and `ddpm export`."""

import json

import pytest
import torch

from ddpm import checkpoint as ckpt
from ddpm.averaging import average_checkpoints, last_checkpoints
from ddpm.checkpoint import load_checkpoint, read_weights, save_checkpoint
from ddpm.cli import main
from ddpm.errors import CheckpointError
from ddpm.models.unet import UNet
from ddpm.presets import get_preset


def _run(root, steps, cfg=None):
    """A run directory whose checkpoint at step s has raw weights base + s and EMA weights base - s."""
    cfg = cfg or get_preset("digits-tiny")
    torch.manual_seed(0)
    base = UNet(cfg.model).state_dict()
    for s in steps:
        save_checkpoint(root / "checkpoints" / ckpt.step_dir_name(s), config=cfg, step=s,
                        model_state={k: v + s for k, v in base.items()}, ema_state={k: v - s for k, v in base.items()})
    return cfg, base


def test_average_is_the_mean_of_the_chosen_weights(tmp_path):
    cfg, base = _run(tmp_path / "run", [100, 200, 300, 600])
    sources = last_checkpoints(tmp_path / "run", 3)
    assert [p.name for p in sources] == [ckpt.step_dir_name(s) for s in (200, 300, 600)]
    before = last_checkpoints(tmp_path / "run" / "checkpoints" / ckpt.step_dir_name(300), 2)  # ending at a step
    assert [p.name for p in before] == [ckpt.step_dir_name(s) for s in (200, 300)]
    for weights, sign in (("raw", 1), ("ema", -1)):
        out = average_checkpoints(sources, tmp_path / weights, weights=weights)
        loaded = load_checkpoint(out)
        assert loaded.step == 600 and loaded.config.to_dict() == cfg.to_dict()
        for k, v in loaded.model.state_dict().items():  # mean step of 200, 300, 600 is 366.67
            torch.testing.assert_close(v, base[k] + sign * (1100 / 3), rtol=0, atol=1e-4)
        record = json.loads((out / "averaged.json").read_text())
        assert record["weights"] == weights and record["count"] == 3
        assert [s["step"] for s in record["sources"]] == [200, 300, 600]


def test_average_of_one_is_the_checkpoint_bit_for_bit_and_fp16_halves_the_file(tmp_path):
    _run(tmp_path / "run", [5])
    src = last_checkpoints(tmp_path / "run", 1)
    one = average_checkpoints(src, tmp_path / "one", weights="raw")
    a, _ = read_weights(one / "ema.safetensors")
    b, _ = read_weights(src[0] / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)
    half = average_checkpoints(src, tmp_path / "half", weights="raw", dtype=torch.float16)
    size = lambda d: (d / "ema.safetensors").stat().st_size  # noqa: E731
    assert size(half) < 0.55 * size(one)


def test_average_refuses_different_models_and_exported_checkpoints(tmp_path):
    _run(tmp_path / "a", [1])
    other = get_preset("digits-tiny")
    other.model.ch_mult = (1, 2)
    _run(tmp_path / "b", [2], cfg=other)
    srcs = last_checkpoints(tmp_path / "a", 1) + last_checkpoints(tmp_path / "b", 1)
    with pytest.raises(CheckpointError, match="different model"):
        average_checkpoints(srcs, tmp_path / "out")
    shipped = ckpt.export_weights(tmp_path / "a", tmp_path / "shipped")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        average_checkpoints([shipped], tmp_path / "out", weights="raw")
    with pytest.raises(CheckpointError, match="fewer than the 5 asked for"):
        last_checkpoints(tmp_path / "a", 5)
    assert not (tmp_path / "out").exists()


def test_cli_export_copies_ema_or_averages(tmp_path, capsys):
    _, base = _run(tmp_path / "run", [10, 20, 30])
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "ema"), "--fp16"]) == 0
    loaded = load_checkpoint(tmp_path / "ema")
    assert loaded.step == 30
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, (base[k] - 30).half().float(), rtol=0, atol=0)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "avg"), "--average-last", "2"]) == 0
    assert "averaged the raw weights of 2 checkpoints" in capsys.readouterr().out
    for k, v in load_checkpoint(tmp_path / "avg").model.state_dict().items():
        torch.testing.assert_close(v, base[k] + 25, rtol=0, atol=1e-5)
    # an existing OUT is kept unless --overwrite
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "avg"), "--average-last", "3", "--weights", "ema"]) == 2
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "avg"), "--average-last", "3", "--weights", "ema",
                 "--overwrite"]) == 0
    for k, v in load_checkpoint(tmp_path / "avg").model.state_dict().items():
        torch.testing.assert_close(v, base[k] - 20, rtol=0, atol=1e-5)
