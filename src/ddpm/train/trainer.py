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
"""

from __future__ import annotations

import dataclasses
import os
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
from ddpm.errors import CheckpointError, ConfigError, DataError, UserError
from ddpm.train.timesteps import create_timestep_sampler
from ddpm import checkpoint as ckpt
from ddpm import distributed
from ddpm.train.ema import EMA
from ddpm.train.metrics import MetricsLog
from ddpm.train.objectives import build_objective, pack_state, unpack_state
from ddpm.train.validate import validate_config

# Fields that may differ between the saved config of a run and the config passed to resume it.
RESUMABLE_FIELDS = ("steps", "log_every", "sample_every", "ckpt_every", "keep_checkpoints",
                    "num_sample_images", "sample_steps", "compile", "precision")


class NonFiniteError(UserError):
    """The loss or the gradient norm became inf/NaN."""


def warmup_lr(base_lr: float, warmup: int, step: int) -> float:
    """Learning rate of update number ``step`` (1 for the first update): lr·min(step/warmup, 1).

    The authors' ``get_warmed_up_lr`` evaluates the same formula at the global step *before* the
    increment, so their first update has lr 0 and only primes Adam's moments; we count the first update
    as 1, which shifts their ramp by one step (documented in docs/training.md).
    """
    if warmup <= 0:
        return base_lr
    return base_lr * min(step / warmup, 1.0)


_PERM_CACHE: dict[tuple[int, int, int], torch.Tensor] = {}


def _epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch: a permutation seeded by (seed, epoch) alone."""
    key = (seed, epoch, n)
    if key not in _PERM_CACHE:
        if len(_PERM_CACHE) > 4:
            _PERM_CACHE.clear()
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
        _PERM_CACHE[key] = torch.randperm(n, generator=g)
    return _PERM_CACHE[key]


