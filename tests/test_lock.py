"""One writer per run directory (and per `eval nll --out` chunk folder): the lock, its messages, and two
trainers racing on one new run directory."""

import hashlib
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from ddpm import checkpoint as ckpt
from ddpm.config import apply_overrides
from ddpm.lock import DirLock, LockError
from ddpm.presets import get_preset
from ddpm.train.metrics import read_metrics
from ddpm.train.trainer import Trainer

OVERRIDES = ["train.batch_size=4", "train.ckpt_every=2", "train.keep_checkpoints=0", "train.log_every=1"]


def cfg(*more):
    return apply_overrides(get_preset("digits-tiny"), [*OVERRIDES, *more])


def _hold_in_child(directory, ready):
    """A separate process that takes the lock and keeps it until killed (the test's "other trainer")."""
    code = ("import sys, time; from ddpm.lock import DirLock; held = DirLock(sys.argv[1], 'run directory').acquire(); "
            "open(sys.argv[2], 'w').write('held'); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(directory), str(ready)])
    for _ in range(600):
        if ready.exists():
            return proc
        if proc.poll() is not None:
            raise RuntimeError("lock holder died")
        import time

        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("lock holder did not start")


def test_lock_excludes_other_processes_and_names_the_holder(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    holder = _hold_in_child(d, tmp_path / "ready")
    try:
        with pytest.raises(LockError, match=rf"run directory .* is in use by pid {holder.pid} on "):
            DirLock(d, "run directory").acquire()
        assert DirLock(d).holder()["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock; its record is reported once and replaced
    with pytest.warns(UserWarning, match=rf"pid {holder.pid} .* died without releasing its lock; taking over"):
        lock = DirLock(d, "run directory").acquire()
    assert json.loads((d / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (d / ".lock").read_text() == ""  # released cleanly: nothing to report next time
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DirLock(d).acquire().release()


def test_lock_is_reentrant_within_a_process(tmp_path):
    a = DirLock(tmp_path, "run directory").acquire()
    b = DirLock(tmp_path, "run directory").acquire()  # e.g. a second Trainer on the run, in one process
    assert a.holder() is None  # not "busy" for its own process
    a.release()
    code = "import sys; from ddpm.lock import DirLock; held = DirLock(sys.argv[1]).acquire()"
    still = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert still.returncode != 0 and "is in use by pid" in still.stderr  # b holds it
    b.release()
    free = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert free.returncode == 0, free.stderr


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_while_another_process_trains_changes_nothing(tmp_path):
    """The second `--resume` of issue 17 rewrote config.json before failing; now it stops at the lock."""
    run = tmp_path / "run"
    Trainer(cfg(), run, progress=False, tensorboard=False).train(steps=2)
    before = {p.name: _sha(p) for p in (run / "config.json", run / "metrics.jsonl")}
    holder = _hold_in_child(run, tmp_path / "ready")
    try:
        proc = subprocess.run([sys.executable, "-m", "ddpm", "train", "--resume", "--run-dir", str(run), "--steps", "4",
                               "--set", "train.log_every=2", "--threads", "1", "--no-progress"],
                              capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"is in use by pid {holder.pid}" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name: _sha(p) for p in (run / "config.json", run / "metrics.jsonl")} == before


def test_new_run_into_a_directory_being_written_names_the_holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # a run that another process has just started
    holder = _hold_in_child(run, tmp_path / "ready")
    try:
        with pytest.raises(LockError, match=f"in use by pid {holder.pid}"):
            Trainer(cfg(), run, progress=False, tensorboard=False)
        (run / "config.json").unlink()  # a new run still setting up (config.json is written last)
        with pytest.raises(LockError, match=f"in use by pid {holder.pid}"):
            Trainer(None, run, resume=True, progress=False, tensorboard=False)
        (run / "config.json").write_text("{}")
    finally:
        holder.kill()
        holder.wait()
    assert (run / "config.json").read_text() == "{}"


def test_two_trainers_racing_on_one_new_run_directory(tmp_path):
    """Started together with different seeds: one trains, the other exits 2 with one line naming the holder,
    and the run is a clean single-seed run, checkpoint for checkpoint the same as a straight run."""
    run = tmp_path / "raced"
    steps = 10  # long enough (seconds) that the loser reaches the lock while the winner trains
    procs = []
    for seed in (1, 2):
        cmd = [sys.executable, "-m", "ddpm", "train", "--preset", "digits-tiny", "--run-dir", str(run), "--steps",
               str(steps), "--threads", "1", "--no-progress", "--no-tensorboard", "--set", f"train.seed={seed}"]
        for o in OVERRIDES:
            cmd += ["--set", o]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    winner = 1 + [rc for rc, _ in results].index(0)
    loser_err = [err for rc, err in results if rc == 2][0]
    lines = loser_err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in loser_err, loser_err
    # normally the loser meets the winner's lock; on a very loaded machine it may only arrive after the
    # winner has finished, and then it finds a finished run
    assert ("is in use by pid" in lines[0]) or ("already exists and is not empty" in lines[0]), lines[0]

    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["seed"] == winner
    for d in ckpt.list_checkpoints(run):
        assert json.loads((d / "config.json").read_text())["train"]["seed"] == winner
    assert [r["step"] for r in read_metrics(run)] == list(range(1, steps + 1))  # one writer, no interleaving

    straight = tmp_path / "straight"
    Trainer(cfg(f"train.seed={winner}"), straight, progress=False, tensorboard=False).train(steps=4)
    a, b = ckpt.load_checkpoint(run / "checkpoints" / "step_0000004"), ckpt.load_checkpoint(straight)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_eval_nll_chunk_directory_is_locked(tmp_path):
    from ddpm.evaluate.likelihood import evaluate_bpd

    cdir = tmp_path / "out" / "bpd_chunks"
    cdir.mkdir(parents=True)
    holder = _hold_in_child(cdir, tmp_path / "ready")
    diffusion = get_preset("digits-tiny").diffusion.build()
    try:
        with pytest.raises(LockError, match=f"chunk directory .* is in use by pid {holder.pid}"):
            evaluate_bpd(torch.nn.Identity(), diffusion, torch.zeros(2, 1, 4, 4), chunk_dir=cdir, device="cpu")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in cdir.iterdir()) == [".lock"]  # nothing computed, nothing written
