"""``ddpm repro TARGET --scale tiny|paper``: train, evaluate and plot one table or figure of the paper and
write a Markdown report with the paper's numbers beside ours. Thin layer over :mod:`ddpm.repro`.

``--out`` is a resumable work folder: rerunning reuses its trained models and finished NLL chunks and
replaces its report, results and figures (each written atomically)."""

from __future__ import annotations

import argparse
import time

from ddpm.cli import common


def add_parser(subparsers) -> None:
    from ddpm.repro import TARGETS

    p = subparsers.add_parser("repro", help="reproduce a table or figure of the paper, with a report",
                              description=__doc__)
    p.add_argument("target", choices=TARGETS)
    # "smoke" exists for tests (seconds, meaningless numbers); it is not advertised.
    p.add_argument("--scale", default="tiny", choices=("tiny", "paper", "smoke"), metavar="{tiny,paper}",
                   help="tiny: bundled digits on a CPU (minutes); paper: the paper's setting (GPUs, datasets)")
    p.add_argument("--out", help="output directory (default repro/TARGET-SCALE); rerunning reuses its "
                                 "trained models and finished NLL chunks")
    p.add_argument("--data", help="dataset location (e.g. the CIFAR-10 folder) for --scale paper")
    p.add_argument("--ckpt", help="evaluate this checkpoint instead of training (not for table2)")
    p.add_argument("--steps", type=common.positive_int, help="override the number of training steps")
    p.add_argument("--inception", help="path to pt_inception-2015-12-05-6726825d.pth for FID/IS")
    common.add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ddpm.repro import run_repro

    t0 = time.perf_counter()
    out = args.out or f"repro/{args.target}-{args.scale}"
    common.check_output(out, is_dir=True, flag="--out")
    common.setup_runtime(args)
    report = run_repro(args.target, args.scale, out=args.out, data=args.data, ckpt=args.ckpt,
                       inception=args.inception, device=args.device, steps=args.steps,
                       progress=common.show_progress(args))
    print(common.summary(f"reproduced {args.target} at {args.scale} scale", time.perf_counter() - t0, [report]))
    return 0
