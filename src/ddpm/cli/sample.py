"""`ddpm sample`: draw images from a checkpoint (EMA weights unless --raw) with any registered sampler.

The sampler settings default to the checkpoint's own (``config.sampling``) and are checked once by
:func:`ddpm.sampling.registry.resolve_sampler`. Every path goes through
:func:`ddpm.sampling.api.generate`. Under torchrun each rank draws its shard (images i with
i % world_size == rank) and rank 0 gathers and writes; the images do not depend on the number of
ranks or the batch size.
"""

from __future__ import annotations

from ddpm.cli import common

DEFAULT_GRID = "samples.png"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sample", help="generate images from a checkpoint",
                              description="Generate images from a checkpoint (run dir, checkpoint dir, "
                                          ".safetensors file or diffusers folder). Writes a PNG grid, "
                                          f"PNG files and/or an npz; with none given, ./{DEFAULT_GRID}.")
    p.add_argument("--ckpt", required=True, help="run dir, checkpoint dir, weights file or diffusers folder")
    p.add_argument("-n", "--num", type=common.positive_int, default=64, help="number of images (default 64)")
    p.add_argument("--batch-size", type=common.positive_int, default=64,
                   help="images per forward pass (default 64)")
    p.add_argument("--seed", type=common.non_negative_int, default=0, help="image i depends only on (seed, i)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--grid", metavar="PNG", help="write all images as one PNG grid")
    p.add_argument("--nrow", type=common.positive_int,
                   help="images per grid row (default: square; with --class all and --nrow num_classes "
                        "each column is one class)")
    p.add_argument("--out-dir", metavar="DIR", help="write each image as DIR/000000.png, ...")
    p.add_argument("--npz", metavar="NPZ", help="write uint8 NHWC images as arr_0 of an .npz (FID tools)")
    common.add_sampler_args(p)
    common.add_classifier_args(p)
    common.add_runtime_args(p)
    common.add_speed_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ddpm import distributed
    from ddpm.checkpoint import load_checkpoint
    from ddpm.images import save_folder, save_grid, save_npz
    from ddpm.sampling.api import generate

    device = common.setup_runtime(args)
    grid = args.grid or (None if (args.out_dir or args.npz) else DEFAULT_GRID)
    outputs = [(common.check_output(grid), "grid")] if grid else []
    if args.out_dir:
        outputs.append((common.check_output(args.out_dir, is_dir=True), "dir"))
    if args.npz:
        outputs.append((common.check_output(args.npz), "npz"))

    info, device = distributed.setup(device)
    loaded = load_checkpoint(args.ckpt, use_ema=not args.raw, device=device)
    num_classes = loaded.config.model.num_classes
    classifier, scale, condition_model = common.classifier_from_args(args, loaded.diffusion, device)
    label_classes = num_classes if classifier is None else classifier.config.num_classes
    labels = common.class_labels_from_args(args, label_classes, args.num)
    sampler = common.sampler_config_from_args(args, loaded.config.sampling)
    x = generate(loaded.model, loaded.diffusion, args.num, batch_size=args.batch_size, sampler=sampler,
                 class_labels=labels, seed=args.seed, device=device,
                 progress=common.show_progress(args, info.is_main), rank=info.rank,
                 world_size=info.world_size, fast=common.fast_path_from_args(args, device),
                 classifier=classifier, classifier_scale=scale, condition_model=condition_model)
    x = distributed.gather_shards(x, info)
    distributed.barrier()
    distributed.cleanup()  # leave the process group cleanly before any rank exits
    if not info.is_main:
        return 0
    for path, kind in outputs:
        {"grid": lambda: save_grid(x, path, nrow=args.nrow), "dir": lambda: save_folder(x, path),
         "npz": lambda: save_npz(x, path)}[kind]()
        print(f"wrote {len(x)} images ({loaded.weights} weights, step {loaded.step}) to {path}")
    return 0
