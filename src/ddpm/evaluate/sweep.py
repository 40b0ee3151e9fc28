"""Quality against cost: sample with one sampler setting, time it, score it (:mod:`.quality`), and
sweep many settings into one resumable table and plot.

A row is keyed by its sampler settings (name, steps, spacing, options, guidance, classes), the classifier
guidance (classifier, scale, null label for the model; None without), n and seed;
a sweep appends each finished row to its JSON file (written whole and renamed, so an interrupted sweep
leaves the previous file intact) and skips rows already there when run again.

With a samples folder, every row's images are kept as 8-bit .npz (named by a hash of the row's key and the
weights) with their sampling time; a row whose images are there is scored from them without sampling again,
so a change of the instrument (or of its ± and floor) re-scores a whole table in seconds: delete the JSON
and run the sweep again. Scores are always taken on the 8-bit images, as a saved sample would be.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from ddpm.errors import ConfigError


def class_labels(mode, num_classes: int | None, n: int):
    """``mode``: "all" (image i gets class i % K), "null" (the null label), or one class index."""
    if mode == "null" or num_classes is None:
        if mode not in ("null", "all", None) and num_classes is None:
            raise ConfigError("--class needs a class-conditional model; this checkpoint is unconditional")
        return None
    if mode in ("all", None):
        return [i % num_classes for i in range(n)]
    if not 0 <= int(mode) < num_classes:
        raise ConfigError(f"--class must be in 0..{num_classes - 1}, 'all' or 'null', got {mode}")
    return int(mode)


DIGITS_FEATURES = {"digits": None, "digits-v1": 1}  # --features name -> digits instrument version (None: current)


def instrument_for(config, features: str = "digits", *, inception=None, ref_images=None, ref_desc: str = ""):
    """The quality instrument for a model's images: the digits features at its resolution (``digits``, or
    ``digits-v1`` for the first version's networks, which tables measured before 2026-12-07 used), or
    Inception features against ``ref_images``; ConfigError for images it cannot score."""
    from ddpm.evaluate import quality

    c, h, _ = config.model.image_shape
    if features in DIGITS_FEATURES:
        version = DIGITS_FEATURES[features]
        inst = (quality.DigitsInstrument(h, version) if quality.MIN_DIGITS_RES <= h <= 28
                else quality.digits_instrument(28, version))
    elif features == "inception":
        inst = quality.InceptionInstrument(inception, ref_images, ref_desc)
    else:
        raise ConfigError(f"unknown --features {features!r}; choose {', '.join(DIGITS_FEATURES)} or inception")
    inst.check(config.model.image_shape)
    return inst


def measure(ck, sampler, *, n: int, classes="all", seed: int = 0, batch_size: int = 100, device=None,
            progress: bool = False, fast=None, with_floor: bool = True, instrument=None, classifier=None,
            classifier_scale: float = 0.0, condition_model: bool = True, classifier_path=None,
            fingerprint: str | None = None, samples_dir=None) -> dict:
    """Generate n images from checkpoint ``ck`` with ``sampler`` (a SamplerConfig), score them with
    ``instrument`` (default: the digits features) and return one row: the settings, n, nfe, seconds,
    seconds_per_image and the scores (and the real-vs-real floor).

    ``classifier`` (a noisy classifier network, its checkpoint ``classifier_path`` recorded in the row)
    guides towards the requested classes with ``classifier_scale``; ``condition_model=False`` gives a
    class-conditional model its null label so that only the classifier sees the class. ``fingerprint``:
    :func:`weights_fingerprint` of ``ck.model`` when the caller has it already. ``samples_dir``: keep the
    images there, or score the ones kept there before (see the module docstring)."""
    from ddpm.evaluate.quality import floor_of, score_images
    from ddpm.images import from_uint8
    from ddpm.sampling.registry import resolve_sampler

    if instrument is None:
        instrument = instrument_for(ck.config)
    num_classes = ck.config.model.num_classes
    labels = class_labels(classes, num_classes if classifier is None else classifier.config.num_classes, n)
    if classifier is not None and labels is None:
        raise ConfigError("classifier guidance needs classes to guide towards: --class all or a class index")
    resolved = resolve_sampler(sampler, ck.diffusion.num_timesteps, num_classes=num_classes,
                               labels=labels is not None)
    fingerprint = fingerprint or weights_fingerprint(ck.model)
    guide = None if classifier is None else (str(classifier_path), classifier_scale, not condition_model)
    key = row_key(sampler, n=n, classes=classes if labels is not None else "null", seed=seed, classifier=guide)
    kept = None if samples_dir is None else samples_file(samples_dir, key, fingerprint)
    if kept is not None and kept.exists():
        images, timing = read_samples(kept)
    else:
        images, timing = _draw(ck, sampler, n=n, labels=labels, seed=seed, batch_size=batch_size, device=device,
                               progress=progress, fast=fast, classifier=classifier,
                               classifier_scale=classifier_scale, condition_model=condition_model)
        if kept is not None:
            write_samples(kept, images, timing, key)
    seconds, measured = timing["seconds"], timing["nfe_measured"]
    batch_factor = 2 if resolved.guidance else 1
    if measured is not None:
        measured /= batch_factor
    declared = resolved.nfe(ck.diffusion.num_timesteps)
    requested = None
    if labels is not None:
        requested = np.asarray(labels if isinstance(labels, list) else [labels] * n)
    report = score_images(from_uint8(images), requested, seed=seed, instrument=instrument)
    row = {**key, "features": instrument.describe(),
           "describe": resolved.describe(), "nfe": declared if declared is not None or measured is None else round(measured, 1),
           "nfe_measured": measured, "batch_factor": batch_factor, "seconds": round(seconds, 3),
           "seconds_per_image": seconds / n, "threads": timing["threads"], "device": timing["device"],
           "checkpoint": str(ck.path) if ck.path else None, "step": ck.step, "weights": ck.weights,
           "weights_sha256": fingerprint, **report.as_dict()}
    if with_floor and n <= len(instrument.reference()[0]) // 2:
        row["floor"] = floor_of(instrument, n, class_counts=class_counts(requested))
    return row


def _draw(ck, sampler, *, n, labels, seed, batch_size, device, progress, fast, classifier, classifier_scale,
          condition_model) -> tuple[np.ndarray, dict]:
    """(uint8 NHWC images, timing): n images timed, with the images the network saw (the measured NFE ×
    the batch factor; None where the model is not a module)."""
    import torch

    from ddpm.images import to_uint8
    from ddpm.sampling.api import generate

    rows_in = [0]

    def count(module, args):
        rows_in[0] += int(args[0].shape[0])

    hook = ck.model.register_forward_pre_hook(count) if isinstance(ck.model, torch.nn.Module) else None
    t0 = time.perf_counter()
    try:
        x = generate(ck.model, ck.diffusion, n, batch_size=batch_size, sampler=sampler, class_labels=labels,
                     seed=seed, device=device, progress=progress, fast=fast, classifier=classifier,
                     classifier_scale=classifier_scale, condition_model=condition_model)
    finally:
        if hook is not None:
            hook.remove()
    seconds = time.perf_counter() - t0
    timing = {"seconds": seconds, "nfe_measured": rows_in[0] / n if hook is not None else None,
              "threads": torch.get_num_threads(), "device": str(x.device if device is None else device)}
    return to_uint8(x), timing


def floor_for(instrument, n: int, classes, num_classes: int | None) -> dict:
    """:func:`~ddpm.evaluate.quality.floor_of` for n samples of ``classes`` (as :func:`class_labels`):
    real subsets with the samples' class counts when the instrument scores those classes."""
    from ddpm.evaluate.quality import floor_of

    labels = class_labels(classes, num_classes, n) if instrument.scores_accuracy else None
    if isinstance(labels, int):
        labels = [labels] * n
    return floor_of(instrument, n, class_counts=class_counts(labels))


