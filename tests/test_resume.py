"""Exact resume: an interrupted run (even SIGKILLed mid-checkpoint) ends bit-identical to a straight one."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from ddpm.config import apply_overrides
from ddpm.presets import get_preset
from ddpm import checkpoint as ckpt
from ddpm.train.metrics import read_metrics
from ddpm.train.trainer import Trainer

# Class-conditional with label drop-out, dropout and flips: every random stream is exercised.
OVERRIDES = ["train.batch_size=4", "train.ckpt_every=2", "train.log_every=1", "model.dropout=0.1",
             "data.class_labels=true", "train.class_dropout=0.3"]


def config():
    return apply_overrides(get_preset("digits-tiny"), OVERRIDES)


def assert_same_run(a_dir, b_dir):
    a, b = ckpt.latest_checkpoint(a_dir), ckpt.latest_checkpoint(b_dir)
    assert a.name == b.name
    for name in ("model.safetensors", "ema.safetensors"):
        sa, _ = ckpt.read_weights(a / name)
        sb, _ = ckpt.read_weights(b / name)
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}:{k}"
    ta, ja = ckpt.load_train_state(a)
    tb, jb = ckpt.load_train_state(b)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert ja == jb
    la = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(a_dir)]
    lb = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(b_dir)]
    assert la == lb


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 6-step run every interrupted one must reproduce."""
    d = tmp_path_factory.mktemp("resume") / "straight"
    Trainer(config(), d, progress=False, tensorboard=False).train(steps=6)
    return d


def test_resume_is_bit_identical(tmp_path, reference):
    ref = reference
    run = tmp_path / "interrupted"
    Trainer(config(), run, progress=False, tensorboard=False).train(steps=3)
    torch.manual_seed(1234)  # whatever happened in between must not matter
    resumed = Trainer(None, run, resume=True, progress=False, tensorboard=False)
    assert resumed.step == 3
    resumed.train(steps=6)
    assert_same_run(ref, run)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6]


class _Crash(Exception):
    pass


def test_crash_during_checkpoint_write_then_resume(tmp_path, monkeypatch, reference):
    """Fast in-process variant: the kill hook raises instead, leaving the same half-written temp dir."""
    ref = reference
    run = tmp_path / "crashed"
    monkeypatch.setenv("DDPM_TEST_KILL_DURING_CHECKPOINT", "4")

    def fake_kill(pid, sig):
        raise _Crash

    monkeypatch.setattr(ckpt.os, "kill", fake_kill)
    with pytest.raises(_Crash):
        Trainer(config(), run, progress=False, tensorboard=False).train(steps=6)
    monkeypatch.delenv("DDPM_TEST_KILL_DURING_CHECKPOINT")
    assert (run / "checkpoints" / ".tmp-step_0000004").is_dir()
    assert ckpt.latest_checkpoint(run).name == "step_0000002"
    resumed = Trainer(None, run, resume=True, progress=False, tensorboard=False)
    assert resumed.step == 2
    resumed.train(steps=6)
    assert_same_run(ref, run)


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_then_resume(tmp_path, reference):
    ref = reference
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ddpm", "train", "--preset", "digits-tiny", "--run-dir", str(run), "--steps", "6",
           "--threads", str(torch.get_num_threads()), "--no-progress"]
    for o in OVERRIDES:
        cmd += ["--set", o]
    env = {**os.environ, "DDPM_TEST_KILL_DURING_CHECKPOINT": "4"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckdir = run / "checkpoints"
    assert (ckdir / ".tmp-step_0000004" / "model.safetensors").is_file()  # half-written, never renamed
    assert not (ckdir / "step_0000004").exists()
    assert (ckdir / "latest").read_text().strip() == "step_0000002"
    assert max(r["step"] for r in read_metrics(run)) == 4  # logged past the last checkpoint

    resumed = Trainer(None, run, resume=True, progress=False, tensorboard=False)
    assert resumed.step == 2
    resumed.train(steps=6)
    assert_same_run(ref, run)
    assert not (ckdir / ".tmp-step_0000004").exists()
