"""Why did deterministic samplers fail on the first shipped digits model? Measure, checkpoint by checkpoint.

For each checkpoint given as LABEL=PATH[:raw] this measures, with the project's quality instrument
(digits features, n images, seed 0):

- DDIM η = 0 at 50 steps and respaced ancestral sampling at 50 steps (FD ± and requested-class accuracy);
- how much the network reads its timestep input: on the 500 held-out digits, the ε-prediction MSE with the
  true t and with t replaced by t/2, averaged over t ∈ {10, 50, 100, 200, 400, 600, 800, 950}. A network
  whose time bias is normalised away (GroupNorm with one channel per group) barely notices the wrong t.

    python scripts/study_digits_model.py --json docs/quality/digits_study.json -n 200 \\
        shipped-g32=src/ddpm/assets/digits g8-3200=runs/digits-g8/checkpoints/step_0003200 ...

Rows already in the JSON are kept (the study is resumable).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from ddpm.checkpoint import load_checkpoint
from ddpm.evaluate.quality import score_images
from ddpm.sampling.api import generate, sampler_config
from heldout_eps_mse import TS, eps_mse  # scripts/ is on the path when run as a script


def time_sensitivity(ck) -> dict:
    true, half = eps_mse(ck, "test"), eps_mse(ck, "test", time_input=lambda t: t // 2)
    return {"eps_mse_true_t": sum(true) / len(TS), "eps_mse_half_t": sum(half) / len(TS),
            "wrong_t_ratio": sum(half) / sum(true), "per_t": dict(zip(map(str, TS), zip(true, half)))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="LABEL=PATH, or LABEL=PATH:raw for the raw (non-EMA) weights")
    p.add_argument("--json", required=True)
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--samples", default="runs/study_samples", help="where the generated samples are kept")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=a.threads)
    path = Path(a.json)
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    for item in a.checkpoints:
        label, ck_path = item.split("=", 1)
        raw = ck_path.endswith(":raw")
        ck_path = ck_path.removesuffix(":raw")
        if any(r["label"] == label and r["n"] == a.n for r in rows):
            print(f"{label}: done before, kept")
            continue
        ck = load_checkpoint(ck_path, use_ema=not raw)
        t0 = time.time()
        row = {"label": label, "checkpoint": ck_path, "weights": ck.weights, "step": ck.step, "n": a.n,
               "norm_groups": getattr(ck.config.model, "norm_groups", 32), **time_sensitivity(ck)}
        labels = [i % 10 for i in range(a.n)]
        for name, sampler in (("ddim50", sampler_config("ddim", steps=50, eta=0.0)),
                              ("ddpm50", sampler_config("ddpm", steps=50))):
            cache = Path(a.samples) / f"{label}-{name}-n{a.n}.pt"  # samples kept, so a new instrument rescores
            if cache.is_file():
                x = torch.load(cache, weights_only=True)
            else:
                x = generate(ck.model, ck.diffusion, a.n, batch_size=100, sampler=sampler, class_labels=labels, seed=0)
                cache.parent.mkdir(parents=True, exist_ok=True)
                torch.save(x, cache)
            m = score_images(x, labels).as_dict()
            row[name] = {k: m[k] for k in ("fd", "fd_std", "kid", "accuracy", "accuracy_std", "precision", "recall")}
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"n": a.n, "rows": rows}, indent=1) + "\n")
        print(f"{label:>16} step {row['step']:>5} groups {row['norm_groups']:>2}  wrong-t ratio "
              f"{row['wrong_t_ratio']:.2f}  DDIM-50 FD {row['ddim50']['fd']:7.2f} ± {row['ddim50']['fd_std']:5.2f} "
              f"acc {row['ddim50']['accuracy']:.3f}  ancestral-50 FD {row['ddpm50']['fd']:7.2f} ± "
              f"{row['ddpm50']['fd_std']:5.2f} acc {row['ddpm50']['accuracy']:.3f}", flush=True)


if __name__ == "__main__":
    main()
