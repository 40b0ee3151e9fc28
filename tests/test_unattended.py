"""Unattended training (issue 18) and exact logs after resume (issue 17): progress lines without a terminal,
SIGTERM/SIGINT write a checkpoint and stop, time-based checkpoints, a full disk — each resuming bit for bit."""

import errno
import io
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from ddpm import checkpoint as ckpt
from ddpm.cli import main
from ddpm.config import apply_overrides
from ddpm.errors import CheckpointError
from ddpm.presets import get_preset
from ddpm.train.loop_io import Progress, format_duration
from ddpm.train.metrics import read_metrics
from ddpm.train.trainer import Trainer

# Class-conditional with label drop-out and flips: every random stream is exercised.
BASE = ["train.batch_size=4", "train.keep_checkpoints=0", "data.class_labels=true", "train.class_dropout=0.3"]
LINE = re.compile(r"ddpm train: step \d+/\d+ \(\d+\.\d%\)  loss \d+\.\d{4}  \d+\.\d img/s  "
                  r"elapsed (\d+d )?\d\d:\d\d:\d\d  ETA ((\d+d )?\d\d:\d\d:\d\d|\?)")


def cfg(*more):
    return apply_overrides(get_preset("digits-tiny"), [*BASE, *more])


def new(config, d):
    return Trainer(config, d, progress=False, tensorboard=False)


def resume(d):
    return Trainer(None, d, resume=True, progress=False, tensorboard=False)


def records(d, keys=("step", "loss", "grad_norm", "lr", "loss_by_t")):
    return [tuple(r.get(k) for k in keys) for r in read_metrics(d)]


def assert_same_weights(a_dir, b_dir):
    a, b = ckpt.latest_checkpoint(a_dir), ckpt.latest_checkpoint(b_dir)
    assert a.name == b.name
    for name in ("model.safetensors", "ema.safetensors", "train_state.safetensors"):
        sa, sb = ckpt.read_weights(a / name)[0], ckpt.read_weights(b / name)[0]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}:{k}"


def hook_at(trainer, step, action):
    """Call ``action()`` during the update that takes ``trainer`` from ``step`` to ``step + 1``."""
    real = trainer.objective.after_step

    def after_step(model):
        real(model)
        if trainer.step == step:
            action()

    trainer.objective.after_step = after_step


# ----------------------------------------------------------------------------- exact logs after resume


@pytest.fixture(scope="module")
def straight8(tmp_path_factory):
    d = tmp_path_factory.mktemp("unattended") / "straight"
    t = new(cfg("train.log_every=3", "train.ckpt_every=2"), d)
    t.train(steps=8)
    t.close()
    return d


def test_logs_after_a_crash_equal_an_uninterrupted_run(tmp_path, straight8):
    """log_every=3, ckpt_every=2: the checkpoint of step 4 falls between records; the running sums it
    carries make the resumed run log exactly the records (step, loss, per-t loss) of a straight one."""
    run = tmp_path / "crashed"
    t = new(cfg("train.log_every=3", "train.ckpt_every=2"), run)

    class Crash(Exception):
        pass

    def crash():
        raise Crash

    hook_at(t, 5, crash)  # dies in update 6: checkpoint 4 is the newest, records up to step 3 remain
    with pytest.raises(Crash):
        t.train(steps=8)
    t.close()
    assert [r["step"] for r in read_metrics(run)] == [3]
    r = resume(run)
    assert r.step == 4 and r.running.count == 1  # step 4's loss waits in the restored sums
    r.train(steps=8)
    r.close()
    assert records(run) == records(straight8)
    assert [x[0] for x in records(run)] == [3, 6, 8]
    assert_same_weights(run, straight8)


def test_sigint_checkpoints_then_stops_and_resumes_exactly(tmp_path, straight8):
    run = tmp_path / "interrupted"
    t = Trainer(cfg("train.log_every=3", "train.ckpt_every=2"), run, progress=False, tensorboard=False)
    hook_at(t, 4, lambda: os.kill(os.getpid(), signal.SIGINT))  # Ctrl-C during update 5
    previous = signal.getsignal(signal.SIGINT)
    t.train(steps=8)
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is gone after train()
    assert t.stopped_by == signal.SIGINT and t.step == 5
    assert (run / "checkpoints" / "step_0000005").is_dir()  # written on the signal, not a ckpt_every step
    t.close()
    r = resume(run)
    assert r.step == 5
    r.train(steps=8)
    r.close()
    assert records(run) == records(straight8)
    assert_same_weights(run, straight8)