def class_counts(requested) -> list[int] | None:
    """Images per class of the requested labels (None for unconditional samples): what the floor's real
    subsets are drawn to match."""
    if requested is None:
        return None
    return np.bincount(np.asarray(requested), minlength=int(np.max(requested)) + 1).tolist()


def samples_file(samples_dir, key: dict, fingerprint: str) -> Path:
    import hashlib

    text = json.dumps({**key, "weights_sha256": fingerprint}, sort_keys=True, default=str)
    return Path(samples_dir) / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.npz"


def write_samples(path: Path, images: np.ndarray, timing: dict, key: dict) -> None:
    from ddpm.images import save_arrays

    path.parent.mkdir(parents=True, exist_ok=True)
    nfe = timing["nfe_measured"]
    save_arrays(path, {"images": images, "seconds": timing["seconds"], "threads": timing["threads"],
                       "nfe_measured": np.nan if nfe is None else nfe, "device": timing["device"]},
                metadata={"row": key})


def read_samples(path: Path) -> tuple[np.ndarray, dict]:
    from ddpm.images import read_npz

    a = read_npz(path, error=ConfigError)
    nfe = float(a["nfe_measured"])
    return a["images"], {"seconds": float(a["seconds"]), "threads": int(a["threads"]),
                         "nfe_measured": None if np.isnan(nfe) else nfe, "device": str(a["device"])}


