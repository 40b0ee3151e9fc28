"""The ε-prediction MSE (L_simple, Ho et al. 2020 Eq. 14) of digits checkpoints on the held-out and on the
training digits: 500 of each, at t ∈ {10, 50, 100, 200, 400, 600, 800, 950}, one fixed noise per t, the
images' true labels, EMA weights. One JSON line per checkpoint; a cheap probe of fit and over-fitting
that needs no sampling (docs/quality.md, "Width").

    python scripts/heldout_eps_mse.py ch32-8000=runs/digits-g8/checkpoints/step_0008000 ...
"""

import json
import sys

import torch

from ddpm.checkpoint import load_checkpoint
from ddpm.data.digits import load_digits

TS = (10, 50, 100, 200, 400, 600, 800, 950)


def eps_mse(ck, split: str, n: int = 500, time_input=lambda t: t) -> list[float]:
    """Per t of TS; the network is fed ``time_input(t)`` (the wrong-t probe of study_digits_model.py feeds t // 2)."""
    images, labels = load_digits(split)
    x0 = torch.from_numpy(images[:n]).float().div(127.5).sub(1).unsqueeze(1)
    y = torch.from_numpy(labels[:n])
    g = torch.Generator().manual_seed(0)
    out = []
    with torch.no_grad():
        for t in TS:
            eps = torch.randn(x0.shape, generator=g)
            tt = torch.full((len(x0),), t)
            pred = ck.model(ck.diffusion.q_sample(x0, tt, noise=eps), time_input(tt), y=y)[:, :1]
            out.append(((pred - eps) ** 2).mean().item())
    return out


def main():
    torch.set_num_threads(1)
    for item in sys.argv[1:]:
        label, path = item.split("=", 1)
        ck = load_checkpoint(path, use_ema=True)
        test, train = eps_mse(ck, "test"), eps_mse(ck, "train")
        print(json.dumps({"label": label, "step": ck.step, "test": sum(test) / len(TS), "train": sum(train) / len(TS),
                          "test_per_t": [round(v, 5) for v in test]}), flush=True)


if __name__ == "__main__":
    main()
