#!/usr/bin/env python
"""Forward and forward+backward throughput of the backbones, per GFLOP: DiT-XL/2 in its ImageNet 256×256
latent setting (32×32×4 latents, learned Σ, 1,000 classes) and the paper's CIFAR-10 U-Net.

    python benchmarks/backbones.py --device cpu --threads 1 --out benchmarks/results/backbones_cpu.json
    python benchmarks/backbones.py --device cuda --precision bf16 --batch 64 --out benchmarks/results/backbones_cuda.json

A GPU run later compares directly: the FLOPs per image are the same (PyTorch's FLOP counter, 2 per
multiply-add), so images/s and achieved GFLOP/s are the measures. Each network runs once untimed, then
``--repeats`` rounds in which the networks take turns (A/B/A/B...), each round one forward pass and one
forward+backward pass (with an Adam step: a training step without data loading); medians are reported,
with wall time and process CPU time. On a shared CPU the CPU time is the steadier of the two: it does
not count the time other processes held the cores (with ``--threads 1`` it is the work done).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ddpm import accel
from ddpm.models.registry import build_model
from ddpm.presets import get_preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402


def networks() -> dict:
    return {"dit-xl-2": get_preset("dit-xl-2").model.backbone_config, "cifar10-unet": get_preset("cifar10").model}


def make_inputs(cfg, batch: int, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *cfg.image_shape, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    kw = {"y": torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)} if cfg.num_classes else {}
    return x, t, kw


def runners(cfg, batch: int, device, precision: str):
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                           **accel.optimizer_kwargs(device))
    x, t, kw = make_inputs(cfg, batch, device)

    def forward():
        with torch.no_grad(), accel.autocast(device, precision):
            model(x, t, **kw)

    def train():
        with accel.autocast(device, precision):
            loss = model(x, t, **kw).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def train_flops():
        with accel.autocast(device, precision):
            model(x, t, **kw).float().pow(2).mean().backward()
        opt.zero_grad(set_to_none=True)

    params = sum(p.numel() for p in model.parameters())
    return model, forward, train, train_flops, params


def timed(fn, device) -> tuple[float, float]:
    measure.synchronize(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    measure.synchronize(device)
    return time.perf_counter() - w0, time.process_time() - c0


def cpu_matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of an n×n fp32 matmul by process CPU time (per core with one thread): the CPU peak
    that other processes on a shared machine do not lower (measure.measure_matmul_flops times wall)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        for _ in range(4):
            a @ b
        best = min(best, (time.process_time() - c0) / 4)
    return 2.0 * n**3 / best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--batch", type=int, default=2, help="images per pass (default 2: CPU-sized)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", nargs="+", default=list(networks()), choices=list(networks()))
    p.add_argument("--out", help="write results JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    nets = {}
    for name in args.only:
        cfg = networks()[name]
        model, fwd, train, train_flops, params = runners(cfg, args.batch, device, args.precision)
        # Counted on the math attention path: the counter does not see the fused CPU attention kernel
        # (multi-head SDPA counts 0 FLOPs there); the timed passes use the default (fused) kernels.
        with sdpa_kernel(SDPBackend.MATH):
            flops_fwd = measure.count_flops(fwd) / args.batch
            flops_train = measure.count_flops(train_flops) / args.batch
        fwd(), train()  # warm-up (allocator, first-call paths)
        nets[name] = {"cfg": cfg, "fwd": fwd, "train": train, "params": params, "flops_fwd": flops_fwd,
                      "flops_train": flops_train, "times": {"fwd": [], "train": []}}
        del model
    for _ in range(args.repeats):
        for n in nets.values():
            for kind in ("fwd", "train"):
                n["times"][kind].append(timed(n[kind], device))
    peak = cpu_matmul_peak() if device.type == "cpu" else measure.datasheet_peak_flops(device, args.precision)
    rows = {}
    for name, n in nets.items():
        row = {"params": n["params"], "image_shape": list(n["cfg"].image_shape), "batch": args.batch,
               "gflop_per_image_fwd": n["flops_fwd"] / 1e9, "gflop_per_image_train": n["flops_train"] / 1e9}
        for kind in ("fwd", "train"):
            wall = statistics.median(w for w, _ in n["times"][kind])
            cpu = statistics.median(c for _, c in n["times"][kind])
            flops = n["flops_fwd"] if kind == "fwd" else n["flops_train"]
            row[kind] = {"wall_s_per_pass": wall, "cpu_s_per_pass": cpu, "images_per_s_wall": args.batch / wall,
                         "images_per_s_cpu": args.batch / cpu if cpu > 0 else None,
                         "gflops_achieved_wall": flops * args.batch / wall / 1e9,
                         "gflops_achieved_cpu": flops * args.batch / cpu / 1e9 if cpu > 0 else None,
                         "s_per_gflop_cpu": cpu / (flops * args.batch / 1e9) if cpu > 0 else None,
                         "rounds_wall": [w for w, _ in n["times"][kind]], "rounds_cpu": [c for _, c in n["times"][kind]]}
        rows[name] = row
        print(f"{name}: {row['params']:,} params, {row['gflop_per_image_fwd']:.2f} GFLOP/img fwd, "
              f"{row['gflop_per_image_train']:.2f} GFLOP/img fwd+bwd")
        for kind in ("fwd", "train"):
            r = row[kind]
            print(f"  {kind:5s} wall {r['wall_s_per_pass']:.3f} s/pass ({r['images_per_s_wall']:.3f} img/s, "
                  f"{r['gflops_achieved_wall']:.1f} GFLOP/s) | cpu {r['cpu_s_per_pass']:.3f} s/pass "
                  f"({r['gflops_achieved_cpu']:.1f} GFLOP/s)")
    result = {"device": str(device), "precision": args.precision, "threads": torch.get_num_threads(),
              "peak_flops": peak, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(sys.argv), "networks": rows}
    if peak:
        print(f"peak (square matmul by CPU time on CPU / datasheet on GPU): {peak / 1e9:.1f} GFLOP/s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
