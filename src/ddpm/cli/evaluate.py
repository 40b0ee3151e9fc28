"""``ddpm eval nll|rate-distortion|fid|is|fid-stats|quality|sweep|classifier``: Table 1's NLL, IS and FID,
Fig. 5 / Table 4, offline sample quality on the digits feature network and a noisy classifier's accuracy
by noise level (:mod:`ddpm.cli.quality`).

Thin layer over :mod:`ddpm.evaluate`; see ``docs/evaluation.md`` for the protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
        q.add_argument("--seed", type=common.non_negative_int, default=0,
                       help="seed of the bound's noise draws (default 0)")
        q.add_argument("--raw", action="store_true", help="use the raw instead of the EMA weights")
        q.add_argument("--no-clip", action="store_true", help="do not clip x̂0 to [-1, 1] (the authors clip)")
        common.add_runtime_args(q)
        q.add_argument("--labels", action="store_true",
                       help="condition a class-conditional model on the true labels (default: null label)")

    q = sub.add_parser("nll", help="negative log-likelihood bound in bits/dim (Table 1)")
    bpd_args(q)
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
        q.add_argument("--seed", type=common.non_negative_int, default=0,
                       help="image i depends only on (seed, i) (default 0)")
        q.add_argument("--raw", action="store_true", help="sample with the raw instead of the EMA weights")
        q.add_argument("--save-samples", help="also write the generated samples to this .npz")
        common.add_sampler_args(q)
        common.add_runtime_args(q)
        q.add_argument("--inception", help="path to pt_inception-2015-12-05-6726825d.pth "
                                           "(else $DDPM_INCEPTION_WEIGHTS, else ~/.cache/ddpm, downloading)")
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

    info, device = distributed.setup(common.setup_runtime(args))
    ck = load_checkpoint(args.ckpt, use_ema=not args.raw, device=device)
    x, labels, name = eval_images(args.data, ck.config, split=args.split, num=args.num)
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
    return res, meta


def run_nll(args: argparse.Namespace) -> int:
    res, meta = _bpd(args)
    if res is None:  # not rank 0
        return 0
    out = Path(args.out)
    csv = res.write_csv(out / "nll_terms.csv")
    summary = {**meta, **res.summary()}
    (out / "nll.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"NLL {res.bpd:.4f} ± {res.bpd_stderr:.4f} bits/dim (± = standard error; {res.num} images of "
          f"{meta['data']}; prior {res.prior:.2e}, decoder L0 {res.decoder_bpd:.4f})")
    print(f"per-t terms and x̂0 MSE: {csv}; summary: {out / 'nll.json'}")
    return 0


def run_rate_distortion(args: argparse.Namespace) -> int:
    from ddpm.evaluate.rate_distortion import from_bpd_result, plot_rate_distortion

    res, meta = _bpd(args)
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
    print(f"wrote {csv} and {png}")
    return 0


# -------------------------------------------------------------------------------------- FID / IS
def _generated(args, device):
    """uint8 NHWC samples from --samples or generated from --ckpt (sharded under torchrun)."""
    from ddpm.evaluate.fid import load_images

    if args.samples:
        return load_images(args.samples, args.num), None, True, None
    from ddpm import distributed
    from ddpm.checkpoint import load_checkpoint
    from ddpm.images import save_npz, to_uint8
    from ddpm.sampling.api import generate

    info, device = distributed.setup(device)
    ck = load_checkpoint(args.ckpt, use_ema=not args.raw, device=device)
    labels = common.class_labels_from_args(args, ck.config.model.num_classes, args.num)
    sampler = common.sampler_config_from_args(args, ck.config.sampling)
    x = generate(ck.model, ck.diffusion, args.num, batch_size=args.batch_size, sampler=sampler,
                 class_labels=labels, seed=args.seed, device=device,
                 progress=common.show_progress(args, info.is_main),
                 rank=info.rank, world_size=info.world_size, fast=common.fast_path_from_args(args, device))
    x = distributed.gather_shards(x, info)
    distributed.cleanup()
    if not info.is_main:
        return None, ck, False, None
    if args.save_samples:
        save_npz(x, args.save_samples)
    used = {"sampler": dataclasses.asdict(sampler), "class": args.class_label, "seed": args.seed,
            "weights": ck.weights, "step": ck.step}
    return to_uint8(x), ck, True, used


def _sampler_flags_given(args) -> bool:
    names = ("sampler", "steps", "spacing", "eta", "guidance", "clip_denoised", "class_label")
    return any(getattr(args, n, None) is not None for n in names) or bool(args.sampler_options)


def run_quality(args: argparse.Namespace) -> int:
    from ddpm.errors import UserError
    from ddpm.evaluate.fid import reference_statistics, score_images
    from ddpm.evaluate.inception import load_inception

    device = common.setup_runtime(args)
    if args.samples and _sampler_flags_given(args):
        raise UserError("sampler options apply to --ckpt (generating samples), not to --samples")
    want_fid = args.want_fid
    if want_fid and not args.ref and not args.ckpt:
        raise UserError("--ref is needed with --samples: a stats .npz, an image folder/.npz or a dataset name")
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
    if want_fid:
        print(f"FID {scores['fid']:.3f} ({n} samples vs {ref_desc}, {ref.num} reference images){note}")
    if scores["is_mean"] is not None:
        print(f"IS {scores['is_mean']:.3f} ± {scores['is_std']:.3f} ({n} samples, {args.splits} splits){note}")
    elif not want_fid:
        raise UserError(f"IS needs at least {args.splits} samples for {args.splits} splits, got {n}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**scores, "reference": ref_desc or None, "generated": used}, indent=2) + "\n")
    return 0


def run_fid_stats(args: argparse.Namespace) -> int:
    from ddpm.evaluate.fid import reference_statistics
    from ddpm.evaluate.inception import load_inception

    device = common.setup_runtime(args)
    net = load_inception(args.inception, device=device)
    stats = reference_statistics(net, args.data, num=args.num, split=args.split, resolution=args.resolution,
                                 channels=args.channels, device=device, progress=common.show_progress(args))
    stats.save(args.out)
    print(f"wrote {args.out} ({stats.num} images)")
    return 0
