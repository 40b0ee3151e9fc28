"""`ddpm sample`: draw images from a checkpoint (EMA weights unless --raw) with any sampler.

Every path goes through :func:`ddpm.sampling.api.generate`. Under torchrun each rank draws its shard
(images i with i % world_size == rank) and rank 0 gathers and writes; the images do not depend on
the number of ranks or the batch size.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ddpm.cli.train import positive_int
from ddpm.config import PRECISION_CHOICES
from ddpm.errors import ConfigError, UserError

DEFAULT_GRID = "samples.png"


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _class_arg(text: str):
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class index or 'all', got {text!r}") from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sample", help="generate images from a checkpoint",
                              description="Generate images from a checkpoint (run dir, checkpoint dir, "
                                          ".safetensors file or diffusers folder). Writes a PNG grid, "
                                          f"PNG files and/or an npz; with none given, ./{DEFAULT_GRID}.")
    p.add_argument("--ckpt", required=True, help="run dir, checkpoint dir, weights file or diffusers folder")
    p.add_argument("-n", "--num", type=positive_int, default=64, help="number of images (default 64)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="image i depends only on (seed, i)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--grid", metavar="PNG", help="write all images as one PNG grid")
    p.add_argument("--nrow", type=positive_int, help="images per grid row (default: square)")
    p.add_argument("--out-dir", metavar="DIR", help="write each image as DIR/000000.png, ...")
    p.add_argument("--npz", metavar="NPZ", help="write uint8 NHWC images as arr_0 of an .npz (FID tools)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: only on a terminal)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm",
                   help="ddpm: ancestral (Algorithm 2); ddim: deterministic at eta 0")
    p.add_argument("--steps", type=positive_int, help="sampling steps (default: all T of the model)")
    p.add_argument("--eta", type=float, help="DDIM eta (default 0; ddim only)")
    p.add_argument("--spacing", choices=["uniform", "quadratic", "even"], default="uniform",
                   help="which timesteps a --steps K chain visits")
    p.add_argument("--class", dest="class_label", type=_class_arg, metavar="C",
                   help="class label for a class-conditional model, or 'all' (image i gets label "
                        "i %% num_classes; with --nrow num_classes each column is one class); "
                        "default: the null label, i.e. unconditional samples")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance w: (1+w)·eps(x,c) - w·eps(x,null); needs --class")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    add_speed_args(p)
    p.set_defaults(func=run)


def add_speed_args(p) -> None:
    """The network's fast paths (see docs/speed.md); the defaults change no result on CPU."""
    g = p.add_argument_group("speed")
    g.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="network precision: auto = bf16 autocast on GPUs with bf16 tensor cores "
                        "(Ampere and later), fp32 elsewhere; fp32 for paper-exact numbers")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC weights and activations (default: on CUDA; off on CPU, where it helps "
                        "only large nets)")
    g.add_argument("--compile", action="store_true", help="torch.compile the network (slow first batch)")
    g.add_argument("--cuda-graph", action="store_true",
                   help="replay the network call from a captured CUDA graph (CUDA only)")


def fast_path_from_args(args, device):
    """The :class:`ddpm.accel.FastPath` that ``add_speed_args``' flags ask for on ``device``."""
    from ddpm.accel import FastPath

    if args.cuda_graph and device.type != "cuda":
        raise ConfigError(f"--cuda-graph needs a CUDA device, but sampling runs on {device}; drop it")
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    return FastPath(channels_last=channels_last, precision=None if args.precision == "auto" else args.precision,
                    compile=args.compile, cuda_graph=args.cuda_graph).resolve(device)


def _check_output(path: str, *, is_dir: bool) -> Path:
    """Fail before sampling (which may take minutes) when an output cannot be written."""
    p = Path(path)
    if not is_dir and p.is_dir():
        raise UserError(f"output {p} is a directory; give a file name")
    if is_dir and p.exists() and not p.is_dir():
        raise UserError(f"--out-dir {p} exists and is not a directory")
    parent = p if is_dir else (p.parent if str(p.parent) else Path("."))
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"cannot write {p}: {probe} is not a writable directory")
    return p


def run(args) -> int:
    import torch

    from ddpm.images import save_folder, save_grid, save_npz
    from ddpm.sampling.api import generate
    from ddpm import distributed
    from ddpm.checkpoint import load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device and args.device.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA GPU is available; use --device cpu")
    if args.eta is not None and args.sampler != "ddim":
        raise ConfigError("--eta applies to --sampler ddim only")
    if args.eta is not None and args.eta < 0:
        raise ConfigError(f"--eta must be >= 0, got {args.eta}")
    if args.guidance < 0:
        raise ConfigError(f"--guidance must be >= 0, got {args.guidance}")
    if args.guidance and args.class_label is None:
        raise ConfigError("--guidance needs --class C (guidance pushes samples towards a class)")
    grid = args.grid or (None if (args.out_dir or args.npz) else DEFAULT_GRID)
    outputs = [(_check_output(grid, is_dir=False), "grid")] if grid else []
    if args.out_dir:
        outputs.append((_check_output(args.out_dir, is_dir=True), "dir"))
    if args.npz:
        outputs.append((_check_output(args.npz, is_dir=False), "npz"))

    info, device = distributed.setup(args.device)
    loaded = load_checkpoint(args.ckpt, use_ema=not args.raw, device=device)
    num_classes = loaded.config.model.num_classes
    if args.guidance and num_classes is None:
        raise ConfigError("--guidance needs a class-conditional model; this checkpoint is unconditional")
    if args.class_label is not None:
        if num_classes is None:
            raise ConfigError("--class needs a class-conditional model; this checkpoint is unconditional")
        if args.class_label == "all":
            args.class_label = [i % num_classes for i in range(args.num)]
        elif not 0 <= args.class_label < num_classes:
            raise ConfigError(f"--class must be in 0..{num_classes - 1} for this model, got {args.class_label}")
    if args.steps is not None and args.steps > loaded.diffusion.num_timesteps:
        raise ConfigError(f"--steps must be at most the model's {loaded.diffusion.num_timesteps} timesteps")
    progress = (args.progress if args.progress is not None else sys.stderr.isatty()) and info.is_main
    fast = fast_path_from_args(args, device)
    x = generate(loaded.model, loaded.diffusion, args.num, batch_size=args.batch_size, sampler=args.sampler,
                 steps=args.steps, eta=args.eta, spacing=args.spacing, class_labels=args.class_label,
                 guidance=args.guidance, seed=args.seed, device=device, progress=progress,
                 rank=info.rank, world_size=info.world_size, fast=fast)
    x = distributed.gather_shards(x, info)
    distributed.barrier()
    distributed.cleanup()  # leave the process group cleanly before any rank exits
    if not info.is_main:
        return 0
    for path, kind in outputs:
        if kind == "grid":
            save_grid(x, path, nrow=args.nrow)
        elif kind == "dir":
            save_folder(x, path)
        else:
            save_npz(x, path)
        print(f"wrote {len(x)} images ({loaded.weights} weights, step {loaded.step}) to {path}")
    return 0
