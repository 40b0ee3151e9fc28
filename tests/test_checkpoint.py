"""Checkpoint files: round trips, EMA vs raw, fp16, self-describing files, corruption, atomicity."""

import json
import warnings

import pytest
import torch

from ddpm.config import Config
from ddpm.errors import CheckpointError
from ddpm.models.unet import UNet
from ddpm.presets import get_preset
from ddpm import checkpoint as ckpt
from ddpm.checkpoint import load_checkpoint, save_checkpoint


def make_ckpt(directory, step=5, seed=0, conditional=False, ema=True, model=True, dtype=None):
    cfg = get_preset("digits-tiny")
    if conditional:
        cfg.model.num_classes, cfg.data.class_labels = 10, True
    torch.manual_seed(seed)
    raw = UNet(cfg.model).state_dict()
    ema_state = {k: v + 0.5 for k, v in raw.items()} if ema else None
    save_checkpoint(directory, config=cfg, step=step, model_state=raw if model else None,
                    ema_state=ema_state, dtype=dtype)
    return cfg, raw, ema_state


def test_round_trip_ema_and_raw(tmp_path):
    d = tmp_path / "checkpoints" / ckpt.step_dir_name(5)
    cfg, raw, ema = make_ckpt(d)
    ckpt.write_latest(tmp_path, d)
    for path in (tmp_path, d, d / "ema.safetensors"):
        loaded = load_checkpoint(path)
        assert loaded.step == 5 and loaded.weights == "ema" and not loaded.model.training
        assert loaded.config.to_dict() == cfg.to_dict()
        assert loaded.diffusion.num_timesteps == 100
        for k, v in loaded.model.state_dict().items():
            assert torch.equal(v, ema[k])
    loaded = load_checkpoint(d, use_ema=False)
    assert loaded.weights == "model"
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, raw[k])


def test_weights_file_carries_config_metadata(tmp_path):
    cfg, _, _ = make_ckpt(tmp_path / "c")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "c" / "ema.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert Config.from_json(meta["config"]).to_dict() == cfg.to_dict()
    assert meta["kind"] == "ema" and meta["step"] == "5"
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "ema.safetensors", "config.json"}


def test_fp16_weights_are_upcast(tmp_path):
    _, _, ema = make_ckpt(tmp_path / "c", ema=True, model=False, dtype=torch.float16)
    loaded = load_checkpoint(tmp_path / "c")
    for k, v in loaded.model.state_dict().items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, ema[k].half().float(), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="raw"):
        load_checkpoint(tmp_path / "c", use_ema=False)


