"""`ddpm sample`: draw images from a checkpoint (EMA weights unless --raw) with any registered sampler.

The sampler settings default to the checkpoint's own (``config.sampling``) and are checked once by
:func:`ddpm.sampling.registry.resolve_sampler`. Every path goes through
:func:`ddpm.sampling.api.generate`. Under torchrun each rank draws its shard (images i with
i % world_size == rank) and rank 0 gathers and writes; the images do not depend on the number of
ranks or the batch size.

Outputs (see :mod:`ddpm.outputs`) are checked before anything is computed, written atomically, and
carry their provenance: the PNG text chunk ``ddpm``, the .npz keys ``labels`` and ``provenance``, a
sidecar ``NAME.json`` beside a grid or .npz and ``DIR/provenance.json`` in an ``--out-dir``. An
existing grid or .npz is replaced only with ``--overwrite``; ``--out-dir`` never replaces a file: it
goes on after the highest ``NNNNNN.png`` there, drawing the next images of the seed's stream.
"""

from __future__ import annotations

import json
import time

from ddpm.cli import common

DEFAULT_GRID = "samples.png"
FOLDER_RECORD = "provenance.json"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sample", help="generate images from a checkpoint",
                              description="Generate images from a checkpoint (run dir, checkpoint dir, "
                                          ".safetensors file, diffusers folder or Hub id). Writes a PNG grid, "
                                          f"PNG files and/or an npz; with none given, ./{DEFAULT_GRID}. Each "
                                          "output records the checkpoint, sampler, seed and labels.")
    p.add_argument("--ckpt", required=True, help="run dir, checkpoint dir, weights file, diffusers folder or "
                                                 "Hub id org/name[@revision]")
    p.add_argument("-n", "--num", type=common.positive_int, default=64, help="number of images (default 64)")
    p.add_argument("--batch-size", type=common.positive_int, default=64,
                   help="images per forward pass (default 64)")
    p.add_argument("--seed", type=common.seed, default=0,
                   help="image i depends only on (seed, i); 0 <= seed < 2**63 (default 0)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--grid", metavar="PNG", help="write all images as one PNG grid")
    p.add_argument("--nrow", type=common.positive_int,
                   help="images per grid row (default: square; with --class all and --nrow num_classes "
                        "each column is one class)")
    p.add_argument("--out-dir", metavar="DIR",
                   help="write each image as DIR/NNNNNN.png; numbering (and the seed's image stream) goes on "
                        "after the files already there")
    p.add_argument("--npz", metavar="NPZ", help="write uint8 NHWC images as arr_0 of an .npz (FID tools), "
                                                "with labels and provenance keys")
    common.add_overwrite_arg(p, "--grid/--npz files (and their .json sidecars)")
    common.add_sampler_args(p)
    common.add_classifier_args(p)
    common.add_runtime_args(p)
    common.add_speed_args(p)
    p.set_defaults(func=run)


def _check_outputs(args):
    """[(path, kind)] of every output, each checked (format, place, overwrite) before any work."""
    from ddpm.outputs import OutputError, sidecar_path

    grid = args.grid or (None if (args.out_dir or args.npz) else DEFAULT_GRID)
    outputs = []
    for path, kind, flag in ((grid, "png", "--grid"), (args.npz, "npz", "--npz")):
        if path:
            p = common.check_output(path, kind=kind, overwrite=args.overwrite, flag=flag)
            common.check_output(sidecar_path(p), overwrite=args.overwrite, flag=f"{flag} sidecar")
            outputs.append((p, kind))
    if args.out_dir:
        d = common.check_output(args.out_dir, is_dir=True, flag="--out-dir")
        record = d / FOLDER_RECORD
        if record.exists():
            try:
                json.loads(record.read_text())["runs"]
            except (ValueError, KeyError, TypeError):
                raise OutputError(f"{record} is not a record written by ddpm sample; move it away") from None
        outputs.append((d, "dir"))
    if len({str(p.resolve()) for p, _ in outputs}) < len(outputs):
        raise OutputError("--grid, --npz and --out-dir must be different paths")
    return outputs