def _same_weights(a, b) -> bool:
    """Whether networks ``a`` and ``b`` have the same parameter names and shapes (e.g. a U-Net and the
    consistency model built on it), so one's weights initialise the other."""
    from ddpm.models.registry import build_model

    def shapes(cfg):
        return {k: tuple(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}

    return shapes(a) == shapes(b)


class Trainer:
    """Train ``config`` into ``run_dir``; see the module docstring for the design.

    ``resume=True`` continues the run in ``run_dir`` from its newest complete checkpoint (``config`` may
    be None, or the saved config with different ``train.steps``/logging intervals). ``init_from``
    starts a NEW run from the weights (and EMA) of a checkpoint, e.g. to fine-tune the shipped one or to
    start a distilled student from its teacher (any network with the same parameter names and shapes).
    """

    def __init__(self, config: Config | None, run_dir, *, device=None, resume: bool = False,
                 init_from=None, dataset=None, progress: bool | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.dist, self.device = distributed.setup(device)
        if resume and init_from is not None:
            raise ConfigError("--resume and --init-from exclude each other")
        config = self._resolve_config(config, resume)
        self.config = validate_config(config)
        if self.config.train.precision == "auto":  # saved resolved, so a resume elsewhere keeps it
            train = dataclasses.replace(self.config.train, precision=accel.default_precision(self.device))
            self.config = dataclasses.replace(self.config, train=train)
        tc = self.config.train
        if tc.batch_size % self.dist.world_size:
            raise ConfigError(f"train.batch_size={tc.batch_size} is not divisible by the "
                              f"{self.dist.world_size} ranks")
        self.progress = progress
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
        self.ema = EMA(self.model, tc.ema_decay)
        self.diffusion = self.config.diffusion.build()
        self.timestep_sampler = create_timestep_sampler(tc.timestep_sampler, self.diffusion.num_timesteps)
        self.objective = build_objective(self.config, self.diffusion, self.device)
        opt_kw = accel.optimizer_kwargs(self.device)  # fused Adam on CUDA and CPU
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tc.lr, betas=tuple(tc.adam_betas),
                                          eps=tc.adam_eps, weight_decay=0.0, **opt_kw)
        self.gen_cpu = torch.Generator().manual_seed(tc.seed)
        self.gen_dev = torch.Generator(device=self.device).manual_seed(tc.seed + 1)
        self.step = 0
        self.ema_initialized = False

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
            if resume:
                self.metrics.truncate_after(self.step)
        distributed.barrier()

    # ------------------------------------------------------------------ setup helpers
    def _resolve_config(self, config: Config | None, resume: bool) -> Config:
        if resume:
            saved_path = self.run_dir / "config.json"
            if not saved_path.is_file():
                raise CheckpointError(f"cannot resume: {self.run_dir} is not a run directory (no config.json)")
            try:
                saved = Config.from_json(saved_path.read_text())
            except (ValueError, TypeError) as e:
                raise CheckpointError(f"cannot resume: {saved_path} is unreadable ({e})") from None
            if config is None:
                return saved
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
                                  f"{', '.join(diff)}; resume without them or start a new --run-dir")
            return config
        if config is None:
            raise ConfigError("no config given: pass a preset (or resume an existing run)")
        error = None
        if self.dist.is_main:  # rank 0 alone looks and creates, then tells the others
            error = self._claim_run_dir()
        error = distributed.broadcast_object(error)
        if error:
            raise CheckpointError(error)
        return config

    def _claim_run_dir(self) -> str | None:
        if self.run_dir.exists() and (not self.run_dir.is_dir() or any(self.run_dir.iterdir())):
            return (f"run directory {self.run_dir} already exists and is not empty; "
                    "pass --resume to continue it or choose a new --run-dir")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"cannot create run directory {self.run_dir}: {e.strerror}"
        if not os.access(self.run_dir, os.W_OK):
            return f"run directory {self.run_dir} is not writable"
        return None

    def _prepare_data(self) -> None:
        ds, mc = self.dataset, self.config.model
        if len(ds) == 0:
            raise DataError("the training dataset is empty")
        shape = tuple(ds.shape) if hasattr(ds, "shape") else tuple(ds[0][0].shape)
        want = tuple(mc.image_shape)
        if shape != want:
            raise DataError(f"training images are {'x'.join(map(str, shape))} (CxHxW) but the model expects "
                            f"{'x'.join(map(str, want))}; set data.resolution/data.channels to match")
        self.num_examples = len(ds)
        labels = getattr(ds, "labels", None)
        if labels is None:
            labels = torch.tensor([int(ds[i][1]) for i in range(len(ds))])
        self.labels = labels.long().cpu()
        if mc.num_classes is not None:
            if int(labels.min()) < 0:
                raise DataError("the model is class-conditional but the dataset has no labels; "
                                "set data.class_labels=true or use a source with labels")
            if int(labels.max()) >= mc.num_classes:
                raise DataError(f"the dataset has labels up to {int(labels.max())} but model.num_classes="
                                f"{mc.num_classes}")
        images = getattr(ds, "images", None)
        self.images = images.to(self.device) if images is not None else None
        self.num_workers = min(4, os.cpu_count() or 1)
        self._loader_iter, self._loader_step = None, -1

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
        tensors, js = ckpt.pack_train_state(
            self.optimizer, {"gen_cpu": self.gen_cpu, "gen_dev": self.gen_dev}, self.timestep_sampler.state_dict(),
            step=self.step, ema_initialized=self.ema_initialized,
            data_position={"epoch": pos // self.num_examples, "index": pos % self.num_examples},
            world_size=self.dist.world_size, objective=obj_json)
        tensors.update(obj_tensors)
        return tensors, js

    def _load_state(self) -> None:
        try:
            directory = ckpt.latest_checkpoint(self.run_dir)
        except CheckpointError:
            if ckpt.list_checkpoints(self.run_dir):
                raise
            warnings.warn(f"{self.run_dir} has no checkpoint yet; starting it from step 0", stacklevel=3)
            return
        tensors, js = ckpt.load_train_state(directory)
        model_state, _ = ckpt.read_weights(directory / "model.safetensors")
        ema_state, _ = ckpt.read_weights(directory / "ema.safetensors")
        self.model.load_state_dict(model_state)
        self.ema.load_state_dict(ema_state, initialized=js["ema_initialized"])
        self.ema_initialized = js["ema_initialized"]
        self.timestep_sampler.load_state_dict(
            ckpt.restore_train_state(tensors, js, self.optimizer, {"gen_cpu": self.gen_cpu, "gen_dev": self.gen_dev}))
        self.objective.load_state_dict(unpack_state(tensors, js.get("objective", {})))
        self.step = int(js["step"])
        if self.is_main:
            print(f"resuming {self.run_dir} from {directory.name}", file=sys.stderr)

    # ------------------------------------------------------------------ one step
    def _global_indices(self, step: int) -> torch.Tensor:
        """Dataset indices of the global batch of (0-based) step ``step``."""
        B, n, seed = self.config.train.batch_size, self.num_examples, self.config.train.seed
        start = step * B
        out, pos = [], start
        while pos < start + B:
            epoch, i = divmod(pos, n)
            take = min(n - i, start + B - pos)
            out.append(_epoch_permutation(seed, epoch, n)[i : i + take])
            pos += take
        return torch.cat(out)

    def _fetch(self, idx: torch.Tensor) -> torch.Tensor:
        if self.images is not None:
            return self.images[idx.to(self.device, non_blocking=True)]
        # Lazy folders: DataLoader workers decode ahead. Their batch order is the same pure function
        # of the step, so prefetching never disturbs exact resume.
        if self._loader_iter is None or self._loader_step != self.step:
            self._loader_iter = iter(self._make_loader(self.step))
        images, _ = next(self._loader_iter)
        self._loader_step = self.step + 1
        return images.to(self.device, non_blocking=True)

    def _make_loader(self, start_step: int):
        trainer = self
        b = self.config.train.batch_size // self.dist.world_size
        lo = self.dist.rank * b

        class StepBatches(torch.utils.data.Sampler):
            def __iter__(self):
                s = start_step
                while True:
                    yield trainer._global_indices(s)[lo : lo + b].tolist()
                    s += 1

        return torch.utils.data.DataLoader(self.dataset, batch_sampler=StepBatches(), num_workers=self.num_workers,
                                           pin_memory=self.device.type == "cuda",
                                           persistent_workers=False)

    def _batch(self):
        """(x0, t, weights, noise, model_kwargs) of this rank's slice of the next global batch."""
        tc, mc = self.config.train, self.config.model
        B = tc.batch_size
        b = B // self.dist.world_size
        lo, hi = self.dist.rank * b, (self.dist.rank + 1) * b
        idx = self._global_indices(self.step)
        t, weights = self.timestep_sampler.sample(B, device="cpu", generator=self.gen_cpu)
        flip = torch.rand(B, generator=self.gen_cpu) < 0.5 if tc.random_flip else None
        y = None
        if mc.num_classes is not None:
            y = self.labels[idx]
            drop = torch.rand(B, generator=self.gen_cpu) < tc.class_dropout
            y = torch.where(drop, torch.full_like(y, mc.num_classes), y)
        shape = (B, *mc.image_shape)
        noise = torch.randn(shape, generator=self.gen_dev, device=self.device)[lo:hi]
        x = self._fetch(idx[lo:hi]).float() / 127.5 - 1.0
        if flip is not None:
            f = flip[lo:hi].to(self.device, non_blocking=True).view(-1, 1, 1, 1)
            x = torch.where(f, x.flip(3), x)
        if self.fast.channels_last:
            x = accel.channels_last_input(x)
        # Host-to-device copies of these small CPU tensors: non_blocking, else each .to() waits for
        # the GPU to drain its queue (a host sync per step). Safe from pageable memory: CUDA stages
        # the bytes before the call returns, and these tensors are fresh every step.
        kwargs = {"y": y[lo:hi].to(self.device, non_blocking=True)} if y is not None else {}
        return (x, t[lo:hi].to(self.device, non_blocking=True), weights[lo:hi].to(self.device, non_blocking=True),
                noise, kwargs)

    def train_step(self) -> torch.Tensor:
        """One optimizer update; returns the (device) mean loss of this rank's slice."""
        tc = self.config.train
        x, t, weights, noise, kwargs = self._batch()
        self.model.train()
        with accel.autocast(self.device, tc.precision):
            losses = self.objective.losses(self.forward_model, x, t, noise, kwargs)
        per_example = losses["loss"].float()
        loss = (per_example * weights).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        lr = warmup_lr(tc.lr, tc.warmup, self.step + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.ema.update(self.model)
        self.ema_initialized = True
        self.objective.after_step(self.model)
        self.timestep_sampler.update_with_losses(t, per_example.detach())
        self.step += 1
        bad = ~(torch.isfinite(loss) & torch.isfinite(gnorm))
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
        """Train until global step ``steps`` (default ``config.train.steps``); returns the last metrics."""
        tc = self.config.train
        target = tc.steps if steps is None else int(steps)
        if target <= 0:
            raise ConfigError(f"steps must be positive, got {target}")
        if target <= self.step:
            warnings.warn(f"run is already at step {self.step} >= {target}; nothing to train", stacklevel=2)
            return {"step": self.step}
        from tqdm.auto import tqdm

        if self.progress is None:  # tqdm's None: show the bar only on a terminal
            disable = None if self.is_main else True
        else:
            disable = not (self.progress and self.is_main)
        bar = tqdm(total=target, initial=self.step, disable=disable, dynamic_ncols=True, desc="train",
                   file=sys.stderr)
        record: dict = {"step": self.step}
        loss_sum = torch.zeros((), device=self.device)
        n_loss, t0, step0 = 0, time.perf_counter(), self.step
        try:
            while self.step < target:
                loss_sum += self.train_step()
                n_loss += 1
                bar.update(1)
                s = self.step
                last = s == target
                if s % tc.log_every == 0 or last:
                    self._check_finite()
                    total = loss_sum.clone()
                    if distributed.is_initialized():
                        torch.distributed.all_reduce(total)
                        total /= self.dist.world_size
                    dt = time.perf_counter() - t0
                    record = {"step": s, "loss": float(total) / n_loss, "grad_norm": float(self._last_gnorm),
                              "lr": self._last_lr,
                              "images_per_sec": (s - step0) * tc.batch_size / max(dt, 1e-9)}
                    if self.is_main:
                        self.metrics.write(record)
                        bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_sec']:.0f}")
                    loss_sum.zero_()
                    n_loss, t0, step0 = 0, time.perf_counter(), s
                if tc.sample_every and s % tc.sample_every == 0 and self.objective.makes_samples:
                    self.sample_grid()
                if (tc.ckpt_every and s % tc.ckpt_every == 0) or last:
                    self.save()
        finally:
            bar.close()
        return record

    # ------------------------------------------------------------------ outputs
    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0); refuses to save a non-finite state."""
        self._check_finite()
        path = None
        if self.is_main:
            tensors, js = self._state()
            path = ckpt.save_checkpoint(
                self.run_dir / "checkpoints" / ckpt.step_dir_name(self.step), config=self.config, step=self.step,
                model_state=self.model.state_dict(), ema_state=self.ema.state_dict(),
                train_tensors=tensors, train_json=js)
            ckpt.write_latest(self.run_dir, path)
            ckpt.prune_checkpoints(self.run_dir, self.config.train.keep_checkpoints)
        distributed.barrier()
        return path

    @torch.no_grad()
    def sample_grid(self) -> Path | None:
        """EMA samples as ``samples/step_XXXXXXX.png``; the training RNG streams are left untouched."""
        from ddpm.images import save_grid
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
        save_grid(x, path, nrow=nc if nc else None)
        return path

    def close(self) -> None:
        if self.is_main:
            self.metrics.close()