def test_truncated_and_incomplete_checkpoints(tmp_path):
    old = tmp_path / "checkpoints" / "step_0000002"
    new = tmp_path / "checkpoints" / "step_0000004"
    make_ckpt(old, step=2)
    make_ckpt(new, step=4)
    ckpt.write_latest(tmp_path, new)
    f = new / "ema.safetensors"
    f.write_bytes(f.read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(new)
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        assert load_checkpoint(tmp_path).step == 2  # the run falls back to the newest complete one
    (old / "manifest.json").unlink()  # never completed
    with pytest.raises(CheckpointError, match="no complete checkpoint"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt.latest_checkpoint(tmp_path)


def test_garbage_file_is_a_checkpoint_error(tmp_path):
    bad = tmp_path / "ema.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_temp_dirs_ignored_and_pruning(tmp_path):
    for s in (1, 2, 3):
        d = tmp_path / "checkpoints" / ckpt.step_dir_name(s)
        make_ckpt(d, step=s)
        ckpt.write_latest(tmp_path, d)
    (tmp_path / "checkpoints" / ".tmp-step_0000009").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step_0000009" / "model.safetensors").write_bytes(b"half")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000001", "step_0000002", "step_0000003"]
    assert load_checkpoint(tmp_path).step == 3
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000002", "step_0000003"]
    assert not (tmp_path / "checkpoints" / ".tmp-step_0000009").exists()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000003"


def test_resave_same_step_replaces_atomically(tmp_path):
    d = tmp_path / "c"
    make_ckpt(d, seed=0)
    _, _, ema = make_ckpt(d, seed=1)
    loaded = load_checkpoint(d)
    assert all(torch.equal(v, ema[k]) for k, v in loaded.model.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_train_state_is_json_and_safetensors(tmp_path):
    from ddpm.data import ImageDataset
    from ddpm.train.trainer import Trainer

    ds = ImageDataset(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8), torch.full((8,), -1))
    from ddpm.config import apply_overrides

    cfg = apply_overrides(get_preset("digits-tiny"), ["train.batch_size=4"])
    tr = Trainer(cfg, tmp_path / "run", dataset=ds, progress=False, tensorboard=False)
    tr.train(steps=1)
    d = ckpt.latest_checkpoint(tmp_path / "run")
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["config.json", "ema.safetensors", "manifest.json", "model.safetensors", "progress.json",
         "train_state.json", "train_state.safetensors"])
    tensors, js = ckpt.load_train_state(d)
    assert js["step"] == 1 and js["ema_initialized"] is True
    assert js["data_position"] == {"epoch": 0, "index": 4}
    assert len(js["rng_python"][1]) == 625 and len(js["rng_numpy"][1]) == 624
    assert tensors["rng.torch_cpu"].dtype == torch.uint8
    assert any(k.startswith("optim.") and k.endswith("exp_avg_sq") for k in tensors)


def test_write_text_atomic(tmp_path):
    p = tmp_path / "latest"
    ckpt.write_text_atomic(p, "a\n")
    ckpt.write_text_atomic(p, "b\n")
    assert p.read_text() == "b\n"
    assert [q.name for q in tmp_path.iterdir()] == ["latest"]


def test_export_weights_ema_only_fp16(tmp_path):
    src = tmp_path / "run" / "checkpoints" / "step_0000007"
    _, _, ema = make_ckpt(src, step=7)
    ckpt.write_latest(tmp_path / "run", src)
    out = ckpt.export_weights(tmp_path / "run", tmp_path / "ship", dtype=torch.float16)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "ema.safetensors", "manifest.json"]
    loaded = load_checkpoint(out)
    assert loaded.step == 7 and loaded.weights == "ema"
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, ema[k].half().float())
    assert (out / "ema.safetensors").stat().st_size < (src / "ema.safetensors").stat().st_size * 0.6


def test_shipped_digits_checkpoint():
    """The demo's self-trained checkpoint: EMA-only float16, < 5 MB, loads as a conditional digits net."""
    from pathlib import Path

    import ddpm

    d = Path(ddpm.__file__).parent / "assets" / "digits"
    assert sum(f.stat().st_size for f in d.iterdir()) < 5_000_000
    from safetensors import safe_open

    with safe_open(str(d / "ema.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    loaded = load_checkpoint(d)
    assert loaded.weights == "ema" and loaded.step >= 500 and not loaded.model.training
    assert loaded.config.preset == "digits" and loaded.config.model.num_classes == 10
    with torch.no_grad():
        out = loaded.model(torch.zeros(2, 1, 28, 28), torch.tensor([0, 999]), torch.tensor([3, 10]))
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()


def test_checkpoint_files_get_the_umask_mode_not_owner_only(tmp_path):
    """safetensors writes 0600; a checkpoint's files are shared like any other file of the run."""
    import os

    from ddpm.checkpoint import save_checkpoint
    from ddpm.models.registry import build_model
    from ddpm.presets import get_preset

    cfg = get_preset("digits-tiny")
    old = os.umask(0o022)
    try:
        d = save_checkpoint(tmp_path / "c", config=cfg, step=1, ema_state=build_model(cfg.model).state_dict())
    finally:
        os.umask(old)
    assert oct((d / "ema.safetensors").stat().st_mode & 0o777) == oct(0o644)
