#!/usr/bin/env python
"""Reconstruction quality of a digits autoencoder (docs/network.md): encode and decode the first 500
held-out digits, then L1 and MSE per pixel and the digits-features FD and class accuracy of the
reconstructions (docs/quality.md) — the ceiling of any latent model built on this autoencoder.

    python scripts/autoencoder_reconstruction.py runs/digits-ae
"""

import sys
import time

import torch

from ddpm.checkpoint import load_checkpoint
from ddpm.config import DataConfig
from ddpm.data import load_dataset
from ddpm.evaluate.quality import score_images

torch.set_num_threads(1)
ck = load_checkpoint(sys.argv[1])
ds = load_dataset(DataConfig(source="digits", resolution=28, channels=1, class_labels=True, split="test"))
x = ds.images[:500].float() / 127.5 - 1
y = ds.labels[:500].numpy()
t0 = time.process_time()
with torch.no_grad():
    rec = torch.cat([ck.model(x[i:i + 100]) for i in range(0, 500, 100)]).clamp(-1, 1)
r = score_images(rec, y)
print(f"{sys.argv[1]} step {ck.step}: L1/pixel {(rec - x).abs().mean():.4f}, MSE {(rec - x).pow(2).mean():.5f}; "
      f"reconstruction FD {r.fd:.2f} ± {r.fd_std:.2f}, accuracy {r.accuracy:.3f}; {time.process_time() - t0:.1f} CPU s")
