"""An exclusive lock on a directory that one process writes: a run directory, an ``eval nll --out`` folder.

The primitive is ``flock(2)`` on ``DIR/.lock``: the kernel drops the lock when its holder exits, however
it exits (SIGKILL and power loss included), so a lock can never be left behind by a dead process. The
file itself is kept (deleting a lock file races with a process that has just opened it) and holds a
JSON record of the holder — pid, host, start time, command — so that the process that finds the
directory taken can say by whom, and so that a record left by a holder that died without releasing
is reported when the next process takes over.

Within one process the lock is re-entrant: a second :class:`DirLock` on the same directory shares the
first one's file descriptor (``flock`` locks belong to an open file, so two opens in one process would
otherwise exclude each other). It is released when the last holder releases it, or when the process
ends. Where ``fcntl`` does not exist (Windows) the lock is a no-op.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from ddpm.errors import UserError

LOCK_NAME = ".lock"

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

# realpath of the directory -> [file descriptor, holders in this process]
_HELD: dict[str, list[int]] = {}


class LockError(UserError):
    """The directory is being written by another process."""


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)[:300]}


def _read_record(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        return json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None


def describe_holder(rec: dict | None) -> str:
    if not rec:
        return "another process (it left no record)"
    return f"pid {rec.get('pid', '?')} on {rec.get('host', '?')} (since {rec.get('started', '?')})"


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


class DirLock:
    """Hold ``directory``'s lock from :meth:`acquire` (or ``with``) until :meth:`release`.

    ``what`` names the directory in messages ("run directory", "output directory"). Acquiring creates
    the directory's lock file but not the directory: the caller creates it first.
    """

    def __init__(self, directory: str | os.PathLike, what: str = "directory"):
        self.directory = Path(directory)
        self.what = what
        self.key = os.path.realpath(self.directory)
        self.held = False
        self.stale: dict | None = None  # the record of a holder that died without releasing

    @property
    def path(self) -> Path:
        return self.directory / LOCK_NAME

    def acquire(self) -> "DirLock":
        if self.held:
            return self
        if fcntl is None:  # pragma: no cover
            self.held = True
            return self
        entry = _HELD.get(self.key)
        if entry is not None:
            entry[1] += 1
            self.held = True
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LockError(f"cannot create the lock file {self.path}: {e.strerror}") from None
        # A lock held with an empty record is either a holder between taking it and writing its record,
        # or another process's :meth:`holder` probe (microseconds): both pass, so retry for a moment.
        deadline = time.monotonic() + 1.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_record(fd)
                if holder or time.monotonic() > deadline:
                    os.close(fd)
                    raise LockError(self.busy_message(holder)) from None
                time.sleep(0.02)
            except OSError as e:  # e.g. a file system without locks
                os.close(fd)
                raise LockError(f"cannot lock {self.path}: {e.strerror}") from None
        previous = _read_record(fd)
        if previous:  # written by a holder that never released: it died (the kernel freed its lock)
            self.stale = previous
            gone = "" if previous.get("host") != socket.gethostname() or not _pid_alive(previous.get("pid")) \
                else " (that pid now belongs to another process)"
            warnings.warn(f"{self.what} {self.directory}: the previous writer, {describe_holder(previous)}, "
                          f"died without releasing its lock{gone}; taking over", stacklevel=2)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(_record()).encode())
        os.fsync(fd)
        _HELD[self.key] = [fd, 1]
        self.held = True
        return self

    def busy_message(self, holder: dict | None) -> str:
        return (f"{self.what} {self.directory} is in use by {describe_holder(holder)}; wait for it to finish "
                "or stop it (only one process may write there)")

    def holder(self) -> dict | None:
        """The record of another process holding the lock now (``{}`` when it wrote none), else None.
        Creates and changes nothing."""
        if fcntl is None or self.key in _HELD or not self.path.is_file():
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_record(fd) or {}
            except OSError:
                return None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        entry = _HELD.get(self.key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _HELD[self.key]
        fd = entry[0]
        try:
            os.ftruncate(fd, 0)  # an empty record = released cleanly
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # a forgotten Trainer must not keep its run locked for the life of the process
        try:
            self.release()
        except Exception:
            pass


@atexit.register
def _release_all() -> None:
    """At a normal exit, mark every lock this process still holds as released (the kernel frees the
    locks themselves), so the next writer does not report a crash that did not happen."""
    for fd, _ in list(_HELD.values()):
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
    _HELD.clear()


def is_lock_file(path: Path) -> bool:
    return path.name == LOCK_NAME


__all__ = ["DirLock", "LockError", "LOCK_NAME", "describe_holder", "is_lock_file"]