def test_sigterm_in_a_subprocess_checkpoints_exits_143_and_resumes_bit_for_bit(tmp_path):
    """`ddpm train` with stderr going to a log file (no terminal), SIGTERMed mid-run: the log shows
    progress lines, the process writes a checkpoint of the step it was in and exits 143; resuming ends
    exactly where an uninterrupted run ends."""
    run, log = tmp_path / "run", tmp_path / "train.log"
    over = [*BASE, "train.log_every=1", "train.ckpt_every=0"]  # no step checkpoints: only the signal's
    cmd = [sys.executable, "-m", "ddpm", "train", "--preset", "digits-tiny", "--run-dir", str(run), "--steps",
           "100000", "--threads", "1", "--no-tensorboard"]
    for o in over:
        cmd += ["--set", o]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not ((run / "metrics.jsonl").is_file() and len(read_metrics(run)) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 143, text
    assert "Traceback" not in text
    saved = ckpt.list_checkpoints(run)
    assert len(saved) == 1, text
    s = int(saved[0].name.split("_")[1])
    assert s >= 3 and max(r["step"] for r in read_metrics(run)) == s
    assert LINE.search(text), text  # a progress line without a terminal
    assert "SIGTERM received: saving a checkpoint after this step" in text
    assert f"stopped by SIGTERM at step {s}; checkpoint saved; continue with: ddpm train --resume" in text

    r = resume(run)
    r.train(steps=s + 2)
    r.close()
    straight = tmp_path / "straight"
    t = new(apply_overrides(get_preset("digits-tiny"), [*over, "train.steps=100000"]), straight)
    t.train(steps=s + 2)
    t.close()
    assert_same_weights(run, straight)
    assert records(run) == records(straight)


def test_time_based_checkpoints_leave_the_trajectory_alone(tmp_path, straight8):
    """train.ckpt_minutes tiny: a checkpoint after every step, by the clock alone (ckpt_every=0)."""
    run = tmp_path / "timed"
    t = new(cfg("train.log_every=3", "train.ckpt_every=0", "train.ckpt_minutes=1e-9"), run)
    t.train(steps=8)
    t.close()
    assert [d.name for d in ckpt.list_checkpoints(run)] == [ckpt.step_dir_name(s) for s in range(1, 9)]
    assert_same_weights(run, straight8)
    assert records(run) == records(straight8)
    for d in ckpt.list_checkpoints(run)[5:]:  # resume from the clock's checkpoint of step 5
        import shutil

        shutil.rmtree(d)
    r = resume(run)
    assert r.step == 5
    r.config.train.ckpt_minutes = 0.0
    r.train(steps=8)
    r.close()
    assert_same_weights(run, straight8)
    assert records(run) == records(straight8)


# ----------------------------------------------------------------------------- a full disk


def test_disk_full_during_a_checkpoint(tmp_path, monkeypatch, capsys):
    """ENOSPC while writing the checkpoint of step 4: one line, the half-written copy removed, step 2
    intact; once there is space again the resumed run is the uninterrupted one."""
    real = ckpt.save_file

    def full_disk(tensors, path, metadata=None):
        if metadata and metadata.get("step") == "4":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    run = tmp_path / "run"
    args = ["train", "--preset", "digits-tiny", "--run-dir", str(run), "--steps", "6", "--threads", "1",
            "--no-progress", "--no-tensorboard"]
    for o in [*BASE, "train.ckpt_every=2"]:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "cannot write checkpoint step_0000004" in err[0] and "No space left on device" in err[0]
    assert "earlier checkpoints are intact (newest: step_0000002)" in err[0]
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000002"]  # no .tmp-* left behind
    ckpt.check_checkpoint(root / "step_0000002")
    monkeypatch.setattr(ckpt, "save_file", real)  # space freed
    assert main(["train", "--resume", "--run-dir", str(run), "--threads", "1", "--no-progress",
                 "--no-tensorboard"]) == 0
    straight = tmp_path / "straight"
    t = new(cfg("train.ckpt_every=2", "train.steps=6"), straight)
    t.train()
    t.close()
    assert_same_weights(run, straight)
    assert records(run) == records(straight)


def test_checkpoint_write_error_direct(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "_fsync_dir", lambda p: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    c = get_preset("digits-tiny")
    from ddpm.models.registry import build_model

    with pytest.raises(CheckpointError, match="cannot write checkpoint step_0000001 .* Read-only file system"):
        ckpt.save_checkpoint(tmp_path / "c" / "step_0000001", config=c, step=1,
                             ema_state=build_model(c.model).state_dict())
    assert not any((tmp_path / "c").glob(".tmp-*"))


# ----------------------------------------------------------------------------- progress display


def test_progress_lines_bar_or_nothing():
    out = io.StringIO()  # not a terminal
    p = Progress(total=10, initial=0, batch_size=4, show=None, stream=out, interval=3600)
    assert p.mode == "lines"
    p.update(1, {"loss": 0.5, "images_per_sec": 10.0})
    p.update(2)  # within the interval: quiet
    p.update(10, {"loss": 0.25, "images_per_sec": 10.0})  # the last step always reports
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(LINE.fullmatch(line) for line in lines), lines
    assert "step 10/10 (100.0%)  loss 0.2500" in lines[1]
    assert Progress(total=1, initial=0, batch_size=1, show=False, stream=io.StringIO()).mode is None
    assert Progress(total=1, initial=0, batch_size=1, show=None, is_main=False, stream=io.StringIO()).mode is None
    bar = Progress(total=5, initial=2, batch_size=1, show=True, stream=io.StringIO())
    assert bar.mode == "bar"
    bar.update(3, {"loss": 0.1, "images_per_sec": 3.0})
    bar.close()
    assert (format_duration(3725), format_duration(90061), format_duration(None)) == ("01:02:05", "1d 01:01:01", "?")


def test_elapsed_time_accumulates_across_resumes(tmp_path):
    run = tmp_path / "run"
    t = new(cfg("train.ckpt_every=2"), run)
    t.train(steps=2)
    t.close()
    import json

    first = json.loads((run / "checkpoints" / "step_0000002" / "progress.json").read_text())
    assert first["elapsed_seconds"] > 0 and first["images_seen"] == 8
    r = resume(run)
    assert r.elapsed_before == pytest.approx(first["elapsed_seconds"], abs=1e-3)
    r.train(steps=4)
    r.close()
    second = json.loads((run / "checkpoints" / "step_0000004" / "progress.json").read_text())
    assert second["elapsed_seconds"] > first["elapsed_seconds"]
    last = read_metrics(run)[-1]
    assert last["elapsed"] >= first["elapsed_seconds"] and last["eta"] == 0.0 and last["wall_time"] > 1.6e9
