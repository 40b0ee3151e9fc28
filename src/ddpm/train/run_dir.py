"""Taking a run directory: its lock, a new run's empty directory, a resumed run's saved config.

Only one process writes a run directory. Its lock (:class:`ddpm.lock.DirLock`, ``RUN/.lock``) is taken
before anything in it is written or its ``config.json`` is read for a resume, and held until the
trainer closes; a second process exits with one line naming the holder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ddpm import distributed
from ddpm.config import Config
from ddpm.errors import CheckpointError, ConfigError
from ddpm.lock import DirLock, LockError, is_lock_file

# Fields that may differ between the saved config of a run and the config passed to resume it: they
# change what is logged, saved or how fast, never the trajectory. (precision and compile change the
# float rounding; they stay changeable so a run can move between machines.) The knobs grad_accum,
# lr_schedule, lr_final_ratio and weight_decay are deliberately absent: they change the updates, so a
# resumed run would not continue the saved one bit for bit. train.steps is the horizon of a decaying
# lr_schedule and may change only under the constant one.
RESUMABLE_FIELDS = ("steps", "log_every", "sample_every", "ckpt_every", "keep_checkpoints",
                    "num_sample_images", "sample_steps", "compile", "precision", "ckpt_minutes")


def take_run_dir(run_dir: Path, lock: DirLock, config: Config | None, resume: bool, dist) -> Config:
    """Lock ``run_dir`` on rank 0 (creating it for a new run) and return the config to train: ``config``
    for a new run, the saved one (or ``config`` when it differs only in RESUMABLE_FIELDS) for a resume."""
    error = _claim(run_dir, lock, resume) if dist.is_main else None  # rank 0 looks, creates and locks
    error = distributed.broadcast_object(error)
    if error:
        kind, message = error
        raise (LockError if kind == "lock" else CheckpointError)(message)
    if not resume:
        if config is None:
            raise ConfigError("no config given: pass a preset (or resume an existing run)")
        return config
    saved_path = run_dir / "config.json"
    try:
        saved = Config.from_json(saved_path.read_text())
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot resume: {saved_path} is unreadable ({e})") from None
    return saved if config is None else resume_config(saved, config)


def resume_config(saved: Config, config: Config) -> Config:
    """``config`` if it may resume a run saved with ``saved``, else a one-line ConfigError."""
    a, b = saved.to_dict(), config.to_dict()
    for t in (a["train"], b["train"]):
        for k in RESUMABLE_FIELDS:
            t.pop(k, None)
    for d in (a, b):  # the default sampler does not change training
        d.pop("preset", None), d.pop("sampling", None)
    if Config.from_dict(a).to_dict() != Config.from_dict(b).to_dict():
        diff = [f"{s}.{k}" for s in ("model", "diffusion", "train", "data")
                for k in a[s] if a[s][k] != b[s].get(k)]
        raise ConfigError(f"--resume: the given settings differ from the run's saved config in "
                          f"{', '.join(diff)}, which would change the training trajectory; resume without "
                          "them or start a new --run-dir")
    if saved.train.lr_schedule != "constant" and config.train.steps != saved.train.steps:
        raise ConfigError(f"--resume: train.steps is the horizon of the run's {saved.train.lr_schedule} "
                          "learning-rate decay, so changing it would change the trajectory; use --steps N "
                          "to stop earlier (or to train on at the final rate) instead")
    return config


def _has_content(directory: Path) -> bool:
    return any(not is_lock_file(p) for p in directory.iterdir())


def _claim(d: Path, lock: DirLock, resume: bool) -> tuple[str, str] | None:
    """Lock the run directory (creating it for a new run); (kind, message) on failure.

    A new run needs an empty directory. The lock is taken before the directory is looked at a second
    time, so two processes starting one run cannot both find it empty."""
    if resume:
        if not (d / "config.json").is_file():
            holder = lock.holder()  # a new run still setting up writes config.json last
            if holder is not None:
                return "lock", lock.busy_message(holder)
            return "checkpoint", f"cannot resume: {d} is not a run directory (no config.json)"
        try:
            lock.acquire()
        except LockError as e:
            return "lock", str(e)
        return None
    busy = (f"run directory {d} already exists and is not empty; "
            "pass --resume to continue it or choose a new --run-dir")
    if d.exists() and not d.is_dir():
        return "checkpoint", f"run directory {d} is a file; choose a new --run-dir"
    if d.is_dir() and _has_content(d):
        holder = lock.holder()  # a run being written right now: say by whom
        return ("lock", lock.busy_message(holder)) if holder is not None else ("checkpoint", busy)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return "checkpoint", f"cannot create run directory {d}: {e.strerror}"
    if not os.access(d, os.W_OK):
        return "checkpoint", f"run directory {d} is not writable"
    try:
        lock.acquire()
    except LockError as e:
        return "lock", str(e)
    if _has_content(d):  # filled by another process between the first look and the lock
        lock.release()
        return "checkpoint", busy
    return None


__all__ = ["RESUMABLE_FIELDS", "take_run_dir", "resume_config"]
