"""What a training loop shows and listens to, apart from the maths: progress, signals, a wall clock.

- :class:`Progress`: a tqdm bar on a terminal; elsewhere (nohup, SLURM, CI logs) one line on stderr at
  most every ``interval`` seconds — step, loss, images/s, time trained and the estimated time left —
  so that a log file shows a run's progress while it runs.
- :class:`StopSignals`: SIGTERM (a scheduler's pre-emption, ``kill``) and SIGINT (Ctrl-C) ask the loop
  to finish the current step, write a checkpoint and stop; a second one stops at once (every
  checkpoint write is atomic, so even that loses only the steps since the last checkpoint).
- :class:`CheckpointClock`: ``train.ckpt_minutes`` — checkpoints every N minutes of wall time as well as
  every ``train.ckpt_every`` steps (the authors' code saved every 1,600 seconds).

None of them touches a random stream or the model, so exact resume is unaffected.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report


def format_duration(seconds: float | None) -> str:
    """``1d 02:03:04`` / ``02:03:04`` / ``?`` for unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{h:02d}:{m:02d}:{s:02d}"


class Progress:
    """Progress of the steps ``initial`` … ``total``.

    ``show``: True — a tqdm bar; None — a bar on a terminal, lines elsewhere; False — nothing.
    ``elapsed_before``: seconds trained by earlier processes of the same run (resume).
    """

    def __init__(self, *, total: int, initial: int, batch_size: int, show: bool | None, is_main: bool = True,
                 interval: float = 30.0, elapsed_before: float = 0.0, stream=None):
        self.stream = stream or sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.mode = None if not is_main or show is False else ("bar" if show or tty else "lines")
        self.total, self.initial, self.batch_size, self.interval = total, initial, batch_size, interval
        self.elapsed_before = elapsed_before
        self.start = time.monotonic()
        self._last_line = None
        self.loss: float | None = None
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, desc="train", file=self.stream)

    # ---- time
    def elapsed(self) -> float:
        """Seconds trained by this run so far, across resumes."""
        return self.elapsed_before + time.monotonic() - self.start

    def eta(self, step: int) -> float | None:
        done, dt = step - self.initial, time.monotonic() - self.start
        if done <= 0 or dt <= 0:
            return None
        return (self.total - step) * dt / done

    def rate(self, step: int) -> float:
        """Images per second since this process started training."""
        dt = time.monotonic() - self.start
        return (step - self.initial) * self.batch_size / dt if dt > 0 else 0.0

    # ---- display
    def update(self, step: int, record: dict | None = None) -> None:
        """After each step; ``record`` when this step logged metrics."""
        if record is not None and "loss" in record:
            self.loss = record["loss"]
        if self.mode == "bar":
            self.bar.update(step - self.bar.n)
            if record is not None and "loss" in record:
                self.bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_sec']:.0f}")
        elif self.mode == "lines":
            now = time.monotonic()
            if self._last_line is None or now - self._last_line >= self.interval or step == self.total:
                self._last_line = now
                self.line(step)

    def line(self, step: int) -> None:
        loss = f"loss {self.loss:.4f}  " if self.loss is not None else ""
        print(f"ddpm train: step {step}/{self.total} ({100 * step / max(self.total, 1):.1f}%)  {loss}"
              f"{self.rate(step):.1f} img/s  elapsed {format_duration(self.elapsed())}  "
              f"ETA {format_duration(self.eta(step))}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StopSignals:
    """While active, the first SIGTERM/SIGINT only sets :attr:`signum`; the loop checkpoints and stops.

    Installed only from the main thread (Python delivers signals there); elsewhere, or with
    ``enabled=False``, signals keep their usual effect. The previous handlers come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool = True, stream=None, announce: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self.stream = stream or sys.stderr
        self.announce = announce  # under DDP every rank gets the signal; rank 0 says so
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        # the next one of this kind acts as usual (SIGINT: KeyboardInterrupt, SIGTERM: exit)
        signal.signal(signum, self._previous.get(signum) or signal.SIG_DFL)
        name = signal.Signals(signum).name
        if self.announce:
            print(f"ddpm train: {name} received: saving a checkpoint after this step, then stopping "
                  f"(send {name} again to stop at once)", file=self.stream, flush=True)

    def __enter__(self) -> "StopSignals":
        if self.enabled:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


class CheckpointClock:
    """Says when ``minutes`` of wall time have passed since the last checkpoint (0: never)."""

    def __init__(self, minutes: float):
        self.seconds = 60.0 * minutes
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = time.monotonic()


__all__ = ["Progress", "StopSignals", "CheckpointClock", "SIGNAL_EXIT_CODES", "format_duration"]