_ROW_KEY = ("sampler", "steps", "spacing", "options", "guidance", "clip", "classes", "n", "seed", "classifier",
            "classifier_scale", "model_null_label")


def row_key(sampler, *, n: int, classes, seed: int, classifier: tuple | None = None) -> dict:
    """``classifier``: (checkpoint, scale, model given the null label) of classifier guidance, or None."""
    path, scale, null = classifier if classifier is not None else (None, None, None)
    return dict(zip(_ROW_KEY, (sampler.sampler, sampler.steps, sampler.spacing, dict(sampler.options),
                               sampler.guidance, sampler.clip_denoised, classes, n, seed, path, scale, null)))


def weights_fingerprint(model) -> str:
    """sha256 of a network's tensors (names, dtypes, shapes, values): the same weights give the same
    fingerprint whatever file, format or folder they were loaded from."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_same_model(rows: list[dict], ck, fingerprint: str, json_path) -> None:
    """A resumed sweep file must hold measurements of this very model: its rows are kept, not re-measured."""
    for r in rows:
        other = r.get("weights_sha256")
        same = other == fingerprint if other else (r.get("checkpoint"), r.get("step")) == (
            str(ck.path) if ck.path else None, ck.step)
        if not same:
            raise ConfigError(f"{json_path} holds measurements of another model ({r.get('checkpoint')}, step "
                              f"{r.get('step')}); give another --json, or delete it to measure this model afresh")


def _same(row: dict, key: dict) -> bool:
    return all(row.get(k) == v for k, v in key.items())


def parse_samplers(text: str) -> list[tuple[str, dict]]:
    """``ddpm,ddim:eta=0,ddim:eta=1`` → [(name, options)]; option values are numbers when they parse."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, *opts = item.split(":")
        options = {}
        for o in opts:
            k, sep, v = o.partition("=")
            if not sep or not k:
                raise ConfigError(f"sampler option {o!r} in {item!r} should look like NAME=VALUE (e.g. ddim:eta=1)")
            try:
                options[k] = float(v) if any(c in v for c in ".e") or not v.lstrip("-").isdigit() else int(v)
            except ValueError:
                options[k] = v
        out.append((name, options))
    if not out:
        raise ConfigError("--samplers is empty; give e.g. ddpm,ddim:eta=0")
    return out


