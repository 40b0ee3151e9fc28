#!/usr/bin/env python
"""The GPU targets of the speed issue, measured and projected (run by scripts/gpu_check.sh).

    python benchmarks/gpu_targets.py --bench-json benchmarks/results/cuda.json --out benchmarks/results/gpu_targets.json

Targets (paper's CIFAR-10 U-Net, 35.7M parameters):
  1. training >= 8,000 images/s at batch 128 (Trainer.train_step; bf16 autocast; eager and compiled)
  2. >= 1.5x diffusers (the stronger of its two ways of running) for training and sampling per NFE,
     read from the JSON that benchmarks/bench.py wrote in the same session
  3. 50,000 CIFAR-10 samples with 1000 ancestral steps in <= 40 minutes: the per-step time of the
     real sampling loop at several batch sizes, projected to 50k images (ceil(50000/B) batches of
     1000 steps); also generate() as shipped (per-image seeded noise) at the best batch size.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared harness in this folder)
import report  # noqa: E402  (the ratio targets and the interval verdict)
import measure  # noqa: E402  (FLOP counting and peaks)

from ddpm import accel  # noqa: E402
from ddpm.config import DiffusionConfig  # noqa: E402
from ddpm.models.unet import UNet  # noqa: E402

N_IMAGES, T, TRAIN_TARGET, SAMPLE_MINUTES = 50_000, 1000, 8000.0, 40.0


def median_time(fn, repeats: int, device) -> float:
    fn()
    measure.synchronize(device)
    times = []
    for _ in range(repeats):
        measure.synchronize(device)
        start = time.perf_counter()
        fn()
        measure.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="cifar10", help="U-Net preset (others only for a dry run)")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=30, help="training steps per timed run")
    p.add_argument("--sample-steps", type=int, default=20, help="sampler steps per timed run")
    p.add_argument("--sample-batches", type=int, nargs="+", default=[256, 1024, 2048])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurements")
    p.add_argument("--bench-json", default=None, help="bench.py results of this session, for the ratios")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.train_batch != 128 or args.preset != "cifar10":
        print("note: not the target setting (cifar10, batch 128): verdicts do not apply")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible", file=sys.stderr)
        return 2
    diffusion = DiffusionConfig().build()
    torch.manual_seed(0)
    model = UNet.from_preset(args.preset).to(device)
    tb = args.train_batch
    out: dict = {"machine": bench.machine_info(device), "train": {}, "sampling": {}, "verdicts": {}}
    precision = accel.default_precision(device)
    print(f"device {out['machine'].get('gpu', device)}; precision {precision}")

    # 1. training throughput at batch 128
    with tempfile.TemporaryDirectory() as tmp:
        for compiled in ([False] if args.no_compile else [False, True]):
            fast = accel.FastPath(precision=precision, compile=compiled)
            run = bench.ours_train(model, diffusion, device, tb, args.train_steps, precision, fast, Path(tmp))
            try:
                sec = median_time(run, args.repeats, device) / args.train_steps
            except Exception as exc:  # compile can fail on an odd toolchain; report, don't die
                print(f"train (compile={compiled}) failed: {exc}")
                continue
            key = "compiled" if compiled else "eager"
            out["train"][key] = {"batch": tb, "sec_per_step": sec, "images_per_s": tb / sec}
            print(f"train batch {tb} {key:>8}: {sec * 1e3:7.2f} ms/step = {tb / sec:8.0f} img/s "
                  f"(target {TRAIN_TARGET:.0f})")
    best_train = max((v["images_per_s"] for v in out["train"].values()), default=0.0)
    out["verdicts"]["train_8000_img_s"] = best_train >= TRAIN_TARGET

    # 3. sampling projection for 50k images x 1000 steps
    model.eval()
    for cuda_graph in (False, True):
        fast = accel.FastPath(precision=precision, cuda_graph=cuda_graph)
        for b in args.sample_batches:
            run = bench.ours_sampler(model, diffusion, device, b, args.sample_steps, precision, fast, "ddpm")
            try:
                sec = median_time(run, args.repeats, device) / args.sample_steps
            except torch.cuda.OutOfMemoryError:
                print(f"sampling batch {b}: out of memory")
                torch.cuda.empty_cache()
                continue
            minutes = math.ceil(N_IMAGES / b) * T * sec / 60
            key = f"batch{b}" + ("+cudagraph" if cuda_graph else "")
            out["sampling"][key] = {"sec_per_step": sec, "nfe_per_s": b / sec, "projected_minutes_50k": minutes}
            print(f"sampling {key:>18}: {sec * 1e3:7.2f} ms/step, {b / sec:8.0f} NFE/s, "
                  f"50k x 1000 steps projected {minutes:6.1f} min (target {SAMPLE_MINUTES:.0f})")
    best = min(out["sampling"].items(), key=lambda kv: kv[1]["projected_minutes_50k"], default=None)
    if best:
        out["verdicts"]["sample_50k_40min"] = best[1]["projected_minutes_50k"] <= SAMPLE_MINUTES
        out["best_sampling"] = best[0]
        b = int(best[0].split("+")[0][5:])
        from ddpm.sampling.api import generate

        gen_steps = 10  # generate() with a 10-step respaced chain: same per-step cost, real noise path
        generate(model, diffusion, b, batch_size=b, steps=gen_steps, device=device)  # warm-up
        measure.synchronize(device)
        start = time.perf_counter()
        generate(model, diffusion, b, batch_size=b, steps=gen_steps, device=device)
        measure.synchronize(device)
        sec = (time.perf_counter() - start) / gen_steps
        minutes = math.ceil(N_IMAGES / b) * T * sec / 60
        out["sampling"][f"generate_fp32_batch{b}"] = {"sec_per_step": sec, "projected_minutes_50k": minutes}
        print(f"generate() as shipped (fp32, no fast-path flags) batch {b}: {sec * 1e3:.2f} ms/step, "
              f"projected {minutes:.1f} min")

    # 2. ratios against diffusers from bench.py's JSON
    if args.bench_json and Path(args.bench_json).is_file():
        res = json.loads(Path(args.bench_json).read_text())
        mode = res["modes"].get(precision) or next(iter(res["modes"].values()))
        for group in ("train", "ddpm", "ddim"):
            ratios = mode.get(group, {}).get("ratios", {})
            if ratios:
                worst = min(ratios.values())
                out["verdicts"][f"{group}_1.5x_diffusers"] = worst >= report.GPU_TARGET
                print(f"{group}: ddpm vs diffusers " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
                for k, pr in mode[group].get("paired_ratios", {}).items():  # how sure the medians are
                    print(f"    {k}: per-round median {pr['median']:.2f}x, {100 * pr['confidence']:.0f}% "
                          f"interval {pr['ci_low']:.2f}-{pr['ci_high']:.2f}x: "
                          f"{report.verdict(pr, report.GPU_TARGET)}")
    print("\nverdicts: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in out["verdicts"].items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
