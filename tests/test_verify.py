"""Verified checkpoints (issue 17): content hashes, keys/shapes/finiteness checked on load, and resume and
sampling falling back to the newest checkpoint that verifies — each damaged one named with the reason."""

import json
import shutil
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ddpm import checkpoint as ckpt
from ddpm.cli import main
from ddpm.config import apply_overrides
from ddpm.errors import CheckpointError
from ddpm.presets import get_preset
from ddpm.train.metrics import read_metrics
from ddpm.train.trainer import Trainer

OVERRIDES = ["train.batch_size=4", "train.ckpt_every=2", "train.keep_checkpoints=0", "train.log_every=1"]


def cfg():
    return apply_overrides(get_preset("digits-tiny"), OVERRIDES)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A run with good checkpoints at steps 2 and 4."""
    d = tmp_path_factory.mktemp("verify") / "base"
    Trainer(cfg(), d, progress=False, tensorboard=False).train(steps=4)
    return d


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify") / "straight"
    Trainer(cfg(), d, progress=False, tensorboard=False).train(steps=6)
    return d


@pytest.fixture
def run(base, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(base, d)
    return d


def rehash(d):
    """Make the manifest match damaged files: what a checkpoint written wrong (not damaged later) looks like."""
    m = json.loads((d / "manifest.json").read_text())
    m["files"] = {n: (d / n).stat().st_size for n in m["files"]}
    m["sha256"] = {n: ckpt.file_sha256(d / n) for n in m["files"]}
    (d / "manifest.json").write_text(json.dumps(m))


def rewrite_weights(path, edit):
    with safe_open(str(path), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(edit(state), str(path), metadata=meta)


def half_zero(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))


def nan_first(state):
    k = next(k for k, v in state.items() if v.is_floating_point())
    state[k] = torch.full_like(state[k], float("nan"))
    return state


def drop_one(state):
    state.pop(sorted(state)[0])
    return state


def reshape_one(state):
    k = next(k for k, v in state.items() if v.dim() == 4 and v.shape[0] > 1)
    state[k] = state[k][:-1].contiguous()
    return state


def garbage_json(path):
    path.write_text("{not json" + " " * max(0, path.stat().st_size - 9))


# (how to damage step_0000004, whether the manifest is rewritten to match, what the reason must say)
DAMAGES = {
    "half-zeroed ema": (lambda d: half_zero(d / "ema.safetensors"), False, "does not match its sha256"),
    "garbage train_state.json": (lambda d: garbage_json(d / "train_state.json"), False, "does not match its sha256"),
    "garbage json, rehashed": (lambda d: garbage_json(d / "train_state.json"), True, "is not valid JSON"),
    "missing key": (lambda d: rewrite_weights(d / "ema.safetensors", drop_one), True, "lacks 1 tensor"),
    "wrong shape": (lambda d: rewrite_weights(d / "ema.safetensors", reshape_one), True, "has shape"),
    "wrong shape, raw weights": (lambda d: rewrite_weights(d / "model.safetensors", reshape_one), True, "has shape"),
    "NaN weights": (lambda d: rewrite_weights(d / "ema.safetensors", nan_first), True, "non-finite weights"),
    "NaN optimizer": (lambda d: rewrite_weights(d / "train_state.safetensors",
                                                lambda s: {k: (v * float("nan") if k.endswith("exp_avg") else v)
                                                           for k, v in s.items()}), True, "is not finite"),
    "manifest garbage": (lambda d: garbage_json(d / "manifest.json"), False, "no valid manifest.json"),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_damaged_newest_checkpoint_resume_falls_back(run, name):
    damage, match_manifest, reason = DAMAGES[name]
    bad = run / "checkpoints" / "step_0000004"
    damage(bad)
    if match_manifest:
        rehash(bad)
    with pytest.warns(UserWarning, match=rf"skipping checkpoint step_0000004: .*{reason}"):
        tr = Trainer(None, run, resume=True, progress=False, tensorboard=False)
    assert tr.step == 2
    tr.close()


@pytest.mark.parametrize("name", ["half-zeroed ema", "missing key", "wrong shape", "wrong shape, raw weights",
                                  "NaN weights"])
def test_damaged_weights_sampling_falls_back_or_refuses(run, name, capsys):
    damage, match_manifest, reason = DAMAGES[name]
    bad = run / "checkpoints" / "step_0000004"
    damage(bad)
    if match_manifest:
        rehash(bad)
    with pytest.warns(UserWarning, match=rf"skipping checkpoint step_0000004: .*{reason}"):
        loaded = ckpt.load_checkpoint(run)
    assert loaded.step == 2 and loaded.path.parent.name == "step_0000002"
    if name.endswith("raw weights"):  # a run falls back past it (as `ddpm info` says it fails), but named
        assert ckpt.load_checkpoint(bad).step == 4  # explicitly its intact EMA weights still sample
        return
    with pytest.raises(CheckpointError, match=reason):  # named explicitly: an error, never a silent fallback
        ckpt.load_checkpoint(bad)
    code = main(["sample", "--ckpt", str(bad), "-n", "1", "--steps", "2", "--sampler", "ddim",
                 "--grid", str(run / "s.png"), "--no-progress", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and reason.split()[0] in err and "Traceback" not in err
    assert not (run / "s.png").exists()


def test_nan_weights_are_refused_for_sampling_with_a_clear_error(tmp_path, capsys):
    c = get_preset("digits-tiny")
    from ddpm.models.registry import build_model

    state = nan_first(build_model(c.model).state_dict())
    d = ckpt.save_checkpoint(tmp_path / "nan", config=c, step=3, ema_state=state)  # hashes match: written so
    with pytest.raises(CheckpointError, match="non-finite weights .* cannot be sampled"):
        ckpt.load_checkpoint(d)
    assert main(["sample", "--ckpt", str(d), "-n", "1", "--grid", str(tmp_path / "x.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite weights" in err[0]


def test_resume_past_a_damaged_checkpoint_is_still_bit_identical(run, straight):
    half_zero(run / "checkpoints" / "step_0000004" / "model.safetensors")
    with pytest.warns(UserWarning, match="skipping checkpoint step_0000004"):
        tr = Trainer(None, run, resume=True, progress=False, tensorboard=False)
    tr.train(steps=6)
    tr.close()
    a, b = ckpt.latest_checkpoint(run), ckpt.latest_checkpoint(straight)
    for name in ("model.safetensors", "ema.safetensors"):
        sa, sb = ckpt.read_weights(a / name)[0], ckpt.read_weights(b / name)[0]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [(r["step"], r["loss"]) for r in read_metrics(run)] == [(r["step"], r["loss"]) for r in read_metrics(straight)]


def test_info_reports_per_checkpoint_verification(run, capsys):
    half_zero(run / "checkpoints" / "step_0000004" / "ema.safetensors")
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "verifies:    step_0000002 yes (sha256)" in out
    assert "verifies:    step_0000004 NO: " in out and "sha256" in out
    assert "resumable:   yes, from step_0000002" in out
    assert "checkpoint:  " + str(run / "checkpoints" / "step_0000002") in out
    half_zero(run / "checkpoints" / "step_0000002" / "ema.safetensors")
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "resumable:   no (no checkpoint verifies)" in out and "network:" in out
    code = main(["train", "--resume", "--run-dir", str(run), "--no-progress", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "no complete checkpoint" in err and "2 damaged" in err and "Traceback" not in err


def test_latest_pointer_lagging_behind_is_not_followed(run):
    """A process killed between renaming a checkpoint into place and updating `latest` leaves a complete
    newer checkpoint; resume and sampling use it (docs/training.md)."""
    (run / "checkpoints" / "latest").write_text("step_0000002\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.latest_checkpoint(run).name == "step_0000004"
        assert ckpt.load_checkpoint(run).step == 4
        tr = Trainer(None, run, resume=True, progress=False, tensorboard=False)
    assert tr.step == 4
    tr.close()


def test_checkpoints_without_hashes_load_by_size_with_a_note(run):
    d = run / "checkpoints" / "step_0000004"
    m = json.loads((d / "manifest.json").read_text())
    m_hashes = m.pop("sha256")
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.warns(UserWarning, match="written before checkpoints recorded content hashes; checked by file size"):
        assert ckpt.load_checkpoint(d).step == 4
    assert ckpt.add_hashes(d)["sha256"] == m_hashes  # how an older checkpoint (e.g. an asset) gets them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt.verify_checkpoint(d)
    (d / "manifest.json").write_text(json.dumps(m))  # without the hashes again
    f = d / "ema.safetensors"
    f.write_bytes(f.read_bytes()[:-8])  # the size check still catches truncation
    with pytest.raises(CheckpointError, match="truncated"):
        ckpt.verify_checkpoint(d)


def test_shipped_digits_checkpoint_still_loads(monkeypatch):
    from importlib import resources

    monkeypatch.setattr(ckpt, "_NOTED", set())  # the note comes once per process

    path = resources.files("ddpm") / "assets" / "digits"
    manifest = json.loads((path / "manifest.json").read_text())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = ckpt.load_checkpoint(path)
    assert loaded.model is not None
    if "sha256" not in manifest:  # written before the hashes: the size check and a note
        assert any("content hashes" in str(w.message) for w in caught)


def test_manifest_records_sha256_of_every_file(base):
    d = base / "checkpoints" / "step_0000004"
    m = json.loads((d / "manifest.json").read_text())
    assert set(m["sha256"]) == set(m["files"]) == {"model.safetensors", "ema.safetensors", "train_state.safetensors",
                                                   "train_state.json", "progress.json", "config.json"}
    import hashlib

    for name, digest in m["sha256"].items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest
