"""``ddpm eval nll|rate-distortion|fid|is|fid-stats|quality|sweep|classifier``: Table 1's NLL, IS and FID,
Fig. 5 / Table 4, offline sample quality on the digits feature network and a noisy classifier's accuracy
by noise level (:mod:`ddpm.cli.quality`).

Thin layer over :mod:`ddpm.evaluate`; see ``docs/evaluation.md`` for the protocol. Outputs are checked
before any computing and written atomically (:mod:`ddpm.outputs`); files named by a flag (``--json``,
``--save-samples``, ``--out`` of fid-stats, ...) are replaced only with ``--overwrite``. The ``--out``
folder of ``nll``/``rate-distortion`` is a resumable work folder: its results are updated in place.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ddpm.cli import common

PAPER_SAMPLES = 50_000


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", aliases=["evaluate"], help="NLL (bits/dim), FID, IS, rate-distortion, digits quality and sweeps",
                              description=__doc__)
    sub = p.add_subparsers(dest="metric", metavar="METRIC", parser_class=type(p))
    sub.required = True

    def bpd_args(q):
        q.add_argument("--ckpt", required=True, help="run dir, checkpoint dir, .safetensors or diffusers folder")
        q.add_argument("--data", help="dataset name (digits, cifar10, mnist), image folder or .npz "
                                      "(default: the checkpoint's training data)")
        q.add_argument("--split", default="test", choices=("train", "test"), help="default: test")
        q.add_argument("--num", "--num-images", dest="num", type=common.positive_int,
                       help="evaluate a fixed subset of this many images (default: all); under torchrun "
                            "spell it --num-images (torchrun takes --num for its own --numa-binding)")
        q.add_argument("--batch-size", type=common.positive_int, default=64, help="images per batch (default 64)")
        q.add_argument("--out", default="eval", help="output directory (default ./eval); finished chunks "
                                                     "are kept in OUT/bpd_chunks and skipped on rerun")
        q.add_argument("--seed", type=common.seed, default=0,
                       help="seed of the bound's noise draws (default 0)")
        q.add_argument("--raw", action="store_true", help="use the raw instead of the EMA weights")
        q.add_argument("--no-clip", action="store_true", help="do not clip x̂0 to [-1, 1] (the authors clip)")
        common.add_runtime_args(q)
        q.add_argument("--labels", action="store_true",
                       help="condition a class-conditional model on the true labels (default: null label)")
        q.add_argument("--download", action="store_true",
                       help="fetch a dataset named by --data (cifar10, mnist) when it is not found (checksum-verified)")

    q = sub.add_parser("nll", help="negative log-likelihood in bits/dim: the variational bound (Table 1) "
                                   "or the probability-flow ODE's exact likelihood")
    bpd_args(q)
    g = q.add_argument_group("--method ode (Song et al. 2021, §4.3; docs/evaluation.md)")
    g.add_argument("--method", choices=("vlb", "ode"), default="vlb",
                   help="vlb: the T-term variational bound (default); ode: exact likelihood of the "
                        "probability-flow ODE with the Hutchinson trace estimator")
    g.add_argument("--probes", type=common.positive_int, default=1,
                   help="Hutchinson probes per image (default 1, as score SDE)")
    g.add_argument("--probe", choices=("rademacher", "gaussian"), default="rademacher",
                   help="probe distribution (default rademacher)")
    g.add_argument("--rtol", type=common.finite_float(1e-12, 1.0), default=1e-5,
                   help="ODE solver relative tolerance (default 1e-5, as score SDE)")
    g.add_argument("--atol", type=common.finite_float(1e-12, 1.0), default=1e-5,
                   help="ODE solver absolute tolerance (default 1e-5)")
    g.add_argument("--dequantize", choices=("uniform", "none"), default="uniform",
                   help="uniform dequantization of the 8-bit pixels (default; makes the value a bound on "
                        "the discrete NLL) or none")
    q.set_defaults(func=run_nll)
    q = sub.add_parser("rate-distortion", help="rate and distortion vs reverse steps (Fig. 5, Table 4)")
    bpd_args(q)
    q.set_defaults(func=run_rate_distortion)

    def quality_args(q, fid: bool):
        src = q.add_mutually_exclusive_group(required=True)
        src.add_argument("--samples", help="folder of PNGs or .npz (arr_0: uint8 NHWC) of generated images")
        src.add_argument("--ckpt", help="generate --num samples from this checkpoint first")
        q.add_argument("--num", type=common.positive_int, default=PAPER_SAMPLES,
                       help="samples to generate/use (paper: 50000)")
        q.add_argument("--batch-size", type=common.positive_int, default=256, help="sampling batch size")
        q.add_argument("--seed", type=common.seed, default=0,
                       help="image i depends only on (seed, i) (default 0)")
        q.add_argument("--raw", action="store_true", help="sample with the raw instead of the EMA weights")
        q.add_argument("--save-samples", help="also write the generated samples to this .npz (with labels and "
                                              "provenance keys)")
        common.add_overwrite_arg(q, "--json/--save-samples/--save-ref-stats files")
        common.add_sampler_args(q)
        common.add_runtime_args(q)
        q.add_argument("--inception", help="path to pt_inception-2015-12-05-6726825d.pth "
                                           "(else $DDPM_INCEPTION_WEIGHTS, else ~/.cache/ddpm, downloading); "
                                           "'random': random weights, a pipeline check whose scores mean nothing")
        q.add_argument("--splits", type=common.positive_int, default=10,
                       help="IS splits (default 10, as OpenAI's code)")
        q.add_argument("--json", help="write the scores to this JSON file")
        common.add_speed_args(q)
        if fid:
            q.add_argument("--ref", help="reference: stats .npz (mu, sigma), image folder/.npz, or a dataset "
                                         "name (default: the checkpoint's dataset)")
            q.add_argument("--ref-split", default="train", help="dataset split of the reference (paper: train)")
            q.add_argument("--ref-num", type=common.positive_int, help="reference images to use (default: all)")
            q.add_argument("--save-ref-stats", help="write the reference statistics to this .npz")

    q = sub.add_parser("fid", help="Fréchet Inception Distance (and IS from the same pass)")
    quality_args(q, fid=True)
    q.set_defaults(func=run_quality, want_fid=True)
    q = sub.add_parser("is", help="Inception Score, mean ± std over 10 splits")
    quality_args(q, fid=False)
    q.set_defaults(func=run_quality, want_fid=False)

    q = sub.add_parser("fid-stats", help="compute reference statistics (mu, sigma) of a dataset")
    q.add_argument("--data", required=True, help="dataset name, image folder or .npz of images")
    q.add_argument("--split", default="train", choices=("train", "test"), help="dataset split (default train)")
    q.add_argument("--num", type=common.positive_int, help="images to use (default: all)")
    q.add_argument("--resolution", type=common.positive_int, default=32,
                   help="resolution for dataset names (default 32)")
    q.add_argument("--channels", type=int, default=3, choices=(1, 3),
                   help="channels for dataset names (default 3; grey images are repeated to RGB for Inception)")
    q.add_argument("--out", required=True, help="output .npz")
    common.add_overwrite_arg(q, "--out file")
    q.add_argument("--download", action="store_true",
                   help="fetch a dataset named by --data (cifar10, mnist) when it is not found (checksum-verified)")
    q.add_argument("--inception", help="path to the Inception weights (as for eval fid)")
    common.add_runtime_args(q)
    q.set_defaults(func=run_fid_stats)

    from ddpm.cli import quality

    quality.add_parsers(sub)


# ------------------------------------------------------------------------------------------ bpd
def _bpd(args):
    from ddpm import distributed
    from ddpm.checkpoint import load_checkpoint
    from ddpm.evaluate.inputs import eval_images
    from ddpm.evaluate.likelihood import evaluate_bpd

    common.check_output(args.out, is_dir=True, flag="--out")
    info, device = distributed.setup(common.setup_runtime(args))
    ck = load_checkpoint(args.ckpt, use_ema=not args.raw, device=device)
    x, labels, name = eval_images(args.data, ck.config, split=args.split, num=args.num, download=args.download)
    meta = {"checkpoint": str(Path(ck.path).resolve()) if ck.path else str(args.ckpt), "step": ck.step,
            "weights": ck.weights, "data": name, "labels": bool(args.labels)}
    if info.is_main:
        print(f"evaluating the {ck.diffusion.num_timesteps}-term bound on {len(x)} images of {name} "
              f"({ck.weights} weights, step {ck.step}) on {device}"
              + (f" x {info.world_size} ranks" if info.enabled else ""))
    res = evaluate_bpd(ck.model, ck.diffusion, x, batch_size=args.batch_size, seed=args.seed,
                       clip_denoised=not args.no_clip, labels=labels if args.labels else None,
                       chunk_dir=Path(args.out) / "bpd_chunks", meta=meta, device=device,
                       rank=info.rank, world_size=info.world_size,
                       progress=common.show_progress(args, info.is_main))
    distributed.cleanup()
    return res, meta, ck


def _ode_nll(args) -> int:
    from ddpm.checkpoint import load_checkpoint
    from ddpm.evaluate.inputs import eval_images
    from ddpm.evaluate.ode_likelihood import evaluate_ode_bpd
    from ddpm.errors import ConfigError
    from ddpm.outputs import provenance, write_json

    if args.no_clip:
        raise ConfigError("--no-clip is for the variational bound; the ODE never clips x̂0")
    common.check_output(args.out, is_dir=True, flag="--out")
    t0 = time.perf_counter()
    device = common.setup_runtime(args)
    ck = load_checkpoint(args.ckpt, use_ema=not args.raw, device=device)
    x, labels, name = eval_images(args.data, ck.config, split=args.split, num=args.num, download=args.download)
    meta = {"checkpoint": str(Path(ck.path).resolve()) if ck.path else str(args.ckpt), "step": ck.step,
            "weights": ck.weights, "data": name, "labels": bool(args.labels)}
    print(f"evaluating the probability-flow ODE likelihood on {len(x)} images of {name} "
          f"({ck.weights} weights, step {ck.step}) on {device}")
    out = Path(args.out)
    res = evaluate_ode_bpd(ck.model, ck.diffusion, x, batch_size=args.batch_size, seed=args.seed,
                           probes=args.probes, probe=args.probe, rtol=args.rtol, atol=args.atol,
                           dequantization=args.dequantize, labels=labels if args.labels else None, device=device,
                           chunk_dir=out / "ode_chunks", meta=meta, progress=common.show_progress(args))
    record = provenance(checkpoint=ck, source=args.ckpt, seed=args.seed, data=name,
                        timings={"total": time.perf_counter() - t0})
    summary = {**meta, **{k: v for k, v in res.items() if k != "per_image"}, "provenance": record}
    write_json(out / "nll_ode.json", summary)
    print(f"NLL (ODE) {res['bpd']:.4f} ± {res['bpd_stderr']:.4f} bits/dim (± = standard error; {res['num_images']} "
          f"images of {name}; {res['probes']} {res['probe']} probe(s), rtol {res['rtol']:g}, atol {res['atol']:g}, "
          f"{res['dequantize']} dequantization; {res['nfe_per_image']:.0f} network evaluations per image)")
    print(common.summary(f"evaluated the ODE likelihood of {args.ckpt} (step {ck.step}) on {res['num_images']} "
                         "images", time.perf_counter() - t0, [out / "nll_ode.json"]))
    return 0


def run_nll(args: argparse.Namespace) -> int:
    from ddpm.outputs import provenance, write_json

    if args.method == "ode":
        return _ode_nll(args)
    t0 = time.perf_counter()
    res, meta, ck = _bpd(args)
    if res is None:  # not rank 0
        return 0
    out = Path(args.out)
    csv = res.write_csv(out / "nll_terms.csv")
    record = provenance(checkpoint=ck, source=args.ckpt, seed=args.seed, data=meta["data"],
                        timings={"total": time.perf_counter() - t0})
    write_json(out / "nll.json", {**meta, **res.summary(), "provenance": record})
    print(f"NLL {res.bpd:.4f} ± {res.bpd_stderr:.4f} bits/dim (± = standard error; {res.num} images of "
          f"{meta['data']}; prior {res.prior:.2e}, decoder L0 {res.decoder_bpd:.4f})")
    print(common.summary(f"evaluated the NLL bound of {args.ckpt} (step {ck.step}) on {res.num} images",
                         time.perf_counter() - t0, [csv, out / "nll.json"]))
    return 0


def run_rate_distortion(args: argparse.Namespace) -> int:
    from ddpm.evaluate.rate_distortion import from_bpd_result, plot_rate_distortion

    t0 = time.perf_counter()
    res, meta, ck = _bpd(args)
    if res is None:
        return 0
    out = Path(args.out)
    rd = from_bpd_result(res)
    csv = rd.write_csv(out / "rate_distortion.csv")
    png = plot_rate_distortion(rd, out / "rate_distortion.png", title=f"{meta['data']}, {res.num} images")
    res.write_csv(out / "nll_terms.csv")
    print(f"rate {res.rate_bpd:.4f} + distortion {res.decoder_bpd:.4f} = {res.bpd:.4f} bits/dim; "
          f"final RMSE {rd.distortion[-1]:.3f} (0-255)")
    print("reverse time T-t+1 | rate (bits/dim) | distortion (RMSE 0-255)")
    for row in rd.table4():
        print(f"{row['reverse_time']:>18} | {row['rate_bpd']:15.5f} | {row['distortion_rmse']:.5f}")
    print(common.summary(f"rate-distortion of {args.ckpt} (step {ck.step}) on {res.num} images",
                         time.perf_counter() - t0, [csv, png]))
    return 0


# -------------------------------------------------------------------------------------- FID / IS
def _generated(args, device):
    """uint8 NHWC samples from --samples or generated from --ckpt (sharded under torchrun), the
    checkpoint, whether this is the main process, and the provenance record of the samples."""
    from ddpm.evaluate.fid import load_images

    if args.samples:
        return load_images(args.samples, args.num), None, True, {"samples": str(args.samples)}
    from ddpm import distributed
    from ddpm.checkpoint import load_checkpoint
    from ddpm.images import save_npz, to_uint8
    from ddpm.outputs import ensure_parent, provenance
    from ddpm.sampling.api import generate
    from ddpm.sampling.registry import resolve_sampler

    t0 = time.perf_counter()
    info, device = distributed.setup(device)
    ck = load_checkpoint(args.ckpt, use_ema=not args.raw, device=device)
    num_classes = ck.config.model.num_classes
    sampler = common.sampler_config_from_args(args, ck.config.sampling)
    common.check_memory(ck.config.model, args.num, args.batch_size, sampler, device)  # before any list of n
    labels = common.class_labels_from_args(args, num_classes, args.num)
    resolved = resolve_sampler(sampler, ck.diffusion.num_timesteps, num_classes=num_classes,
                               labels=labels is not None)
    x = generate(ck.model, ck.diffusion, args.num, batch_size=args.batch_size, sampler=sampler,
                 class_labels=labels, seed=args.seed, device=device,
                 progress=common.show_progress(args, info.is_main),
                 rank=info.rank, world_size=info.world_size, fast=common.fast_path_from_args(args, device))
    x = distributed.gather_shards(x, info)
    distributed.cleanup()
    if not info.is_main:
        return None, ck, False, None
    record = provenance(checkpoint=ck, source=args.ckpt, sampler=resolved, seed=args.seed, labels=labels,
                        num_images=len(x), timings={"sample": time.perf_counter() - t0})
    if args.save_samples:
        import numpy as np

        ensure_parent(Path(args.save_samples))
        extra = {}
        if num_classes is not None:
            n = len(x)
            extra["labels"] = (np.full(n, -1, np.int64) if labels is None
                               else np.broadcast_to(np.asarray(labels), (n,)).astype(np.int64))
        save_npz(x, args.save_samples, metadata=record, **extra)
    return to_uint8(x), ck, True, record


def _sampler_flags_given(args) -> bool:
    names = ("sampler", "steps", "spacing", "eta", "guidance", "clip_denoised", "class_label")
    return (any(getattr(args, n, None) is not None for n in names) or bool(args.sampler_options)
            or bool(getattr(args, "fast", False)))


def _check_quality_outputs(args) -> None:
    for flag, path, kind in (("--json", args.json, None), ("--save-samples", args.save_samples, "npz"),
                             ("--save-ref-stats", getattr(args, "save_ref_stats", None), "npz")):
        if path:
            common.check_output(path, kind=kind, overwrite=args.overwrite, flag=flag)


def run_quality(args: argparse.Namespace) -> int:
    from ddpm.errors import UserError
    from ddpm.evaluate.fid import reference_statistics, score_images
    from ddpm.evaluate.inception import load_inception
    from ddpm.outputs import write_json

    t0 = time.perf_counter()
    device = common.setup_runtime(args)
    _check_quality_outputs(args)
    if args.samples and _sampler_flags_given(args):
        raise UserError("sampler options apply to --ckpt (generating samples), not to --samples")
    want_fid = args.want_fid
    if want_fid and not args.ref and not args.ckpt:
        raise UserError("--ref is needed with --samples: a stats .npz, an image folder/.npz or a dataset name")
    random_weights = str(args.inception) == "random"
    if random_weights:  # said on every score below, and in the JSON: no separate warning
        from ddpm.evaluate.inception import random_inception

        net = random_inception(device=device)
    else:
        net = load_inception(args.inception, device=device)  # fail on missing weights before sampling
    images, ck, main, used = _generated(args, device)
    if not main:
        return 0
    ref = None
    ref_desc = ""
    if want_fid:
        if args.ref:
            ref = reference_statistics(net, args.ref, num=args.ref_num, split=args.ref_split,
                                       resolution=images.shape[1], channels=images.shape[3], device=device,
                                       progress=common.show_progress(args))
            ref_desc = f"{args.ref}" + ("" if args.ref.endswith(".npz") else f"/{args.ref_split}")
        else:
            from ddpm.evaluate.fid import compute_statistics
            from ddpm.evaluate.inputs import eval_images

            x, _, ref_desc = eval_images(None, ck.config, split=args.ref_split, num=args.ref_num)
            ref = compute_statistics(net, x, device=device, progress=common.show_progress(args))
        if args.save_ref_stats:
            ref.save(args.save_ref_stats)
    scores = score_images(net, images, ref, splits=args.splits, device=device,
                          progress=common.show_progress(args))
    n = scores["num"]
    note = "" if n >= PAPER_SAMPLES else f" — fewer than the paper's {PAPER_SAMPLES:,}; not comparable to Table 1"
    if random_weights:  # a pipeline check: say so on every number
        note += " — RANDOM Inception weights (--inception random): a pipeline check, the number means nothing"
    if want_fid:
        print(f"FID {scores['fid']:.3f} ({n} samples vs {ref_desc}, {ref.num} reference images){note}")
    if scores["is_mean"] is not None:
        print(f"IS {scores['is_mean']:.3f} ± {scores['is_std']:.3f} ({n} samples, {args.splits} splits){note}")
    elif not want_fid:
        raise UserError(f"IS needs at least {args.splits} samples for {args.splits} splits, got {n}")
    inception = ("random (scores meaningless)" if random_weights
                 else str(args.inception or "default (see --inception)"))
    if args.json:
        write_json(args.json, {**scores, "reference": ref_desc or None, "inception_weights": inception,
                               "meaningful": not random_weights, "generated": used})
    print(common.summary(f"scored {n} images" + (f" of {args.ckpt}" if args.ckpt else f" from {args.samples}"),
                         time.perf_counter() - t0, [args.json, args.save_samples,
                                                    getattr(args, "save_ref_stats", None)]))
    return 0


def run_fid_stats(args: argparse.Namespace) -> int:
    from ddpm.evaluate.fid import reference_statistics
    from ddpm.evaluate.inception import load_inception

    t0 = time.perf_counter()
    common.check_output(args.out, kind="npz", overwrite=args.overwrite, flag="--out")
    device = common.setup_runtime(args)
    if str(args.inception) == "random":
        from ddpm.evaluate.inception import random_inception

        print("note: RANDOM Inception weights (--inception random): these statistics are for pipeline checks only")
        net = random_inception(device=device)
    else:
        net = load_inception(args.inception, device=device)
    stats = reference_statistics(net, args.data, num=args.num, split=args.split, resolution=args.resolution,
                                 channels=args.channels, device=device, progress=common.show_progress(args),
                                 download=args.download)
    stats.save(args.out)
    print(common.summary(f"reference statistics of {stats.num} images of {args.data}/{args.split}",
                         time.perf_counter() - t0, [args.out]))
    return 0
