"""``ddpm eval quality`` and ``ddpm eval sweep``: sample quality on the digits feature network.

Thin layer over :mod:`ddpm.evaluate.quality` and :mod:`ddpm.evaluate.sweep`; the metrics and their
± are described in ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ddpm.cli import common
from ddpm.errors import ConfigError


def _classes(text: str):
    if text in ("all", "null"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class index, 'all' or 'null', got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {text!r}") from None
    if not vals or any(v != v or v in (float("inf"), float("-inf")) for v in vals):
        raise argparse.ArgumentTypeError(f"expected a comma list of finite numbers, got {text!r}")
    return vals


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of step counts, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"step counts must be ≥ 1, got {text!r}")
    return vals


def _shared(q, *, n_default: int) -> None:
    q.add_argument("--ckpt", required=True, help="run dir, checkpoint dir, .safetensors, diffusers folder or Hub id")
    q.add_argument("-n", "--num", type=common.positive_int, default=n_default,
                   help=f"images per setting (default {n_default}; the digits floor needs n ≤ 1250)")
    q.add_argument("--class", dest="classes", type=_classes, default="all", metavar="all|null|C",
                   help="requested classes of a conditional model: all (image i gets i %% 10, default; "
                        "scores accuracy), null (unconditional samples) or one class")
    from ddpm.evaluate.sweep import DIGITS_FEATURES

    q.add_argument("--features", default="digits", choices=(*DIGITS_FEATURES, "inception"),
                   help="feature network: digits (the shipped digits networks against the 2,500 digits they never "
                        "saw, offline; default), digits-v1 (their first version, for tables measured with it) or "
                        "inception (the FID network, for RGB data; needs its weights, see --inception)")
    q.add_argument("--inception", help="--features inception: path to pt_inception-2015-12-05-6726825d.pth "
                                       "(else $DDPM_INCEPTION_WEIGHTS, else ~/.cache/ddpm, downloading)")
    q.add_argument("--ref", help="--features inception: real images to compare with — a dataset name, image "
                                 "folder or .npz (default: the checkpoint's training data)")
    q.add_argument("--ref-split", default="train", choices=("train", "test"),
                   help="--features inception: dataset split of --ref (default train)")
    q.add_argument("--ref-num", type=common.positive_int, default=10_000,
                   help="--features inception: reference images to use (default 10000)")
    q.add_argument("--batch-size", type=common.positive_int, default=100, help="sampling batch size (default 100)")
    q.add_argument("--seed", type=common.seed, default=0,
                   help="image i depends only on (seed, i); 0 <= seed < 2**63 (default 0)")
    q.add_argument("--raw", action="store_true", help="sample with the raw instead of the EMA weights")
    common.add_runtime_args(q)
    common.add_speed_args(q)


def add_parsers(sub) -> None:
    q = sub.add_parser("quality", help="FD, KID, precision/recall, class accuracy on digits features",
                       description=__doc__)
    _shared(q, n_default=500)
    common.add_sampler_args(q, classes=False)
    common.add_classifier_args(q)
    q.add_argument("--json", help="write the scores (and the real-vs-real floor) to this JSON file")
    common.add_overwrite_arg(q, "--json file")
    q.set_defaults(func=run_quality)

    q = sub.add_parser("sweep", help="quality against cost over samplers × steps × guidance (resumable)",
                       description=__doc__)
    _shared(q, n_default=500)
    q.add_argument("--samplers", required=True,
                   help="comma list of samplers with options after ':', e.g. ddpm,ddim:eta=0,ddim:eta=1")
    q.add_argument("--steps", type=_ints, required=True, help="comma list of step counts, e.g. 10,20,50,1000")
    q.add_argument("--spacing", help="timestep spacing for every setting (default: each sampler's own)")
    q.add_argument("--clip", dest="clip_denoised", action=argparse.BooleanOptionalAction, default=None,
                   help="clip x̂0 to [-1, 1] in every step, for every setting (default: each setting's own, yes)")
    q.add_argument("--guidance", type=_floats, default=[0.0],
                   help="comma list of guidance weights w >= 0 (default 0); " + common.GUIDANCE_HELP)
    common.add_classifier_args(q, scale_type=_floats)
    q.add_argument("--json", required=True, help="the sweep's table; rows already in it are kept, not re-run "
                                                 "(the table is updated in place, atomically)")
    q.add_argument("--samples", metavar="DIR",
                   help="keep every setting's images in DIR (8-bit .npz with their sampling time) and score "
                        "images kept there before instead of sampling again: a changed instrument re-scores "
                        "a table without sampling (delete --json, run again)")
    q.add_argument("--plot", help="write FD vs NFE and vs seconds to this PNG (redrawn from the table on "
                                  "every run, like the table itself)")
    q.add_argument("--markdown", help="write the whole table (every row of --json, and the floor) as Markdown "
                                      "(redrawn on every run)")
    q.set_defaults(func=run_sweep)

    q = sub.add_parser("classifier", help="a noisy classifier's held-out accuracy at each noise level",
                       description="Accuracy of a noise-aware classifier (ddpm train --preset digits-classifier) on "
                                   "its data set's held-out split noised to t in each range (Dhariwal & Nichol "
                                   "2021, §4).")
    q.add_argument("--ckpt", required=True, help="the classifier: run dir, checkpoint dir or weights file")
    q.add_argument("--ranges", default="0-0,0-99,100-299,300-599,600-999",
                   help="comma list of code-timestep ranges (default 0-0,0-99,100-299,300-599,600-999)")
    q.add_argument("--split", default="test", choices=("train", "test"), help="default: test (held out)")
    q.add_argument("--draws", type=common.positive_int, default=1, help="(t, eps) draws per image (default 1)")
    q.add_argument("--seed", type=common.seed, default=0, help="seed of the t and eps draws")
    q.add_argument("--batch-size", type=common.positive_int, default=250, help="default 250")
    q.add_argument("--json", help="write the rows to this JSON file")
    common.add_overwrite_arg(q, "--json file")
    common.add_runtime_args(q)
    q.set_defaults(func=run_classifier)


def _load(args):
    """(checkpoint, device, instrument): the instrument is checked against the model before sampling."""
    from ddpm.checkpoint import load_checkpoint
    from ddpm.evaluate.sweep import instrument_for

    device = common.setup_runtime(args)
    ck = load_checkpoint(args.ckpt, use_ema=not args.raw, device=device)
    if args.features != "inception":
        return ck, device, instrument_for(ck.config, args.features)
    from ddpm.evaluate.inception import load_inception
    from ddpm.evaluate.inputs import eval_images

    net = load_inception(args.inception, device=device)  # a missing weights file fails before sampling
    x, _, desc = eval_images(args.ref, ck.config, split=args.ref_split, num=args.ref_num)
    if str(args.inception) == "random":
        desc += " (RANDOM Inception weights: a pipeline check, not a score)"
    return ck, device, instrument_for(ck.config, "inception", inception=net, ref_images=x, ref_desc=desc)


def run_quality(args: argparse.Namespace) -> int:
    from ddpm.evaluate.sweep import format_floor, format_row, measure
    from ddpm.outputs import ensure_parent, provenance, write_json

    t0 = time.perf_counter()
    if args.json:
        common.check_output(args.json, overwrite=args.overwrite, flag="--json")
    ck, device, instrument = _load(args)
    sampler = common.sampler_config_from_args(args, ck.config.sampling)
    classifier, scale, condition_model = common.classifier_from_args(args, ck.diffusion, device)
    common.check_memory(ck.config.model, args.num, args.batch_size, sampler, device)
    row = measure(ck, sampler, n=args.num, classes=args.classes, seed=args.seed, batch_size=args.batch_size,
                  device=device, progress=common.show_progress(args), fast=common.fast_path_from_args(args, device),
                  instrument=instrument, classifier=classifier, classifier_scale=scale,
                  condition_model=condition_model, classifier_path=args.classifier)
    print(f"features: {instrument.describe()}")
    print(format_row(row))
    if "floor" in row:
        print(format_floor(row["floor"], args.num))
    if args.json:
        ensure_parent(common.check_output(args.json, overwrite=args.overwrite, flag="--json"))
        write_json(args.json, {**row, "provenance": provenance(checkpoint=ck, source=args.ckpt, sampler=sampler,
                                                               seed=args.seed, classes=args.classes,
                                                               timings={"total": time.perf_counter() - t0})})
    print(common.summary(f"measured {args.num} images of {args.ckpt} (step {ck.step}) [{row['describe']}]",
                         time.perf_counter() - t0, [args.json]))
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from ddpm.evaluate.sweep import floor_for, format_floor, parse_samplers, plot_sweep, run_sweep, sampler_configs
    from ddpm.sampling.registry import resolve_sampler

    t0 = time.perf_counter()
    common.check_output(args.json, kind="json", may_exist=True, flag="--json")
    if args.plot:
        common.check_output(args.plot, kind="plot", may_exist=True, flag="--plot")
    if args.markdown:
        common.check_output(args.markdown, may_exist=True, flag="--markdown")
    if args.samples and Path(args.samples).exists() and not Path(args.samples).is_dir():
        raise ConfigError(f"--samples {args.samples} is a file; give a folder (it is created if missing)")
    ck, device, instrument = _load(args)
    scales = args.classifier_scale
    args.classifier_scale = None  # a list here: checked and used below, not by classifier_from_args
    classifier, _, condition_model = common.classifier_from_args(args, ck.diffusion, device)
    if scales is not None and classifier is None:
        raise ConfigError("--classifier-scale needs --classifier CKPT")
    if scales is not None and min(scales) < 0:
        raise ConfigError(f"--classifier-scale values must be ≥ 0, got {scales}")
    configs = sampler_configs(ck.config.sampling, parse_samplers(args.samplers), args.steps, args.guidance,
                              args.spacing, args.clip_denoised)
    cond = ck.config.model.num_classes is not None and args.classes != "null" and condition_model
    for cfg in configs:  # every setting checked before the first image is drawn
        resolve_sampler(cfg, ck.diffusion.num_timesteps, num_classes=ck.config.model.num_classes, labels=cond)
    n_settings = len(configs) * (len(scales or [1.0]) if classifier is not None else 1)
    print(f"{n_settings} settings × {args.num} images on {device}; table: {args.json}")
    rows = run_sweep(ck, configs, n=args.num, json_path=args.json, classes=args.classes, seed=args.seed,
                     batch_size=args.batch_size, device=device, progress=common.show_progress(args),
                     fast=common.fast_path_from_args(args, device), instrument=instrument, classifier=classifier,
                     classifier_scales=scales or [1.0], condition_model=condition_model,
                     classifier_path=args.classifier, samples_dir=args.samples)
    num_classes = classifier.config.num_classes if classifier is not None else ck.config.model.num_classes
    cls = args.classes if num_classes else "null"
    floor = floor_for(instrument, args.num, cls, num_classes) if args.num <= len(instrument.reference()[0]) // 2 \
        else None
    if floor:
        print(format_floor(floor, args.num))
    if args.plot:
        plot_sweep(rows, args.plot, floor=floor,
                   title=f"{ck.path} — n = {args.num} per point, {instrument.describe()} features")
    if args.markdown:
        from ddpm.evaluate.sweep import markdown_table
        from ddpm.outputs import write_text

        write_text(args.markdown, markdown_table(rows, {"n": args.num, **floor} if floor else None))
    print(common.summary(f"swept {len(configs)} settings x {args.num} images of {args.ckpt} (step {ck.step})",
                         time.perf_counter() - t0, [args.json, args.plot, args.markdown]))
    return 0


def run_classifier(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from ddpm.checkpoint import load_checkpoint
    from ddpm.data import load_dataset
    from ddpm.evaluate.noisy_classifier import accuracy_by_noise, format_rows, parse_ranges
    from ddpm.outputs import ensure_parent, provenance, write_json

    t0 = time.perf_counter()
    if args.json:
        common.check_output(args.json, overwrite=args.overwrite, flag="--json")
    device = common.setup_runtime(args)
    ck = load_checkpoint(args.ckpt, device=device)
    if getattr(ck.config.model, "arch", None) != "classifier":
        raise ConfigError(f"{args.ckpt} is not a noisy classifier (model.arch {ck.config.model.arch!r})")
    ranges = parse_ranges(args.ranges, ck.diffusion.num_timesteps)
    data = load_dataset(dataclasses.replace(ck.config.data, split=args.split))
    images = torch.stack([data[i][0] for i in range(len(data))]).float() / 127.5 - 1.0
    labels = torch.as_tensor([int(data[i][1]) for i in range(len(data))])
    rows = accuracy_by_noise(ck.model, ck.diffusion, images, labels, ranges, draws=args.draws, seed=args.seed,
                             batch_size=args.batch_size, device=device, progress=common.show_progress(args))
    print(f"{args.ckpt} on {len(images)} {args.split} images of {ck.config.data.source}:")
    print(format_rows(rows))
    if args.json:
        ensure_parent(common.check_output(args.json, overwrite=args.overwrite, flag="--json"))
        write_json(args.json, {"checkpoint": str(ck.path), "step": ck.step, "split": args.split, "rows": rows,
                               "provenance": provenance(checkpoint=ck, source=args.ckpt, seed=args.seed,
                                                        timings={"total": time.perf_counter() - t0})})
    print(common.summary(f"measured the classifier {args.ckpt} (step {ck.step}) on {len(images)} images",
                         time.perf_counter() - t0, [args.json]))
    return 0