def run(args) -> int:
    from ddpm import distributed
    from ddpm.checkpoint import load_checkpoint
    from ddpm.sampling.api import generate
    from ddpm.sampling.registry import resolve_sampler

    t0 = time.perf_counter()
    device = common.setup_runtime(args)
    outputs = _check_outputs(args)
    first = 0
    if args.out_dir:
        from ddpm.outputs import next_index

        first = next_index(args.out_dir)

    info, device = distributed.setup(device)
    loaded = load_checkpoint(args.ckpt, use_ema=not args.raw, device=device)
    num_classes = loaded.config.model.num_classes
    classifier, scale, condition_model = common.classifier_from_args(args, loaded.diffusion, device)
    label_classes = num_classes if classifier is None else classifier.config.num_classes
    sampler = common.sampler_config_from_args(args, loaded.config.sampling)
    common.check_memory(loaded.config.model, args.num, args.batch_size, sampler, device)  # before any list of n
    labels = common.class_labels_from_args(args, label_classes, args.num, first)
    resolved = resolve_sampler(sampler, loaded.diffusion.num_timesteps, num_classes=num_classes,
                               labels=labels is not None)
    fast = common.fast_path_from_args(args, device)
    t1 = time.perf_counter()
    x = generate(loaded.model, loaded.diffusion, args.num, batch_size=args.batch_size, sampler=sampler,
                 class_labels=labels, seed=args.seed, device=device,
                 progress=common.show_progress(args, info.is_main), rank=info.rank,
                 world_size=info.world_size, fast=fast, first_index=first,
                 classifier=classifier, classifier_scale=scale, condition_model=condition_model)
    x = distributed.gather_shards(x, info)
    distributed.barrier()
    distributed.cleanup()  # leave the process group cleanly before any rank exits
    if not info.is_main:
        return 0
    t2 = time.perf_counter()
    timings = {"load": t1 - t0, "sample": t2 - t1}
    _write(args, x, outputs, loaded, resolved, labels, first, timings)
    span = f"{first:06d}..{first + len(x) - 1:06d}" if args.out_dir else f"{len(x)}"
    what = (f"sampled {len(x)} images" + (f" ({span})" if args.out_dir else "") +
            f" [{resolved.describe()}; seed {args.seed}; {_label_text(labels, num_classes)}] with the "
            f"{loaded.weights} weights of step {loaded.step} of {args.ckpt} on {device}")
    print(common.summary(what, time.perf_counter() - t0, [p for p, _ in outputs]))
    return 0


def _label_text(labels, num_classes) -> str:
    if num_classes is None:
        return "unconditional model"
    if labels is None:
        return "null label"
    return f"class {labels}" if isinstance(labels, int) else "class i % " + str(num_classes)


def _write(args, x, outputs, loaded, resolved, labels, first, timings) -> None:
    import numpy as np

    from ddpm.images import save_folder, save_grid, save_npz, to_uint8
    from ddpm.outputs import ensure_parent, provenance, write_json, write_sidecar

    images = to_uint8(x)
    n = len(images)
    num_classes = loaded.config.model.num_classes
    per_image = None
    if num_classes is not None or labels is not None:  # the label each image was drawn with; -1 = the null label
        per_image = np.full(n, -1, np.int64) if labels is None else np.broadcast_to(np.asarray(labels), (n,)).astype(np.int64)
    guide = {} if not getattr(args, "classifier", None) else {"classifier_guidance": {
        "checkpoint": args.classifier, "scale": 1.0 if args.classifier_scale is None else args.classifier_scale,
        "model_null_label": bool(args.model_null_label)}}
    record = provenance(checkpoint=loaded, source=args.ckpt, sampler=resolved, seed=args.seed, labels=labels,
                        num_images=n, first_index=first, device=str(x.device), timings=timings, **guide)
    for path, kind in outputs:
        if kind == "png":
            ensure_parent(path)
            save_grid(images, path, nrow=args.nrow, metadata=record)
            write_sidecar(path, record)
        elif kind == "npz":
            ensure_parent(path)
            extra = {} if per_image is None else {"labels": per_image}
            save_npz(images, path, metadata=record, **extra)
            write_sidecar(path, record)
        else:
            base = {k: v for k, v in record.items() if k != "labels"}

            def meta(i, base=base):
                one = {**base, "index": first + i}
                if per_image is not None:
                    one["label"] = int(per_image[i])
                return one

            save_folder(images, path, start=first, metadata=meta)
            runs = json.loads((path / FOLDER_RECORD).read_text())["runs"] if (path / FOLDER_RECORD).exists() else []
            runs.append({**record, "indices": [first, first + n]})
            write_json(path / FOLDER_RECORD, {"runs": runs})
