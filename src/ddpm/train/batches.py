"""What each training step sees: the data order and the per-step draws, as a mixin of the Trainer.

Randomness is drawn so that results depend neither on interruptions nor on the number of DDP ranks:
the global batch of step s is the positions s·B … (s+1)·B − 1 of an endless stream made of one seeded
permutation per epoch; t, flips, label drop-out (a CPU generator) and ε (a generator on the training
device) are drawn for the whole GLOBAL batch on every rank, which keeps its rows r·B/W … (r+1)·B/W − 1.
"""

from __future__ import annotations

import os

import torch

from ddpm import accel
from ddpm.errors import DataError

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


class BatchDrawing:
    """The Trainer's data side; expects ``config``, ``dataset``, ``device``, ``dist``, ``step``, ``fast``,
    ``gen_cpu``, ``gen_dev`` and ``timestep_sampler`` on the instance."""

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
