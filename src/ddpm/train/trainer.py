"""The training loop of the paper (Algorithm 1 with the recipe of Ho et al. 2020, §4 and App. B), resumable bit for bit.

Randomness is drawn so that results depend neither on interruptions nor on the number of DDP ranks:

- The data order is a pure function of (seed, step): the global batch of step s is the positions
  s·B … (s+1)·B − 1 of an endless stream made of one seeded permutation per epoch.
- t, flips, label drop-out (a CPU generator) and the noise ε (a generator on the training device) are
  drawn for the whole GLOBAL batch on every rank from generators seeded identically; rank r then takes
  rows r·B/W … (r+1)·B/W − 1. Each example therefore gets the same (image, t, ε, flip) whatever the
  world size, and DDP's gradient average equals the single-process full-batch gradient.
- Generator states, the global torch RNG (dropout) and the optimizer are saved in every checkpoint.

Non-finite losses or gradients are detected without a host sync per step: a flag accumulates on the
device and is read at every log step and before every checkpoint, which is therefore never written
from a poisoned state.

Only one process writes a run directory: the trainer holds its lock (:mod:`ddpm.lock`) from before
anything is written until :meth:`Trainer.close`. Progress display, signals (SIGTERM/SIGINT: checkpoint,
then stop) and time-based checkpoints live in :mod:`ddpm.train.loop_io`; the learning rate, optimizer
and fp16 loss scaler in :mod:`ddpm.train.optim`; the checked reading of a checkpoint for resume in
:mod:`ddpm.train.state`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ddpm import accel
from ddpm.config import Config
from ddpm.errors import CheckpointError, ConfigError, UserError
from ddpm.lock import DirLock
from ddpm.train.timesteps import create_timestep_sampler
from ddpm import checkpoint as ckpt
from ddpm import distributed
from ddpm.train.batches import BatchDrawing, _epoch_permutation  # noqa: F401 (_epoch_permutation: tests)
from ddpm.train.ema import EMA
from ddpm.train.loop_io import CheckpointClock, Progress, StopSignals
from ddpm.train.metrics import MetricsLog, RunningLoss
from ddpm.train.objectives import build_objective, pack_state, unpack_state
from ddpm.train.run_dir import RESUMABLE_FIELDS, take_run_dir  # noqa: F401 (RESUMABLE_FIELDS: API)
from ddpm.train.optim import LossScaler, build_optimizer, learning_rate, warmup_lr  # noqa: F401 (warmup_lr: API)
from ddpm.train.state import pack_train_state, read_resume_state, restore_train_state
from ddpm.train.validate import validate_config

GENERATORS = ("gen_cpu", "gen_dev")  # the trainer's own random streams, saved in every checkpoint


class NonFiniteError(UserError):
    """The loss or the gradient norm became inf/NaN."""


def _same_weights(a, b) -> bool:
    """Whether networks ``a`` and ``b`` have the same parameter names and shapes (e.g. a U-Net and the
    consistency model built on it), so one's weights initialise the other."""
    from ddpm.models.registry import build_model

    def shapes(cfg):
        return {k: tuple(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}

    return shapes(a) == shapes(b)


class Trainer(BatchDrawing):
    """Train ``config`` into ``run_dir``; see the module docstring for the design.

    ``resume=True`` continues the run in ``run_dir`` from its newest checkpoint that verifies (``config``
    may be None, or the saved config with different ``train.steps``/logging intervals). ``init_from``
    starts a NEW run from the weights (and EMA) of a checkpoint, e.g. to fine-tune the shipped one or to
    start a distilled student from its teacher (any network with the same parameter names and shapes).
    ``progress``: True a tqdm bar, None a bar on a terminal and log lines elsewhere, False nothing.
    ``tensorboard``: True requires it, None uses it when installed, False never. ``handle_signals``:
    SIGTERM/SIGINT during :meth:`train` save a checkpoint and stop (:attr:`stopped_by` names the signal).
    Call :meth:`close` when done: it releases the run directory's lock.
    """

    def __init__(self, config: Config | None, run_dir, *, device=None, resume: bool = False,
                 init_from=None, dataset=None, progress: bool | None = None, tensorboard: bool | None = None,
                 handle_signals: bool = True):
        self.run_dir = Path(run_dir)
        self.dist, self.device = distributed.setup(device)
        if resume and init_from is not None:
            raise ConfigError("--resume and --init-from exclude each other")
        MetricsLog.check(tensorboard)  # before anything is written
        self.lock = DirLock(self.run_dir, "run directory")
        try:
            self._setup(config, resume, init_from, dataset, progress, tensorboard, handle_signals)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, config, resume, init_from, dataset, progress, tensorboard, handle_signals) -> None:
        if config is not None:  # a mistake in the given settings leaves no run directory behind
            self._check_config(config)
        config = take_run_dir(self.run_dir, self.lock, config, resume, self.dist)  # locks the run directory
        self.config = self._check_config(config)
        if self.config.train.precision == "auto":  # saved resolved, so a resume elsewhere keeps it
            train = dataclasses.replace(self.config.train, precision=accel.default_precision(self.device))
            self.config = dataclasses.replace(self.config, train=train)
        tc = self.config.train
        self.progress = progress
        self.handle_signals = handle_signals
        self.stopped_by: int | None = None
        self.is_main = self.dist.is_main

        # ---- data (uint8, moved to the device once when it fits)
        if dataset is None:
            from ddpm.data import load_dataset

            dataset = load_dataset(self.config.data)
        self.dataset = dataset
        self._prepare_data()

        # ---- network, EMA, optimizer, diffusion, timestep sampler
        torch.manual_seed(tc.seed)  # the network's initialisation, identical on every rank
        random.seed(tc.seed)
        np.random.seed(tc.seed)
        from ddpm.models.registry import build_model

        # channels_last on CUDA (exact; faster convolutions), plain NCHW on CPU.
        # (TF32 stays off: fp32 training means fp32 matmuls, as the paper's recipe)
        self.fast = accel.FastPath(channels_last=self.device.type == "cuda", precision=tc.precision, tf32=False)
        self.model = accel.prepare_model(build_model(self.config.model), self.fast, self.device)
        if not resume and init_from is None and hasattr(self.model, "prepare_training"):
            # A latent model loads its autoencoder and measures its latent scale on the run's first
            # 512 images (identical on every rank); resumed runs take both from the checkpoint.
            first = _epoch_permutation(tc.seed, 0, self.num_examples)[:512]
            self.model.prepare_training(self._images_at(first), seed=tc.seed)
        self.ema = EMA(self.model, tc.ema_decay)
        self.diffusion = self.config.diffusion.build()
        self.timestep_sampler = create_timestep_sampler(tc.timestep_sampler, self.diffusion.num_timesteps)
        self.objective = build_objective(self.config, self.diffusion, self.device)
        self.optimizer = build_optimizer(self.model.parameters(), tc, self.device)
        self.scaler = LossScaler(tc.precision, self.device)
        self.gen_cpu = torch.Generator().manual_seed(tc.seed)
        self.gen_dev = torch.Generator(device=self.device).manual_seed(tc.seed + 1)
        self.running = RunningLoss(self.diffusion.num_timesteps, self.device)
        self.step = 0
        self.ema_initialized = False
        self.elapsed_before = 0.0  # seconds trained by earlier processes of this run
        self._progress: Progress | None = None
        self._clock = CheckpointClock(tc.ckpt_minutes)

        if resume:
            self._load_state()
        elif init_from is not None:
            self._init_weights(init_from)
        self.ddp_model = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)
        self.forward_model = accel.compile_model(self.ddp_model) if tc.compile else self.ddp_model
        self._bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        if self.is_main:
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            if not (self.run_dir / "config.json").exists() or resume:
                ckpt.write_text_atomic(self.run_dir / "config.json", self.config.to_json())
            self.metrics = MetricsLog(self.run_dir, tensorboard=tensorboard)
            self.metrics.edges = self.running.edges
            if resume:
                self.metrics.truncate_after(self.step)
        distributed.barrier()

    # ------------------------------------------------------------------ setup helpers
    def _check_config(self, config: Config) -> Config:
        """The config validated, and fitting this device and number of ranks."""
        config = validate_config(config)
        tc = config.train
        if tc.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(f"train.precision=fp16 (float16 autocast with a loss scaler) needs a CUDA GPU; on "
                              f"{self.device.type} use fp32 (or bf16)")
        if tc.batch_size % (self.dist.world_size * tc.grad_accum):
            raise ConfigError(f"train.batch_size={tc.batch_size} is not divisible by the {self.dist.world_size} "
                              f"ranks x train.grad_accum={tc.grad_accum} micro-batches")
        return config

    def _init_weights(self, source) -> None:
        """Start from another checkpoint's weights: raw weights for training, its EMA for the EMA."""
        target = ckpt.resolve_checkpoint(source)
        files = [target] if target.is_file() else [target / n for n in ckpt.WEIGHT_FILES if (target / n).is_file()]
        if not files:
            raise CheckpointError(f"--init-from {source}: no weights found")
        states = {}
        for f in files:
            state, meta = ckpt.read_weights(f)
            other = ckpt.config_from_metadata(meta, f)
            if other.model != self.config.model and not _same_weights(other.model, self.config.model):
                raise ConfigError(f"--init-from {source}: its network config differs from this run's "
                                  "(model.* settings); use the same preset")
            states[meta.get("kind", f.stem)] = state
        raw = states.get("model", states.get("ema"))
        self.model.load_state_dict(raw)
        self.ema.load_state_dict(states.get("ema", raw), initialized=True)
        self.ema_initialized = True

    # ------------------------------------------------------------------ state
    def _state(self) -> tuple[dict, dict]:
        pos = self.step * self.config.train.batch_size
        obj_tensors, obj_json = pack_state(self.objective)
        run_tensors, run_json = self.running.state_dict()
        tensors, js = pack_train_state(
            self.optimizer, {"gen_cpu": self.gen_cpu, "gen_dev": self.gen_dev}, self.timestep_sampler.state_dict(),
            step=self.step, ema_initialized=self.ema_initialized,
            data_position={"epoch": pos // self.num_examples, "index": pos % self.num_examples},
            world_size=self.dist.world_size, objective=obj_json, running=run_json,
            grad_scaler=self.scaler.state_dict())
        tensors.update(obj_tensors)
        tensors.update(run_tensors)
        return tensors, js

    def _load_state(self) -> None:
        if not ckpt.list_checkpoints(self.run_dir):
            warnings.warn(f"{self.run_dir} has no checkpoint yet; starting it from step 0", stacklevel=4)
            return
        directory = ckpt.newest_usable(self.run_dir, self._restore)
        if self.is_main:
            print(f"resuming {self.run_dir} from {directory.name}", file=sys.stderr)

    def _restore(self, directory: Path) -> Path:
        """Load checkpoint ``directory`` into this trainer, or raise CheckpointError (everything is checked
        before anything is loaded; a later candidate overwrites all of it anyway)."""
        s = read_resume_state(directory, self.config, list(self.model.parameters()), GENERATORS)
        tensors, js = s["tensors"], s["json"]
        try:
            self.model.load_state_dict(s["model"])
            self.ema.load_state_dict(s["ema"], initialized=js["ema_initialized"])
            self.timestep_sampler.load_state_dict(
                restore_train_state(tensors, js, self.optimizer, {"gen_cpu": self.gen_cpu, "gen_dev": self.gen_dev}))
            self.objective.load_state_dict(unpack_state(tensors, js.get("objective", {})))
            self.running.load_state_dict(tensors, js.get("running", {}), rank=self.dist.rank)
            self.scaler.load_state_dict(js.get("grad_scaler", {}))
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise CheckpointError(f"checkpoint {directory}: its training state does not load "
                                  f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        self.ema_initialized = bool(js["ema_initialized"])
        self.step = int(js["step"])
        try:
            self.elapsed_before = float(json.loads((directory / "progress.json").read_text())["elapsed_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            self.elapsed_before = 0.0  # written before the time was recorded
        return directory

    def train_step(self) -> torch.Tensor:
        """One optimizer update; returns the (device) mean loss of this rank's slice.

        With ``train.grad_accum = k`` the slice is processed as k equal micro-batches whose gradients add
        up to the whole slice's (each micro-batch loss is its mean over k), so the update equals the
        one-pass update up to float rounding; the draws of the step are those of the whole batch."""
        tc = self.config.train
        x, t, weights, noise, kwargs = self._batch()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        k = tc.grad_accum
        m = x.shape[0] // k
        parts = []
        for i in range(k):
            sl = slice(i * m, (i + 1) * m)
            micro = {key: v[sl] for key, v in kwargs.items()} if k > 1 else kwargs
            # under DDP only the last micro-batch all-reduces the accumulated gradient
            sync = contextlib.nullcontext() if i == k - 1 or not self.dist.enabled else self.ddp_model.no_sync()
            with sync:
                with accel.autocast(self.device, tc.precision):
                    losses = self.objective.losses(self.forward_model, x[sl], t[sl], noise[sl], micro)
                per_example = losses["loss"].float()
                loss = (per_example * weights[sl]).mean()
                self.scaler.backward(loss / k if k > 1 else loss)
            parts.append(per_example.detach())
        per_example = torch.cat(parts) if k > 1 else parts[0]
        if k > 1:
            loss = (per_example * weights).mean()
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        lr = learning_rate(tc, self.step + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        self.ema.update(self.model)
        self.ema_initialized = True
        self.objective.after_step(self.model)
        self.timestep_sampler.update_with_losses(t, per_example)
        self.running.add(loss, t, per_example)
        self.step += 1
        # fp16: an overflowing gradient is a step the scaler skipped, not a failed run
        finite = torch.isfinite(loss) if self.scaler.skips_overflow else torch.isfinite(loss) & torch.isfinite(gnorm)
        bad = ~finite
        self._bad_step = torch.where(bad & ~self._bad, torch.full_like(self._bad_step, self.step), self._bad_step)
        self._bad |= bad
        self._last_gnorm = gnorm.detach()
        self._last_lr = lr
        return loss.detach()

    def _check_finite(self) -> None:
        bad = self._bad
        if distributed.is_initialized():
            bad = bad.clone().to(torch.uint8)
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bool(bad):
            raise NonFiniteError(
                f"loss or gradient became non-finite at step {int(self._bad_step)}; training stopped and the "
                f"last good checkpoint in {self.run_dir / 'checkpoints'} is untouched (try a lower train.lr)")

    # ------------------------------------------------------------------ loop
    def train(self, steps: int | None = None) -> dict:
        """Train until global step ``steps`` (default ``config.train.steps``); returns the last metrics.

        A SIGTERM/SIGINT (when ``handle_signals``) ends the step under way, writes a checkpoint and
        returns early with :attr:`stopped_by` set to the signal number."""
        tc = self.config.train
        target = tc.steps if steps is None else int(steps)
        if target <= 0:
            raise ConfigError(f"steps must be positive, got {target}")
        if target <= self.step:
            warnings.warn(f"run is already at step {self.step} >= {target}; nothing to train", stacklevel=2)
            return {"step": self.step}
        record: dict = {"step": self.step}
        self.stopped_by = None
        self._clock.reset()
        self._window = (time.perf_counter(), self.step)  # images/s over the steps since the last record
        progress = Progress(total=target, initial=self.step, batch_size=tc.batch_size, show=self.progress,
                            is_main=self.is_main, elapsed_before=self.elapsed_before)
        self._progress = progress
        try:
            with StopSignals(self.handle_signals, announce=self.is_main) as signals, progress:
                while self.step < target:
                    self.train_step()
                    s = self.step
                    last = s == target
                    logged = None
                    if s % tc.log_every == 0 or last:
                        record = logged = self._log(target)
                    progress.update(s, logged)
                    if tc.sample_every and s % tc.sample_every == 0 and self.objective.makes_samples:
                        self.sample_grid()
                    stop, timed = self._poll(signals, s % tc.log_every == 0 or last)
                    if (tc.ckpt_every and s % tc.ckpt_every == 0) or last or stop or timed:
                        self.save()
                    if stop:
                        self.stopped_by = stop
                        break
        finally:
            self.elapsed_before = progress.elapsed()
            self._progress = None
        return record

    def _log(self, target: int) -> dict:
        """The metrics record of the current step: means since the last record, timings."""
        tc = self.config.train
        self._check_finite()
        s = self.step
        loss, by_t = self.running.means(self.dist.world_size if distributed.is_initialized() else 1)
        t0, step0 = self._window
        now = time.perf_counter()
        progress = self._progress
        record = {"step": s, "loss": loss, "grad_norm": float(self._last_gnorm), "lr": self._last_lr,
                  "images_per_sec": (s - step0) * tc.batch_size / max(now - t0, 1e-9),
                  "loss_by_t": by_t, "wall_time": round(time.time(), 3),
                  "elapsed": round(progress.elapsed(), 3) if progress else None,
                  "eta": None if progress is None or progress.eta(s) is None else round(progress.eta(s), 1)}
        if self.is_main:
            self.metrics.write(record)
        self.running.reset()
        self._window = (now, s)
        return record

    def _poll(self, signals: StopSignals, sync_point: bool) -> tuple[int, bool]:
        """(signal number that asks to stop or 0, whether a time-based checkpoint is due). Under DDP the
        ranks agree at log steps only (one small all-reduce), so every rank stops at the same step."""
        stop, timed = signals.signum or 0, self._clock.due()
        if not distributed.is_initialized():
            return stop, timed
        if not sync_point:
            return 0, False
        flags = torch.tensor([stop, int(timed)], device=self.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return int(flags[0]), bool(flags[1])

    # ------------------------------------------------------------------ outputs
    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0); refuses to save a non-finite state."""
        self._check_finite()
        if distributed.is_initialized():
            self.running.fold_ranks(self.dist.rank)
        path = None
        if self.is_main:
            tensors, js = self._state()
            elapsed = self._progress.elapsed() if self._progress is not None else self.elapsed_before
            path = ckpt.save_checkpoint(
                self.run_dir / "checkpoints" / ckpt.step_dir_name(self.step), config=self.config, step=self.step,
                model_state=self.model.state_dict(), ema_state=self.ema.state_dict(),
                train_tensors=tensors, train_json=js,
                extra_json={"progress.json": {"elapsed_seconds": round(elapsed, 3), "wall_time": round(time.time(), 3),
                                              "images_seen": self.step * self.config.train.batch_size}})
            ckpt.write_latest(self.run_dir, path)
            ckpt.prune_checkpoints(self.run_dir, self.config.train.keep_checkpoints)
        self._clock.reset()
        distributed.barrier()
        return path

    @torch.no_grad()
    def sample_grid(self) -> Path | None:
        """EMA samples as ``samples/step_XXXXXXX.png`` (and TensorBoard's ``samples`` image); the
        training RNG streams are left untouched."""
        from ddpm.images import make_grid, save_image, to_uint8
        from ddpm.sampling.api import generate

        n = self.config.train.num_sample_images
        if n <= 0:
            return None
        nc = self.config.model.num_classes
        labels = [i % nc for i in range(n)] if nc else None
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            x = generate(self.ema.model, self.diffusion, n, batch_size=min(n, 256), class_labels=labels,
                         sampler=self.config.sampling, steps=self.config.train.sample_steps,
                         seed=self.config.train.seed, device=self.device, rank=self.dist.rank,
                         world_size=self.dist.world_size)
            x = distributed.gather_shards(x, self.dist)
        if not self.is_main:
            return None
        path = self.run_dir / "samples" / f"{ckpt.step_dir_name(self.step)}.png"
        grid = make_grid(to_uint8(x), nrow=nc if nc else None)
        save_image(grid, path)
        self.metrics.image("samples", grid, self.step)
        return path

    def close(self) -> None:
        """Close the logs and release the run directory's lock."""
        try:
            if self.is_main and hasattr(self, "metrics"):
                self.metrics.close()
        finally:
            self.lock.release()
