"""`ddpm distill progressive|consistency`: few-step students of a trained model.

- ``progressive``: progressive distillation (Salimans & Ho 2022, Algorithm 2), one round per halving of
  the DDIM steps from ``--from N`` to ``--to K``, into ``RUN/steps-K`` run directories;
- ``consistency``: consistency distillation (Song et al. 2023, Algorithm 2) into one run directory.

Both are thin layers over :mod:`ddpm.train.progressive` and :mod:`ddpm.train.consistency`. Running a
command again resumes it exactly; every student's checkpoint records its sampler and step count, so
``ddpm sample --ckpt RUN/steps-4`` needs no flags. Consistency *training* from data is a preset:
``ddpm train --preset digits-ct``. See docs/distillation.md.
"""

from __future__ import annotations

import sys

from ddpm.cli import common


def _shared(q) -> None:
    q.add_argument("--teacher", required=True, help="the teacher: run dir, checkpoint dir or weights file")
    q.add_argument("--run-dir", required=True, help="directory of the student run(s); rerun to resume")
    q.add_argument("--guidance", type=common.finite_float(0.0), default=0.0,
                   help="distil the teacher with classifier-free guidance w, fixed (the student samples at 0); "
                        + common.GUIDANCE_HELP)
    q.add_argument("--batch-size", type=common.positive_int, help="sets train.batch_size (default: the teacher's)")
    q.add_argument("--lr", type=common.finite_float(0.0), help="sets train.lr (default 2e-4)")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field of the student(s), e.g. --set train.ema_decay=0.999")
    common.add_runtime_args(q)


def _overrides(args) -> list[str]:
    out = list(args.overrides)
    if args.batch_size:
        out.append(f"train.batch_size={args.batch_size}")
    if args.lr is not None:
        out.append(f"train.lr={args.lr}")
    return out


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distil a model into a few-step student", description=__doc__)
    sub = p.add_subparsers(dest="method", metavar="METHOD", parser_class=type(p))
    sub.required = True

    q = sub.add_parser("progressive", help="progressive distillation: halve the DDIM steps per round",
                       description="Progressive distillation (Salimans & Ho 2022, Algorithm 2): a v-prediction "
                                   "student starts from its teacher and learns two teacher DDIM steps in one; "
                                   "each round halves the steps (trailing spacing).")
    _shared(q)
    q.add_argument("--from", dest="from_steps", type=common.positive_int, required=True,
                   help="N: the teacher's DDIM steps in the first round")
    q.add_argument("--to", dest="to_steps", type=common.positive_int, required=True,
                   help="K: the last student's steps (N = K·2^r)")
    q.add_argument("--round-steps", type=common.positive_int, required=True, help="optimizer steps per round")
    q.set_defaults(func=run_progressive)

    q = sub.add_parser("consistency", help="consistency distillation into a one-/few-step consistency model",
                       description="Consistency distillation (Song et al. 2023, Algorithm 2): the teacher's "
                                   "network becomes a consistency model (boundary parameterisation with "
                                   "sigma_data) trained against an EMA target on one teacher ODE step.")
    _shared(q)
    q.add_argument("--steps", type=common.positive_int, required=True, help="optimizer steps")
    q.add_argument("--solver", choices=("heun", "euler"), help="teacher ODE step (default heun; euler = DDIM)")
    q.add_argument("--num-scales", type=common.positive_int, help="N, points of the discretisation (default 18)")
    q.add_argument("--target-ema", type=common.finite_float(0.0, 1.0), help="mu of the target network (default 0.95)")
    q.add_argument("--metric", choices=("pseudo-huber", "l2"),
                   help="distance d (default pseudo-huber; LPIPS is not available offline)")
    q.set_defaults(func=run_consistency)


def run_progressive(args) -> int:
    from ddpm.train.progressive import run_progressive as run

    device = common.setup_runtime(args)
    dirs = run(args.teacher, args.from_steps, args.to_steps, args.run_dir, round_steps=args.round_steps,
               guidance=args.guidance, overrides=_overrides(args), device=device, progress=args.progress)
    for d in dirs:
        print(d)
    print(f"distilled {args.teacher} from {args.from_steps} to {args.to_steps} steps: sample with "
          f"`ddpm sample --ckpt {dirs[-1]}`", file=sys.stderr)
    return 0


def run_consistency(args) -> int:
    from ddpm.train.consistency import run_consistency_distillation

    device = common.setup_runtime(args)
    options = {"guidance": args.guidance}
    for key in ("solver", "num_scales", "target_ema", "metric"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    record = run_consistency_distillation(args.teacher, args.run_dir, steps=args.steps, options=options,
                                          overrides=_overrides(args), device=device, progress=args.progress)
    loss = f", loss {record['loss']:.4f}" if "loss" in record else ""
    print(f"distilled {args.teacher} into {args.run_dir} (step {record['step']}{loss}): sample with "
          f"`ddpm sample --ckpt {args.run_dir}`", file=sys.stderr)
    return 0
