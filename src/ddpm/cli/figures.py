"""``ddpm figure progressive|shared|interpolate``: the paper's generation figures (Fig. 6, 7, 8/9) as PNG
grids, optionally with the raw arrays as .npz. Thin layer over :mod:`ddpm.evaluate.figures`.

Outputs are checked before sampling, written atomically, refused if they exist (unless
``--overwrite``) and carry their provenance (PNG text chunk, .npz key, ``NAME.json`` sidecar)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from ddpm.cli import common
from ddpm.errors import ConfigError


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected timesteps >= 0, got {min(values)}")
    return values


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("figure", aliases=["figures"], help="progressive / shared-latent / interpolation figures",
                              description=__doc__)
    sub = p.add_subparsers(dest="figure", metavar="FIGURE", parser_class=type(p))
    sub.required = True

    def shared_args(q, default_out: str):
        q.add_argument("--ckpt", required=True, help="run dir, checkpoint dir, .safetensors or diffusers folder")
        q.add_argument("--out", default=default_out, help=f"output PNG (default {default_out})")
        q.add_argument("--npz", help="also save the raw arrays to this .npz")
        common.add_overwrite_arg(q, "--out/--npz files")
        q.add_argument("--seed", type=common.seed, default=0, help="noise seed, 0 <= seed < 2**63 (default 0)")
        q.add_argument("--raw", action="store_true", help="use the raw instead of the EMA weights")
        common.add_sampler_args(q, classes=False)
        common.add_runtime_args(q)

    q = sub.add_parser("progressive", help="x̂0 predicted along sampling chains (Fig. 6)")
    shared_args(q, "progressive.png")
    q.add_argument("--chains", type=common.positive_int, default=4, help="rows: independent chains (default 4)")
    q.add_argument("--frames", type=common.positive_int, default=10,
                   help="x̂0 snapshots per chain, every T/frames steps (1..T; default 10)")
    q.set_defaults(func=run_progressive)

    q = sub.add_parser("shared", help="samples sharing x_T … x_t, branching at t (Fig. 7)")
    shared_args(q, "shared_latent.png")
    q.add_argument("--branch-at", type=_ints, help="comma list of t in 0..T (paper indices, T = x_T only; "
                                                   "default T, 3T/4, T/2, T/4)")
    q.add_argument("--samples", type=common.positive_int, default=4, help="samples per row (default 4)")
    q.set_defaults(func=run_shared)

    q = sub.add_parser("interpolate", help="interpolation in x_t, swept over t (Fig. 8/9)")
    shared_args(q, "interpolation.png")
    q.add_argument("--images", nargs=2, metavar=("A", "B"), help="two image files (default: from --data)")
    q.add_argument("--data", help="dataset name/folder/.npz to take the two images from "
                                  "(default: the checkpoint's training data)")
    q.add_argument("--split", default="test", choices=("train", "test"), help="split of --data (default test)")
    q.add_argument("--index", type=common.non_negative_int, nargs=2, default=(0, 1), metavar=("I", "J"),
                   help="indices of the two images in --data (default 0 1)")
    q.add_argument("--t", type=_ints, help="comma list of diffusion steps in 0..T, one row each (default 0, T/8, "
                                          "…, T; Fig. 8 is --t 500)")
    q.add_argument("--lambdas", type=common.positive_int, default=9, help="interior λ values per row (default 9: 0.1 … 0.9)")
    q.set_defaults(func=run_interpolate)


def _load(args):
    """(the checkpoint, the sampler the flags ask for on top of its default), after checking outputs."""
    from ddpm.checkpoint import load_checkpoint
    from ddpm.outputs import sidecar_path

    args.t0 = time.perf_counter()
    out = common.check_output(args.out, kind="png", overwrite=args.overwrite, flag="--out")
    common.check_output(sidecar_path(out), overwrite=args.overwrite, flag="--out sidecar")
    if args.npz:
        common.check_output(args.npz, kind="npz", overwrite=args.overwrite, flag="--npz")
    ck = load_checkpoint(args.ckpt, use_ema=not args.raw, device=common.setup_runtime(args))
    return ck, common.sampler_config_from_args(args, ck.config.sampling)


def _device(ck):
    return next(ck.model.parameters()).device


def _check_range(flag: str, values, low: int, high: int) -> None:
    bad = [v for v in values if not low <= v <= high]
    if bad:
        raise ConfigError(f"{flag} takes values in {low}..{high} for this model (T = {high}), got {bad[0]}")


def _write(args, ck, sampler, grid: np.ndarray, arrays: dict, what: str, **extra) -> None:
    from ddpm.images import save_arrays, save_image
    from ddpm.outputs import ensure_parent, provenance, write_sidecar

    t1 = time.perf_counter()
    record = provenance(checkpoint=ck, source=args.ckpt, sampler=sampler, seed=args.seed, figure=args.figure,
                        **extra, timings={"total": t1 - args.t0})
    out = common.check_output(args.out, kind="png", overwrite=args.overwrite, flag="--out")
    ensure_parent(out)
    save_image(grid, out, metadata=record)
    write_sidecar(out, record)
    if args.npz:
        npz = common.check_output(args.npz, kind="npz", overwrite=args.overwrite, flag="--npz")
        ensure_parent(npz)
        save_arrays(npz, arrays, metadata=record)
    print(common.summary(f"{what} [{sampler_text(sampler)}; seed {args.seed}] with the {ck.weights} weights of "
                         f"step {ck.step} of {args.ckpt}", time.perf_counter() - args.t0, [out, args.npz]))


def sampler_text(sampler) -> str:
    steps = "all steps" if sampler.steps is None else f"{sampler.steps} steps"
    opts = "".join(f", {k}={v}" for k, v in sorted((sampler.options or {}).items()))
    return f"{sampler.sampler}, {steps}{opts}"


def run_progressive(args: argparse.Namespace) -> int:
    from ddpm.evaluate.figures import progressive_figure

    ck, sampler = _load(args)
    T = ck.diffusion.num_timesteps
    _check_range("--frames", [args.frames], 1, T)
    common.check_memory(ck.config.model, args.chains * (args.frames + 1), args.chains, sampler, _device(ck))
    f = progressive_figure(ck.model, ck.diffusion, num_chains=args.chains, num_frames=args.frames,
                           seed=args.seed, progress=common.show_progress(args), sampler=sampler)
    print("columns (paper t of the x̂0 input; 0 = final sample):", " ".join(map(str, f["frames_t"])))
    _write(args, ck, sampler, f["grid"], {"frames": f["frames"].numpy(), "frames_t": f["frames_t"]},
           f"progressive figure, {args.chains} chains x {args.frames} frames", frames_t=f["frames_t"])
    return 0


def run_shared(args: argparse.Namespace) -> int:
    from ddpm.evaluate.figures import shared_latent_figure

    ck, sampler = _load(args)
    T = ck.diffusion.num_timesteps
    if args.branch_at:
        _check_range("--branch-at", args.branch_at, 0, T)
    rows = len(args.branch_at or [0] * 4)
    common.check_memory(ck.config.model, rows * (args.samples + 1), args.samples, sampler, _device(ck))
    f = shared_latent_figure(ck.model, ck.diffusion, share_until=args.branch_at, num_samples=args.samples,
                             seed=args.seed, progress=common.show_progress(args), sampler=sampler)
    print("rows branch at t =", " ".join(map(str, f["share_until"])), "(first column: the shared x_t)")
    _write(args, ck, sampler, f["grid"], {"samples": f["samples"].numpy(), "latents": f["latents"].numpy(),
                                          "branch_at": f["share_until"]},
           f"shared-latent figure, {rows} rows x {args.samples} samples", branch_at=f["share_until"])
    return 0


def _two_images(args, ck):
    from ddpm.errors import DataError

    c, h = ck.config.model.in_channels, ck.config.model.resolution
    if args.images:
        from PIL import Image

        from ddpm.data.transforms import fit_pil

        out = []
        for f in args.images:
            try:
                img = Image.open(f)
            except OSError as e:
                raise DataError(f"cannot read image {f}: {e}") from None
            out.append(fit_pil(img, h, c).float() / 127.5 - 1.0)
        return out[0], out[1]
    from ddpm.evaluate.inputs import eval_images

    i, j = args.index
    x, _, _ = eval_images(args.data, ck.config, split=args.split)
    if not (0 <= i < len(x) and 0 <= j < len(x)):
        raise DataError(f"--index {i} {j} out of range: the data has {len(x)} images")
    return x[i], x[j]


def run_interpolate(args: argparse.Namespace) -> int:
    from ddpm.evaluate.figures import interpolation_figure

    ck, sampler = _load(args)
    T = ck.diffusion.num_timesteps
    if args.t:
        _check_range("--t", args.t, 0, T)
    rows = len(args.t or [0] * 9)
    common.check_memory(ck.config.model, rows * (args.lambdas + 4), args.lambdas + 2, sampler, _device(ck))
    a, b = _two_images(args, ck)
    f = interpolation_figure(ck.model, ck.diffusion, a, b, ts=args.t, num_lambdas=args.lambdas, seed=args.seed,
                             progress=common.show_progress(args), sampler=sampler)
    print("rows: t =", " ".join(map(str, f["ts"])), "| columns: source, rec., λ =",
          " ".join(f"{v:.2f}" for v in f["lambdas"].tolist()), ", rec., source")
    _write(args, ck, sampler, f["grid"], {"rows": f["rows"].numpy(), "ts": f["ts"], "lambdas": f["lambdas"].numpy()},
           f"interpolation figure, {rows} rows x {args.lambdas} λ", ts=f["ts"],
           images=list(args.images) if args.images else {"data": args.data, "split": args.split,
                                                          "index": list(args.index)})
    return 0
