#!/usr/bin/env python
"""CPU cost of the digits backbones (docs/network.md, "The backbones on the digits"): process CPU time of
one training step of the project's Trainer (batch 32, the presets' own recipe) and of one sampling network
call on 100 images, one thread. CPU time, not wall time, so that a machine shared with other jobs still
gives the work done; the weights do not change the cost, so fresh networks are timed.

    python scripts/digits_backbones_cost.py --autoencoder runs/digits-ae --json cost.json

``--autoencoder`` is the digits-autoencoder run the latent preset encodes with (its first stage).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from ddpm.config import apply_overrides
from ddpm.models.registry import noise_shape
from ddpm.presets import get_preset
from ddpm.train.trainer import Trainer


def _cpu_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator and first-call paths
    t0 = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - t0) / repeats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--autoencoder", required=True, help="digits-autoencoder run for the latent preset")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per network (default 10)")
    p.add_argument("--calls", type=int, default=10, help="timed sampling calls per network (default 10)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for name in ("digits", "digits-dit", "digits-latent"):
        cfg = get_preset(name)
        if name == "digits-latent":
            cfg = apply_overrides(cfg, [f"model.autoencoder={args.autoencoder}"])
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, f"{tmp}/run", progress=False, tensorboard=False, handle_signals=False)
            try:
                train_s = _cpu_seconds(trainer.train_step, args.steps)
                model = trainer.model.eval()
                n = 100
                x = torch.randn(n, *noise_shape(cfg.model))
                t = torch.full((n,), 500)
                y = torch.arange(n) % 10

                def call():
                    with torch.no_grad():
                        model(x, t, y=y)

                call_s = _cpu_seconds(call, args.calls)
            finally:
                trainer.close()
        params = sum(q.numel() for q in model.parameters() if q.requires_grad)
        batch = cfg.train.batch_size
        out[name] = {"trainable_parameters": params, "batch": batch, "train_cpu_s_per_step": train_s,
                     "train_images_per_cpu_s": batch / train_s, "sample_cpu_s_per_call_100": call_s,
                     "sample_cpu_ms_per_image_call": 1000 * call_s / n}
        print(f"{name:14} {params:>10,} trainable  train {train_s:.3f} CPU s/step ({batch / train_s:.0f} images/CPU s)"
              f"  sampling {1000 * call_s / n:.2f} CPU ms per image per network call")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": 1, "torch": torch.__version__, "networks": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
