"""`ddpm plot RUN`: a run's loss curve (log scale, smoothed, by timestep bucket) and its quality points."""

from __future__ import annotations

from ddpm.cli import common


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help="plot a run's training loss (and quality, when measured)",
                              description="Write RUN's loss by step (log scale, raw and smoothed), the loss by "
                                          "timestep bucket, and FD against step when RUN holds `ddpm eval "
                                          "quality --json` or `ddpm eval sweep` results. See docs/training.md.")
    p.add_argument("run_dir", metavar="RUN", help="a run directory written by `ddpm train`")
    p.add_argument("--out", help="output image: .png, .pdf or .svg (default RUN/loss.png)")
    p.add_argument("--smooth", type=common.finite_float(0.0, 0.999), default=0.9,
                   help="EMA smoothing weight of the curves, 0 = none (default 0.9)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ddpm.train.plot import check_output, plot_run

    if args.out:
        check_output(args.out)
    path = plot_run(args.run_dir, args.out, smoothing=args.smooth)
    print(f"wrote {path}")
    return 0