def load_rows(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        return list(data["rows"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a sweep file written by `ddpm eval sweep`; give another --json") from None


def write_rows(path: str | os.PathLike, rows: list[dict], meta: dict) -> None:
    from ddpm.outputs import write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({**meta, "rows": rows}, indent=1) + "\n")


def run_sweep(ck, configs: list, *, n: int, json_path, classes="all", seed: int = 0, batch_size: int = 100,
              device=None, progress: bool = False, fast=None, log=print, instrument=None, classifier=None,
              classifier_scales=(1.0,), condition_model: bool = True, classifier_path=None,
              samples_dir=None) -> list[dict]:
    """Measure every SamplerConfig in ``configs`` (× every classifier scale, with a ``classifier``)
    that ``json_path`` does not already hold (``samples_dir``: see the module docstring)."""
    if instrument is None:
        instrument = instrument_for(ck.config)
    rows = load_rows(json_path)
    fingerprint = weights_fingerprint(ck.model)  # once per sweep: hashing a large model takes seconds
    check_same_model(rows, ck, fingerprint, json_path)
    cls = classes if (ck.config.model.num_classes or classifier is not None) else "null"
    fits = n <= len(instrument.reference()[0]) // 2
    meta = {"checkpoint": str(ck.path) if ck.path else None, "step": ck.step, "features": instrument.describe(),
            "floor": {"n": n, **floor_for(instrument, n, cls, classifier.config.num_classes if classifier is not None
                                          else ck.config.model.num_classes)} if fits else None}
    settings = [(cfg, s) for cfg in configs for s in (classifier_scales if classifier is not None else [0.0])]
    for i, (cfg, scale) in enumerate(settings):
        guide = None if classifier is None else (str(classifier_path), scale, not condition_model)
        key = {**row_key(cfg, n=n, classes=cls, seed=seed, classifier=guide), "features": instrument.describe()}
        what = f"{cfg.sampler} steps={cfg.steps} {cfg.options} w={cfg.guidance}" + (f" s={scale:g}" if guide else "")
        if any(_same(r, key) for r in rows):
            log(f"[{i + 1}/{len(settings)}] {what}: done before, kept")
            continue
        row = measure(ck, cfg, n=n, classes=classes, seed=seed, batch_size=batch_size, device=device,
                      progress=progress, fast=fast, with_floor=False, instrument=instrument, classifier=classifier,
                      classifier_scale=scale, condition_model=condition_model, classifier_path=classifier_path,
                      fingerprint=fingerprint, samples_dir=samples_dir)
        rows.append(row)
        write_rows(json_path, rows, meta)
        log(f"[{i + 1}/{len(settings)}] {format_row(row)}")
    write_rows(json_path, rows, meta)
    return rows


def format_row(r: dict) -> str:
    acc = "" if r.get("accuracy") is None else f"  acc {100 * r['accuracy']:5.1f} ± {100 * r['accuracy_std']:.1f}%"
    scale = r.get("classifier_scale")
    what = r["describe"] + (f", classifier s={scale:g}" if scale is not None else "")
    return (f"{what:<44} NFE {r['nfe']:>5}  FD {r['fd']:8.2f} ± {r['fd_std']:6.2f}  "
            f"KID {r['kid']:.4f} ± {r['kid_std']:.4f}  P {r['precision']:.3f} R {r['recall']:.3f}"
            f"{acc}  {r['seconds_per_image']:.3f} s/img")


def format_floor(floor: dict, n: int) -> str:
    fd, kid, p, r = (floor[k] for k in ("fd", "kid", "precision", "recall"))
    acc = f"  acc {100 * floor['accuracy'][0]:5.1f}%" if "accuracy" in floor else ""
    return (f"{'real vs real (floor), n = ' + str(n):<44} {'':>9}  FD {fd[0]:8.2f} ± {fd[1]:6.2f}  "
            f"KID {kid[0]:.4f} ± {kid[1]:.4f}  P {p[0]:.3f} R {r[0]:.3f}{acc}")


SCORES = ("fd", "kid", "precision", "recall", "accuracy")
MIN_SETS_FOR_STD = 3  # fewer independent sets than this cannot estimate a std; the within-set ± is kept


def aggregate_seeds(rows: list[dict]) -> list[dict]:
    """Rows of one setting measured with several seeds (independent sets of n images) merged into one, in
    the file's order: each score the mean over the sets, its ± the std over the sets (ddof 1) when there
    are at least MIN_SETS_FOR_STD of them, else the mean within-set ± (the delete-half jackknife of
    :mod:`ddpm.evaluate.quality`); ``sets`` and ``seeds`` say which. Seconds are averaged."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        key = {k: v for k, v in r.items() if k in _KEY_FIELDS and k != "seed"}
        groups.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(r)
    out = []
    for rs in groups.values():
        merged = dict(rs[0])
        merged.update(sets=len(rs), seeds=[r["seed"] for r in rs],
                      seconds_per_image=float(np.mean([r["seconds_per_image"] for r in rs])))
        for k in SCORES:
            if rs[0].get(k) is None:
                continue
            vals = np.array([r[k] for r in rs], float)
            merged[k] = float(vals.mean())
            merged[f"{k}_std"] = (float(vals.std(ddof=1)) if len(rs) >= MIN_SETS_FOR_STD
                                  else float(np.mean([r.get(f"{k}_std") or 0.0 for r in rs])))
            merged[f"{k}_std_kind"] = "sets" if len(rs) >= MIN_SETS_FOR_STD else "halves"
        out.append(merged)
    return out


_KEY_FIELDS = _ROW_KEY + ("features", "weights_sha256")


def _pm(r: dict, k: str, fmt: str) -> str:
    std = r.get(f"{k}_std")
    return format(r[k], fmt) + ("" if std is None else " ± " + format(std, fmt))


def markdown_table(rows: list[dict], floor: dict | None = None) -> str:
    """The sweep as a Markdown table (one row per setting, seeds merged by :func:`aggregate_seeds`, in the
    file's order), the floor last."""
    rows = aggregate_seeds(rows)
    cond = any(r.get("accuracy") is not None for r in rows)
    head = ["setting", "NFE", "sets", "FD ±", "KID ±", "precision ±", "recall ±"] + (
        ["class accuracy ±"] if cond else []) + ["s / image"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["describe"], str(r["nfe"] * r.get("batch_factor", 1)) if r.get("batch_factor", 1) == 1
                 else f"{r['nfe']} (×2 batch)", str(r["sets"]) + ("" if r["sets"] >= MIN_SETS_FOR_STD else "*"),
                 _pm(r, "fd", ".2f"), _pm(r, "kid", ".4f"), _pm(r, "precision", ".3f"), _pm(r, "recall", ".3f")]
        if cond:
            cells.append("–" if r.get("accuracy") is None else
                         f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f} %")
        cells.append(f"{r['seconds_per_image']:.3f}")
        out.append("| " + " | ".join(cells) + " |")
    if floor:
        strat = ", class counts as the samples'" if floor.get("stratified") else ""
        cells = [f"real vs real (floor), n = {floor.get('n', rows[0]['n'] if rows else '?')}{strat}", "–", f"{floor.get('draws', '?')} draws",
                 f"{floor['fd'][0]:.2f} ± {floor['fd'][1]:.2f}", f"{floor['kid'][0]:.4f} ± {floor['kid'][1]:.4f}",
                 f"{floor['precision'][0]:.3f} ± {floor['precision'][1]:.3f}",
                 f"{floor['recall'][0]:.3f} ± {floor['recall'][1]:.3f}"]
        if cond:
            cells.append(f"{100 * floor['accuracy'][0]:.1f} %" if "accuracy" in floor else "–")
        cells.append("–")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(f"sets: independent sets of n images (seeds); ± is the std over the sets where there are at least "
               f"{MIN_SETS_FOR_STD}, else (*) the within-set delete-half jackknife, about 3× the set-to-set std "
               f"on the digits model; the floor's ± is the std over its draws.")
    return "\n".join(out) + "\n"


def _label(r: dict) -> str:
    opts = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(r["options"].items()))
    w = f" w={r['guidance']:g}" if r["guidance"] else ""
    return f"{r['sampler']}" + (f" {opts}" if opts else "") + w + (" classifier" if r.get("classifier") else "")


def plot_series(rows: list[dict]) -> dict[str, tuple[list[dict], list[dict]]]:
    """What :func:`plot_sweep` draws, per sampler setting (label): (line, means).

    The line joins one set per point — the lowest seed measured at every point of the curve — with its
    within-set ±, so a curve never mixes one-set values with several sets' means (whose images differ).
    ``means`` are the points measured on more than one set, as :func:`aggregate_seeds` merges them,
    drawn apart. A curve with no seed common to all its points falls back to the merged points."""
    raw: dict[str, list[dict]] = {}
    for r in rows:
        raw.setdefault(_label(r), []).append(r)
    out = {}
    for label, rs in raw.items():
        merged = aggregate_seeds(rs)
        common = set.intersection(*(set(m["seeds"]) for m in merged))
        if not common:
            out[label] = (merged, [])
            continue
        seed = min(common)
        line = [r for r in rs if r["seed"] == seed]
        out[label] = (line, [m for m in merged if m["sets"] > 1])
    return out


def plot_sweep(rows: list[dict], path, *, floor: dict | None = None, title: str = "") -> Path:
    """FD against NFE and against seconds per image (log x), one line per sampler setting (one set of
    images per point, :func:`plot_series`; the mean over several sets as an open marker), with the
    real-vs-real floor as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = plot_series(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, xkey, xlabel in ((axes[0], "nfe", "network evaluations per image (NFE)"),
                             (axes[1], "seconds_per_image", "seconds per image")):
        for label, (line, means) in series.items():
            line = sorted(line, key=lambda r: r[xkey])
            seeds = {r.get("seed") for r in line}
            tag = f" (seed {line[0]['seed']})" if means and len(seeds) == 1 else ""
            drawn = ax.errorbar([r[xkey] for r in line], [r["fd"] for r in line], yerr=[r["fd_std"] for r in line],
                                marker="o", ms=4, capsize=2, label=label + tag)
            if means:
                ax.errorbar([m[xkey] for m in means], [m["fd"] for m in means], yerr=[m["fd_std"] for m in means],
                            fmt="o", ms=7, mfc="none", capsize=3, color=drawn.lines[0].get_color(),
                            label=f"{label}: mean of {'/'.join(sorted({str(m['sets']) for m in means}))} sets")
        if floor:
            m, s = floor["fd"]
            ax.axhspan(max(m - s, 1e-3), m + s, color="grey", alpha=0.3, label="real vs real (floor)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    features = rows[0].get("features", "digits") if rows else "digits"
    axes[0].set_ylabel(f"FD ({features} features)")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from ddpm.outputs import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path) as f:
            fig.savefig(f, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path


def sampler_configs(base, samplers: list[tuple[str, dict]], steps: list[int | None], guidances: list[float],
                    spacing: str | None = None, clip_denoised: bool | None = None) -> list:
    """The cross product of samplers × steps × guidance as SamplerConfigs on top of ``base``
    (``clip_denoised`` None: each config's own)."""
    from ddpm.sampling.api import sampler_config

    out = []
    for name, options in samplers:
        for k in steps:
            for w in guidances:
                start = base if base is not None and name == base.sampler else name
                cfg = sampler_config(start, steps=k, spacing=spacing, guidance=w, options=options,
                                     clip_denoised=clip_denoised)
                out.append(dataclasses.replace(cfg, options=dict(cfg.options)))
    return out
