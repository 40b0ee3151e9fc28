"""Where a progressive-distillation student loses against its teacher (docs/distillation.md).

    python scripts/pd_diagnose.py swaps STUDENT TEACHER [-n 1000] [--seed 7] [--json F]
    python scripts/pd_diagnose.py gap STUDENT [-n 500]

``swaps``: the student's K DDIM steps (trailing grid, as it samples), the teacher's 2K (the student's
target) and the teacher's own K ("teacher alone"), from the same x_T and labels (image i class
i % 10), then the student's chain with one step at a time — and each half — replaced by the
teacher's two DDIM steps over the same interval. FD of each chain (digits features, n images): how
much of the student's gap each of its steps costs. The chains share x_T, so their differences are
far less noisy than the ± of any one FD.

``gap``: the student's mean ‖x̃ − x̂‖² at each grid step (two noise draws) with x_0 from the training
split, the held-out split and the teacher's own DDIM samples (2K steps): whether the student fits
the training images' neighbourhoods better than where sampling goes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from ddpm.checkpoint import load_checkpoint
from ddpm.evaluate.quality import score_images


def chain(student, teacher, x_T, y, by_teacher=(), single=False) -> torch.Tensor:
    """The student's K-step DDIM chain from x_T, each step j in ``by_teacher`` (0: the first, at
    t = T − 1) replaced by two teacher DDIM steps over the same interval (``single``: by one teacher
    step, so that all K swapped is the teacher's own K-step DDIM); unclipped output."""
    from ddpm.train.progressive import DDIMJumps, pd_grid

    grid = pd_grid(student.diffusion.num_timesteps, int(student.config.sampling.steps))[::-1]
    jumps = DDIMJumps(student.diffusion, "cpu")

    def step(ck, z, t, t_next, yy):
        at = lambda v: torch.full((len(z),), int(v))  # noqa: E731
        return jumps.step(ck.diffusion, ck.model, z, at(t), at(t_next), {"y": yy}, clip=True)

    out = []
    with torch.no_grad():
        for b in range(0, len(x_T), 250):
            z, yy = x_T[b:b + 250], y[b:b + 250]
            for j, (t, t1, t2) in enumerate(grid):
                if j in by_teacher and single:
                    z = step(teacher, z, t, t2, yy)
                elif j in by_teacher:
                    z = step(teacher, step(teacher, z, t, t1, yy), t1, t2, yy)
                else:
                    z = step(student, z, t, t2, yy)
            out.append(z)
    return torch.cat(out)


def swaps(args) -> None:
    from ddpm.train.progressive import pd_grid

    student, teacher = load_checkpoint(args.student), load_checkpoint(args.teacher)
    K = int(student.config.sampling.steps)
    tops = pd_grid(student.diffusion.num_timesteps, K)[::-1, 0]
    x_T = torch.randn(args.n, *student.config.model.image_shape, generator=torch.Generator().manual_seed(args.seed))
    y = torch.arange(args.n) % 10
    names = {"student": set(), "teacher": set(range(K)), "teacher alone": set(range(K))}
    names.update({f"teacher at t={tops[j]}": {j} for j in range(K)})
    if K > 2:
        names.update({"teacher first half": set(range(K // 2)), "teacher second half": set(range(K // 2, K))})
    if args.only:
        unknown = [k for k in args.only.split(",") if k not in names]
        if unknown:
            print(f"pd_diagnose.py: unknown chain(s) {unknown} in --only; choose from {list(names)}", file=sys.stderr)
            raise SystemExit(2)
        names = {k: names[k] for k in args.only.split(",")}
    rows = []
    for name, by_teacher in names.items():
        t0 = time.perf_counter()
        images = chain(student, teacher, x_T, y, by_teacher, single=name == "teacher alone")
        r = score_images(images.clamp(-1, 1), y.numpy(), seed=0)
        rows.append({"chain": name, "n": args.n, "seed": args.seed, "fd": r.fd, "fd_std": r.fd_std,
                     "accuracy": r.accuracy, "precision": r.precision, "recall": r.recall,
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"| {name} | {r.fd:.3f} ± {r.fd_std:.3f} | {100 * r.accuracy:.1f} % |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"student": args.student, "teacher": args.teacher, "rows": rows}, f, indent=1)


def gap(args) -> None:
    from ddpm.data.digits import load_digits
    from ddpm.images import from_uint8
    from ddpm.sampling.api import generate
    from ddpm.train.progressive import ProgressiveDistillationObjective

    st = load_checkpoint(args.student)
    obj = ProgressiveDistillationObjective(st.config, st.diffusion, "cpu")
    teacher = load_checkpoint(obj.opts["teacher"])

    def images(split):
        x, y = load_digits(split)
        pick = np.random.default_rng(0).permutation(len(x))[:args.n]
        return from_uint8(x[pick]), torch.from_numpy(y[pick])

    y = torch.arange(args.n) % 10
    drawn = generate(teacher.model, teacher.diffusion, args.n, batch_size=250, sampler="ddim",
                     steps=obj.opts["teacher_steps"], spacing="trailing", class_labels=y, seed=123)
    sets = {"train": images("train"), "test": images("test"), "teacher samples": (drawn, y)}
    g = torch.Generator().manual_seed(1)
    print("| x_0 from | " + " | ".join(f"t={int(t)}" for t in obj.grid[:, 0]) + " |")
    for name, (x, labels) in sets.items():
        cells = []
        with torch.no_grad():
            for i in range(len(obj.grid)):
                ii = torch.full((len(x),), i)
                t_i = obj.grid[ii, 0]
                err = []
                for _ in range(2):
                    z = st.diffusion.q_sample(x, t_i, noise=torch.randn(x.shape, generator=g))
                    target = obj.target(z, ii, {"y": labels})
                    x_hat = st.diffusion.p_mean_variance(st.model, z, t_i, clip_denoised=False,
                                                         model_kwargs={"y": labels})["pred_xstart"]
                    err.append(((target - x_hat) ** 2).mean().item())
                cells.append(f"{np.mean(err):.2e}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("swaps")
    s.add_argument("student")
    s.add_argument("teacher")
    s.add_argument("-n", type=int, default=1000)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--json")
    s.add_argument("--only", help="comma-separated chain names, e.g. 'student,teacher,teacher alone'")
    g = sub.add_parser("gap")
    g.add_argument("student")
    g.add_argument("-n", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    {"swaps": swaps, "gap": gap}[args.cmd](args)


if __name__ == "__main__":
    main()
