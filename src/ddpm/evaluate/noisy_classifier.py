"""How well a noise-aware classifier p_φ(y | x_t, t) classifies held-out images at each noise level.

Each held-out image is noised to x_t = q_sample(x_0, t, ε) with t uniform in a range of code timesteps
and ε from a seeded generator (image i's draws depend only on (seed, i)), ``draws`` times; the
accuracy is the top-1 agreement with the true label, ± its binomial standard deviation. A range
(0, 0) is the first diffusion step, i.e. (nearly) clean images. Guidance is only as good as this
curve: at large t the classes are no longer identifiable and the gradient carries little.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpm.errors import ConfigError

DEFAULT_RANGES = ((0, 0), (0, 99), (100, 299), (300, 599), (600, 999))


def parse_ranges(text: str, num_timesteps: int) -> list[tuple[int, int]]:
    """``0-99,100-299`` → [(0, 99), (100, 299)], checked against the schedule's T."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            lo, hi = int(lo), int(hi if sep else lo)
        except ValueError:
            raise ConfigError(f"t-range {part!r} must look like 100-299 (code timesteps)") from None
        if not 0 <= lo <= hi < num_timesteps:
            raise ConfigError(f"t-range {part!r} must lie within 0..{num_timesteps - 1} with start ≤ end")
        out.append((lo, hi))
    if not out:
        raise ConfigError("give at least one t-range, e.g. 0-99,100-299")
    return out


@torch.no_grad()
def accuracy_by_noise(classifier, diffusion, images: torch.Tensor, labels: torch.Tensor, ranges=DEFAULT_RANGES, *,
                      draws: int = 1, seed: int = 0, batch_size: int = 250, device="cpu",
                      progress: bool = False) -> list[dict]:
    """One row per t-range: ``{"t_range", "n", "accuracy", "accuracy_std", "loss"}`` (loss: mean
    cross-entropy). ``images`` are floats in [−1, 1] (N, C, H, W), ``labels`` (N,)."""
    if isinstance(classifier, torch.nn.Module):
        classifier.to(device).eval()
    n = len(images)
    rows = []
    if progress:
        from tqdm.auto import tqdm

        ranges = tqdm(list(ranges), desc="t-ranges", leave=False)
    for lo, hi in ranges:
        correct, nll = 0, 0.0
        for d in range(draws):
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, lo, hi, d]).generate_state(1)[0]))
            t_all = torch.randint(lo, hi + 1, (n,), generator=g)
            eps_all = torch.randn(images.shape, generator=g)
            for s in range(0, n, batch_size):
                x0 = images[s:s + batch_size].to(device)
                t = t_all[s:s + batch_size].to(device)
                x_t = diffusion.q_sample(x0, t, noise=eps_all[s:s + batch_size].to(device))
                logits = classifier(x_t, t).float()
                y = labels[s:s + batch_size].to(device)
                correct += int((logits.argmax(1) == y).sum())
                nll += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        total = n * draws
        acc = correct / total
        rows.append({"t_range": [lo, hi], "n": total, "accuracy": acc,
                     "accuracy_std": float(np.sqrt(acc * (1 - acc) / total)), "loss": nll / total})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'t range':>10}  {'n':>6}  accuracy"]
    for r in rows:
        lo, hi = r["t_range"]
        lines.append(f"{f'{lo}-{hi}':>10}  {r['n']:>6}  {100 * r['accuracy']:5.1f} ± {100 * r['accuracy_std']:.1f}%"
                     f"  (cross-entropy {r['loss']:.3f})")
    return "\n".join(lines)


__all__ = ["accuracy_by_noise", "parse_ranges", "format_rows", "DEFAULT_RANGES"]
