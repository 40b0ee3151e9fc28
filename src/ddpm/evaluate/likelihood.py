"""Negative log-likelihood in bits/dim over a dataset: the full T-term variational bound (Table 1).

One pass of :meth:`GaussianDiffusion.calc_bpd_loop` per batch gives every per-t quantity that the NLL,
the per-t CSV and the rate–distortion curves (:mod:`ddpm.evaluate.rate_distortion`) need, so both
commands share :func:`evaluate_bpd`.

Long runs are split into chunks (one batch each). A chunk's randomness comes from its own generator,
seeded with (seed, chunk index), so a chunk's result does not depend on which process computes it or
when: with ``chunk_dir`` every finished chunk is saved as ``chunk_XXXXX.npz`` and a rerun skips it;
under torchrun each rank takes the chunks ``i % world_size == rank`` and rank 0 gathers them.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm.errors import UserError

CHUNK_KEYS = ("index", "total_bpd", "prior_bpd", "terms_sum", "mse_sum", "rmse_sum", "eps_mse_sum")


@dataclass
class BpdResult:
    """Dataset averages of the variational bound. Per-t arrays are indexed by code timestep t = 0..T−1
    (t = 0 is the decoder term L_0; t ≥ 1 is the paper's L_t); ``total_bpd``/``prior_bpd`` are per image.
    """

    total_bpd: np.ndarray  # (N,) bits/dim of each image
    prior_bpd: np.ndarray  # (N,) L_T of each image
    terms_bpd: np.ndarray  # (T,) mean over images of each term
    xstart_mse: np.ndarray  # (T,) mean over images and dims of (x̂0 − x0)², on the [-1, 1] scale
    xstart_rmse_per_image: np.ndarray  # (T,) mean over images of each image's RMSE, [-1, 1] scale
    eps_mse: np.ndarray  # (T,) mean of (ε̂ − ε)² with ε̂ implied by the clipped x̂0

    @property
    def num(self) -> int:
        return int(self.total_bpd.shape[0])

    @property
    def bpd(self) -> float:
        return float(self.total_bpd.mean())

    @property
    def bpd_stderr(self) -> float:
        """Standard error of the mean over images (0 for a single image)."""
        n = self.num
        return float(self.total_bpd.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0

    @property
    def prior(self) -> float:
        return float(self.prior_bpd.mean())

    @property
    def decoder_bpd(self) -> float:
        """L_0, the discretized decoder's NLL: the 'distortion' of the paper's rate/distortion split."""
        return float(self.terms_bpd[0])

    @property
    def rate_bpd(self) -> float:
        """L_1 + ... + L_T: the paper's 'rate' (Ho et al. 2020, §4.3)."""
        return float(self.terms_bpd[1:].sum() + self.prior)

    def summary(self) -> dict:
        return {
            "num_images": self.num, "bpd": self.bpd, "bpd_stderr": self.bpd_stderr,
            "prior_bpd": self.prior, "decoder_bpd": self.decoder_bpd, "rate_bpd": self.rate_bpd,
            "num_timesteps": int(self.terms_bpd.shape[0]),
        }

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Per-t terms: code t, paper t, mean term (bits/dim), x̂0 MSE, x̂0 RMSE (0–255, both
        aggregations), ε MSE."""
        from ddpm.outputs import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            w = csv.writer(f)
            w.writerow(["t", "paper_t", "term_bpd", "xstart_mse", "rmse_0_255_sqrt_mean_mse",
                        "rmse_0_255_mean_per_image", "eps_mse"])
            for t in range(self.terms_bpd.shape[0]):
                w.writerow([t, t + 1, f"{self.terms_bpd[t]:.8g}", f"{self.xstart_mse[t]:.8g}",
                            f"{127.5 * math.sqrt(self.xstart_mse[t]):.8g}",
                            f"{127.5 * self.xstart_rmse_per_image[t]:.8g}", f"{self.eps_mse[t]:.8g}"])
        return path


def _run_chunk(diffusion, model, x0: torch.Tensor, index: torch.Tensor, seed: int, chunk: int,
               clip_denoised: bool, model_kwargs: dict | None, device) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0]))
    out = diffusion.calc_bpd_loop(model, x0.to(device), clip_denoised=clip_denoised, generator=g,
                                  model_kwargs=model_kwargs)
    mse = out["mse"].double().cpu()
    return {
        "index": index.numpy().astype(np.int64),
        "total_bpd": out["total_bpd"].double().cpu().numpy(),
        "prior_bpd": out["prior_bpd"].double().cpu().numpy(),
        "terms_sum": out["terms_bpd"].double().cpu().sum(0).numpy(),
        "mse_sum": mse.sum(0).numpy(),
        "rmse_sum": mse.sqrt().sum(0).numpy(),
        "eps_mse_sum": out["eps_mse"].double().cpu().sum(0).numpy(),
    }


def _check_meta(chunk_dir: Path, meta: dict) -> None:
    from ddpm.outputs import write_text

    path = chunk_dir / "meta.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path} is unreadable (not JSON); delete {chunk_dir} to start this evaluation "
                            "afresh") from None
        if old != meta:
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise UserError(
                f"{chunk_dir} holds partial results of a different evaluation (differs in {diff}); "
                "use another --out directory or delete it"
            )
    else:
        chunk_dir.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(meta, indent=2, sort_keys=True))


def _save_chunk(path: Path, res: dict[str, np.ndarray]) -> None:
    from ddpm.outputs import atomic_write

    with atomic_write(path, fsync=False) as f:  # a killed run never leaves a half-written chunk behind
        np.savez(f, **res)


def _load_chunk(path: Path) -> dict[str, np.ndarray] | None:
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in CHUNK_KEYS}
    except (OSError, KeyError, ValueError, EOFError, AttributeError, zipfile.BadZipFile):
        return None  # unreadable (damaged on disk): recompute it


def evaluate_bpd(
    model,
    diffusion,
    images: torch.Tensor,
    *,
    batch_size: int = 64,
    seed: int = 0,
    clip_denoised: bool = True,
    labels: torch.Tensor | None = None,
    chunk_dir: str | os.PathLike | None = None,
    meta: dict | None = None,
    device=None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> BpdResult | None:
    """Variational bound of every image in ``images`` ((N, C, H, W) in [−1, 1]), averaged.

    ``chunk_dir``: save each finished batch there and skip saved ones on rerun (``meta``, a dict
    describing the evaluation, is stored beside them and must match on resume). ``labels`` are passed
    as ``y`` to class-conditional models (None: the model's null label / unconditional).
    With ``world_size > 1`` (inside an initialised process group) rank r computes the chunks
    i % world_size == r and the result is returned on rank 0 only (None elsewhere).
    """
    n = images.shape[0]
    if n == 0:
        raise UserError("no images to evaluate")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if device is None:
        device = next(model.parameters()).device
    cdir = Path(chunk_dir) if chunk_dir is not None else None
    lock = None
    if cdir is not None and rank == 0:
        # one process per chunk directory: a second one would compute the same chunks and race on meta.json
        from ddpm.lock import DirLock

        try:
            cdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {cdir}: {e.strerror}; choose another --out") from None
        lock = DirLock(cdir, "chunk directory").acquire()
    try:
        return _evaluate_chunks(model, diffusion, images, batch_size, seed, clip_denoised, labels, cdir, meta,
                                device, rank, world_size, progress)
    finally:
        if lock is not None:
            lock.release()


def _evaluate_chunks(model, diffusion, images, batch_size, seed, clip_denoised, labels, cdir, meta, device,
                     rank, world_size, progress):
    n, T = images.shape[0], diffusion.num_timesteps
    if cdir is not None and rank == 0:
        _check_meta(cdir, {**(meta or {}), "num_images": n, "batch_size": batch_size, "seed": seed,
                           "clip_denoised": clip_denoised, "num_timesteps": T})
    if world_size > 1:
        from ddpm.distributed import barrier

        barrier()
    num_chunks = math.ceil(n / batch_size)
    mine = [c for c in range(num_chunks) if c % world_size == rank]
    results: dict[int, dict[str, np.ndarray]] = {}
    todo = []
    for c in mine:
        saved = _load_chunk(cdir / f"chunk_{c:05d}.npz") if cdir is not None and (cdir / f"chunk_{c:05d}.npz").is_file() else None
        if saved is not None:
            results[c] = saved
        else:
            todo.append(c)
    it = todo
    if progress and todo:
        from tqdm.auto import tqdm

        it = tqdm(todo, desc=f"bpd ({len(results)} chunks done before)" if results else "bpd", unit="chunk")
    model.eval()
    for c in it:
        sl = slice(c * batch_size, min(n, (c + 1) * batch_size))
        kwargs = {"y": labels[sl].to(device)} if labels is not None else None
        res = _run_chunk(diffusion, model, images[sl], torch.arange(n)[sl], seed, c, clip_denoised, kwargs, device)
        if cdir is not None:
            _save_chunk(cdir / f"chunk_{c:05d}.npz", res)
        results[c] = res
    if world_size > 1:
        import torch.distributed as dist

        gathered = [None] * world_size
        dist.all_gather_object(gathered, results)
        if rank != 0:
            return None
        results = {k: v for part in gathered for k, v in part.items()}
    return _combine([results[c] for c in sorted(results)], T)


def _combine(chunks: list[dict[str, np.ndarray]], T: int) -> BpdResult:
    n = sum(len(c["index"]) for c in chunks)
    total = lambda key: sum(c[key] for c in chunks)  # noqa: E731
    return BpdResult(
        total_bpd=np.concatenate([c["total_bpd"] for c in chunks]),
        prior_bpd=np.concatenate([c["prior_bpd"] for c in chunks]),
        terms_bpd=total("terms_sum") / n,
        xstart_mse=total("mse_sum") / n,
        xstart_rmse_per_image=total("rmse_sum") / n,
        eps_mse=total("eps_mse_sum") / n,
    )


__all__ = ["BpdResult", "evaluate_bpd"]
