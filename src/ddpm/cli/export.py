"""``ddpm export SRC OUT``: a sampling-only checkpoint — the EMA weights of one checkpoint, or the
average of a run's last K checkpoints (``--average-last K``, stochastic weight averaging), optionally
stored in float16 (``--fp16``, half the size; loading upcasts).

Thin layer over :func:`ddpm.checkpoint.export_weights` and :func:`ddpm.averaging.average_checkpoints`.
OUT is an ordinary checkpoint directory (``ddpm sample --ckpt OUT`` needs no flags), written under a
temporary name and renamed into place; an existing OUT is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import time

from ddpm.cli import common
from ddpm.errors import ConfigError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="a sampling-only checkpoint: EMA weights, or the average of a run's "
                                             "last checkpoints", description=__doc__)
    p.add_argument("src", help="run directory (its newest checkpoint) or checkpoint directory (RUN/checkpoints/step_N)")
    p.add_argument("out", help="checkpoint directory to write")
    p.add_argument("--average-last", type=common.positive_int, metavar="K",
                   help="average the K newest checkpoints of the run SRC, or the checkpoint SRC and the K-1 before "
                        "it (stochastic weight averaging; see docs/training.md), instead of copying one "
                        "checkpoint's EMA weights")
    p.add_argument("--weights", choices=("raw", "ema"),
                   help="with --average-last: which weights of each checkpoint to average (default raw, the "
                        "optimiser's iterates)")
    p.add_argument("--fp16", action="store_true", help="store the weights in float16 (half the size)")
    p.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                   help="replace OUT if it exists (default: refuse)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ddpm.averaging import average_checkpoints, last_checkpoints
    from ddpm.checkpoint import export_weights, load_checkpoint

    t0 = time.perf_counter()
    if args.weights and not args.average_last:
        raise ConfigError("--weights chooses what --average-last averages; without it the EMA weights are "
                          "exported (add --average-last K, or drop --weights)")
    out = common.check_new_dir(args.out, args.overwrite)
    dtype = torch.float16 if args.fp16 else None
    if args.average_last:
        sources = last_checkpoints(args.src, args.average_last)
        average_checkpoints(sources, out, weights=args.weights or "raw", dtype=dtype)
        what = (f"averaged the {args.weights or 'raw'} weights of {len(sources)} checkpoints of {args.src} "
                f"({sources[0].name} .. {sources[-1].name})")
    else:
        export_weights(args.src, out, dtype=dtype)
        what = f"exported the EMA weights of {args.src}"
    step = load_checkpoint(out).step  # reads back what was written: a broken export fails here, not later
    print(common.summary(f"{what}, step {step}{', float16' if args.fp16 else ''}", time.perf_counter() - t0, [out]))
    return 0
