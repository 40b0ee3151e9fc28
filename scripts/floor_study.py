"""What does the real-versus-real floor of the digits instrument measure? Real digits the feature network
never saw, against the floor and against a model's samples. The study that led to version 2 of the
instrument: part 1 measures version 1 (the networks that trained on the 4,500 `train` digits), part 2 what
version 2 does (its network is part 2's with `--seed 0`).

The floor of `ddpm eval quality` (docs/quality.md) draws n real digits from the 5,000 bundled ones and
scores them against the rest. The feature network was trained on 4,500 of those digits, so both sides of
that comparison are images it has learnt. A generator's samples are new images. This script measures:

1. with the shipped instrument, against the 4,500 training digits as the reference:
   - the 500 held-out digits (never seen by the feature network nor by the digits model);
   - n random training digits (50 per class) against the other training digits, ``draws`` times (the floor);
   - each contiguous block of 50 digits per class against all the others (the file is in MNIST's order, so a
     block shares writers: what the held-out block, the last 50 of each class, owes to that);
   - each SAMPLES file (a kept sweep sample set, LABEL=PATH.npz, 50 images per class) against the same
     reference, and its median nearest-neighbour pixel distance to the training digits beside that of the
     held-out digits (a model that copied its training digits would sit much closer);
2. with a feature network trained here on a random half of the 5,000 digits (250 per class, the shipped
   recipe), against the other half, which it never saw: ``draws`` times, 500 of that half (50 per class)
   against the remaining 2,000 (the floor), and every sample set against the same 2,000.

    python scripts/floor_study.py --json docs/quality/floor_study.json \\
        alg2-s0=outputs/quality_samples/digits_table/618da858651293e0e6bcd8e5.npz ...

Takes about 5 minutes on one CPU thread (the half-data feature network trains in most of it).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ddpm.data.digits import load_all, split_indices
from ddpm.evaluate import digits_classifier as dc
from ddpm.evaluate import quality as q
from ddpm.evaluate.sweep import read_samples

PER_CLASS = 50


def nn_distance(a: np.ndarray, b: np.ndarray, same: bool = False) -> float:
    """Median over a of the L2 pixel distance (images in [0, 1]) to the nearest image of b."""
    a, b = a.reshape(len(a), -1) / 255.0, b.reshape(len(b), -1) / 255.0
    d = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T
    if same:
        np.fill_diagonal(d, np.inf)
    return float(np.median(np.sqrt(np.maximum(d.min(1), 0))))


def stratified(labels: np.ndarray, per_class: int, rng) -> np.ndarray:
    return q.stratified_draw(labels, [per_class] * 10, rng)


def shipped_instrument(images, labels, samples, draws: int) -> dict:
    feats, probs, ref_labels = q.reference(28, version=1)
    assert (ref_labels == labels).all()
    te, tr = split_indices(labels, "test"), split_indices(labels, "train")

    def score(f, p, lab):
        r = q.score_features(f, p, lab, ref_feats=feats[tr], ref_labels=labels[tr], seed=0)
        return {"fd": r.fd, "fd_std": r.fd_std, "precision": r.precision, "recall": r.recall}

    out = {"reference": "the 4,500 training digits", "heldout": score(feats[te], probs[te], labels[te])}
    out["heldout"]["nn_pixel_distance"] = nn_distance(images[te], images[tr])
    rng, floor = np.random.default_rng(1), []
    for _ in range(draws):
        s = tr[stratified(labels[tr], PER_CLASS, rng)]
        rest = np.setdiff1d(tr, s)
        floor.append(q.fd(feats[s], feats[rest]))
    out["floor_train_vs_train"] = {"fd": float(np.mean(floor)), "fd_std": float(np.std(floor)), "draws": draws}
    out["floor_train_vs_train"]["nn_pixel_distance"] = nn_distance(images[tr], images[tr], same=True)
    rank = np.zeros(len(labels), int)
    for k in range(10):
        rank[labels == k] = np.arange(np.count_nonzero(labels == k))
    blocks = []
    for lo in range(0, 500, PER_CLASS):
        s = np.flatnonzero((rank >= lo) & (rank < lo + PER_CLASS))
        blocks.append({"positions": [lo, lo + PER_CLASS - 1], "fd_vs_all_others": q.fd(feats[s], np.delete(feats, s, 0)),
                       "seen_by_features": lo < 450})
    out["blocks"] = blocks
    inst = q.digits_instrument(28, version=1)
    out["samples"] = {}
    for label, imgs in samples.items():
        f, p = inst.predict(imgs)
        out["samples"][label] = {**score(f, p, np.arange(len(imgs)) % 10), "nn_pixel_distance": nn_distance(imgs, images[tr])}
    return out


def unseen_features(images, labels, samples, draws: int, seed: int, epochs: int) -> dict:
    rng = np.random.default_rng(seed)
    a = stratified(labels, 250, rng)
    b = np.setdiff1d(np.arange(len(labels)), a)
    t0 = time.time()
    net, record = dc.train_classifier(kind="features", epochs=epochs, seed=seed, data=(images[a], labels[a]),
                                      heldout=(images[b], labels[b]), log=lambda *_: None)
    out = {"train_half": "250 per class, random (seed %d)" % seed, "epochs": epochs,
           "seconds_to_train": round(time.time() - t0, 1), "heldout_accuracy": record["heldout_accuracy"],
           "train_accuracy": record["train_accuracy"]}
    fb, _ = dc.predict(net, images[b], recognizer=net)
    fs = {k: dc.predict(net, v, recognizer=net)[0] for k, v in samples.items()}
    floor, scores = [], {k: [] for k in samples}
    for _ in range(draws):
        s = stratified(labels[b], PER_CLASS, rng)
        rest = np.setdiff1d(np.arange(len(b)), s)
        floor.append(q.fd(fb[s], fb[rest]))
        for k, f in fs.items():
            scores[k].append(q.fd(f, fb[rest]))
    out["floor"] = {"fd": float(np.mean(floor)), "fd_std": float(np.std(floor)), "draws": draws}
    out["samples"] = {k: {"fd": float(np.mean(v)), "fd_std": float(np.std(v)),
                          "ratio_to_floor": float(np.mean(v) / np.mean(floor))} for k, v in scores.items()}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", nargs="*", help="LABEL=PATH of a kept sweep sample file (.npz), 50 images per class")
    p.add_argument("--json", required=True)
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="which random half trains the unseen-features network")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    images, labels = load_all()
    samples = {}
    for item in a.samples:
        label, path = item.split("=", 1)
        samples[label] = read_samples(path)[0]
        if len(samples[label]) != 10 * PER_CLASS:
            p.error(f"{path} holds {len(samples[label])} images; the study compares sets of {10 * PER_CLASS}")
    result = {"shipped_instrument": shipped_instrument(images, labels, samples, a.draws),
              "unseen_features": unseen_features(images, labels, samples, a.draws, a.seed, a.epochs)}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    s, u = result["shipped_instrument"], result["unseen_features"]
    print(f"shipped features, reference = 4,500 training digits: floor (train vs train) {s['floor_train_vs_train']['fd']:.3f}"
          f" ± {s['floor_train_vs_train']['fd_std']:.3f}; held-out digits {s['heldout']['fd']:.3f} ± {s['heldout']['fd_std']:.3f}")
    print("  blocks of 50 per class vs the rest: " + ", ".join(f"{b['fd_vs_all_others']:.2f}" for b in s["blocks"]))
    print(f"  nearest training digit (median pixel L2): held-out {s['heldout']['nn_pixel_distance']:.2f}, "
          f"training digits {s['floor_train_vs_train']['nn_pixel_distance']:.2f}")
    for k, v in s["samples"].items():
        print(f"  {k}: FD {v['fd']:.3f} ± {v['fd_std']:.3f}, nearest training digit {v['nn_pixel_distance']:.2f}")
    print(f"features trained on half the digits ({u['heldout_accuracy']:.3f} accuracy on the other half, "
          f"{u['seconds_to_train']} s): floor {u['floor']['fd']:.3f} ± {u['floor']['fd_std']:.3f}")
    for k, v in u["samples"].items():
        print(f"  {k}: FD {v['fd']:.3f} ± {v['fd_std']:.3f} ({v['ratio_to_floor']:.2f}x the floor)")


if __name__ == "__main__":
    main()
