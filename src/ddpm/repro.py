"""``ddpm repro``: each table and figure of the paper as a recipe over train / evaluate / figures, with a
Markdown report that puts the paper's numbers (Ho et al. 2020, Tables 1–2 and §4) beside ours.

Scales:
- ``paper``: the paper's setting (CIFAR-10 preset for Tables 1, 2, 4 and Fig. 5, 6; CelebA-HQ 256 for
  Fig. 7–9), full test/train sets for NLL, 50,000 samples for FID/IS. Needs GPUs and the datasets.
- ``tiny``: the bundled digits at 16×16, a 0.7M-parameter U-Net and T = 100 (linear β scaled by
  1000/T), a few minutes per model on a laptop CPU. Same pipeline, numbers not comparable to the paper.
- ``smoke``: seconds; for tests of the pipeline only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ddpm.config import Config
from ddpm.presets import get_preset
from ddpm.errors import ConfigError, UserError

# ------------------------------------------------------------------------- the paper's numbers (§7)
PAPER_TABLE1 = {  # CIFAR-10: IS, FID (vs train), NLL test (train) in bits/dim
    "eps-kl": {"label": "Ours (L, fixed isotropic Σ)", "is": "7.67 ± 0.13", "fid": 13.51, "nll_test": 3.70,
               "nll_train": 3.69},
    "eps-mse": {"label": "Ours (L_simple)", "is": "9.46 ± 0.11", "fid": 3.17, "nll_test": 3.75,
                "nll_train": 3.72},
}
PAPER_TABLE2 = {  # CIFAR-10 ablation: IS, FID ("–": unstable)
    "xprev-learned": {"label": "μ̃ prediction, L, learned diagonal Σ", "is": "7.28 ± 0.10", "fid": "23.69"},
    "xprev-kl": {"label": "μ̃ prediction, L, fixed isotropic Σ", "is": "8.06 ± 0.09", "fid": "13.22"},
    "xprev-mse": {"label": "μ̃ prediction, ‖μ̃ − μ̃θ‖²", "is": "–", "fid": "–"},
    "eps-learned": {"label": "ε prediction, L, learned diagonal Σ", "is": "–", "fid": "–"},
    "eps-kl": {"label": "ε prediction, L, fixed isotropic Σ", "is": "7.67 ± 0.13", "fid": "13.51"},
    "eps-mse": {"label": "ε prediction, ‖ε̃ − εθ‖² (L_simple)", "is": "9.46 ± 0.11", "fid": "3.17"},
}
PAPER_TABLE4 = {  # reverse process time T − t + 1 -> (rate bits/dim, distortion RMSE 0–255), CIFAR-10 test
    1000: (1.77581, 0.95136), 900: (0.11994, 12.02277), 800: (0.05415, 18.47482), 700: (0.02866, 24.43656),
    600: (0.01507, 30.80948), 500: (0.00716, 38.03236), 400: (0.00282, 46.12765), 300: (0.00081, 54.18826),
    200: (0.00013, 60.97170), 100: (0.00000, 67.60125),
}
PAPER_RATE_DISTORTION = {"rate": 1.78, "distortion": 1.97, "rmse": 0.95}  # L_simple, §4.3

# The objectives of Table 2: (mean_type, var_type, loss_type). "Fixed isotropic Σ" is the CIFAR-10
# script's fixedlarge (σ² = β); "learned diagonal Σ" trains the variance with the bound.
VARIANTS = {
    "eps-mse": ("eps", "fixedlarge", "mse"),
    "eps-kl": ("eps", "fixedlarge", "kl"),
    "eps-learned": ("eps", "learned", "kl"),
    "xprev-mse": ("xprev", "fixedlarge", "mse"),
    "xprev-kl": ("xprev", "fixedlarge", "kl"),
    "xprev-learned": ("xprev", "learned", "kl"),
}
TARGETS = ("table1", "table2", "table4", "fig5", "fig6", "fig7", "fig8", "fig9")
SCALES = ("tiny", "paper", "smoke")


# ----------------------------------------------------------------------------------------- scales
def _paper_config(target: str) -> Config:
    return get_preset("celebahq256" if target in ("fig7", "fig8", "fig9") else "cifar10")


@dataclass
class Scale:
    name: str
    config: Callable[[str], Config]
    nll_num: int | None  # images per NLL split (None: all)
    fid_num: int  # samples for FID/IS
    ref_num: int | None  # training images for the FID reference statistics (None: all)
    eval_batch: int
    chains: int = 4  # figure sizes
    interp_t: int | None = None  # Fig. 8's t (None: T/2)


SCALE_SETTINGS = {
    "paper": Scale("paper", _paper_config, nll_num=None, fid_num=50_000, ref_num=None, eval_batch=256, interp_t=500),
    "tiny": Scale("tiny", lambda target: get_preset("repro-tiny"), nll_num=64, fid_num=500, ref_num=500, eval_batch=64),
    "smoke": Scale("smoke", lambda target: get_preset("repro-smoke"), nll_num=6, fid_num=10, ref_num=10, eval_batch=4, chains=2),
}


def variant_config(base: Config, variant: str) -> Config:
    """``base`` with the objective of a Table 2 row (a learned Σ doubles the output channels)."""
    mean, var, loss = VARIANTS[variant]
    return replace(base, diffusion=replace(base.diffusion, mean_type=mean, var_type=var, loss_type=loss))


# ----------------------------------------------------------------------------------------- runner
@dataclass
class Repro:
    """State of one ``ddpm repro`` run: where things go, what was measured, how long it took."""

    target: str
    scale: Scale
    out: Path
    data: str | None = None
    ckpt: str | None = None
    inception: str | None = None
    device: str | None = None
    steps: int | None = None
    progress: bool = True
    timings: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    _net: object = None

    def log(self, msg: str) -> None:
        print(f"[repro {self.target}] {msg}", flush=True)

    def timed(self, name: str, fn, *a, **kw):
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        return out

    def base_config(self) -> Config:
        cfg = self.scale.config(self.target)
        if self.data:
            cfg = replace(cfg, data=replace(cfg.data, path=self.data))
        if self.steps:
            cfg = replace(cfg, train=replace(cfg.train, steps=self.steps, ckpt_every=self.steps))
        return cfg

    def model(self, variant: str = "eps-mse"):
        """The trained model of ``variant`` (trained into OUT/runs/VARIANT unless --ckpt)."""
        from ddpm.checkpoint import latest_checkpoint, load_checkpoint
        from ddpm.accel import resolve_device

        device = resolve_device(self.device)
        if self.ckpt:
            return load_checkpoint(self.ckpt, device=device)
        cfg = variant_config(self.base_config(), variant)
        run = self.out / "runs" / variant
        done = 0
        if (run / "checkpoints").is_dir():
            try:
                done = load_checkpoint(latest_checkpoint(run), device="cpu").step
            except UserError:
                done = 0
        if done < cfg.train.steps:
            from ddpm.train.trainer import Trainer

            self.log(f"training {variant} ({cfg.train.steps} steps) into {run}")
            trainer = Trainer(cfg, run, device=device, resume=done > 0, progress=self.progress,
                              tensorboard=False)
            self.timed(f"train {variant}", trainer.train)
            trainer.close()
        return load_checkpoint(run, device=device)

    def inception_net(self):
        """The Inception network, or None (with a note) when its weights are not available."""
        if self._net is None:
            from ddpm.evaluate.inception import load_inception
            from ddpm.accel import resolve_device

            try:
                self._net = load_inception(self.inception, device=resolve_device(self.device),
                                           download=self.scale.name == "paper")
            except UserError as e:
                self._net = False
                reason = str(e).removeprefix("Inception weights not found: ")
                self.notes.append(f"FID/IS not computed: Inception weights not found ({reason})")
        return self._net or None

    def eval_config(self, ck) -> Config:
        """The checkpoint's config with --data (a dataset location) applied."""
        return replace(ck.config, data=replace(ck.config.data, path=self.data)) if self.data else ck.config

    def nll(self, ck, split: str, key: str):
        from ddpm.evaluate.inputs import eval_images
        from ddpm.evaluate.likelihood import evaluate_bpd

        x, _, name = eval_images(None, self.eval_config(ck), split=split, num=self.scale.nll_num)
        self.log(f"NLL of {key} on {len(x)} {name} images")
        res = self.timed(f"nll {key} {split}", evaluate_bpd, ck.model, ck.diffusion, x,
                         batch_size=self.scale.eval_batch, chunk_dir=self.out / "bpd" / f"{key}-{split}",
                         meta={"step": ck.step, "data": name}, progress=self.progress)
        res.write_csv(self.out / f"nll_terms_{key}_{split}.csv")
        return res

    def sample_grid(self, ck, key: str, n: int = 36) -> str:
        """A grid of ``n`` samples (Algorithm 2, seed 0) as ``samples_KEY.png``; returns its file name."""
        from ddpm.images import save_grid
        from ddpm.sampling.api import generate

        n = min(n, self.scale.fid_num)
        x = self.timed(f"sample grid {key}", generate, ck.model, ck.diffusion, n, batch_size=n, seed=0,
                       device=next(ck.model.parameters()).device)
        name = f"samples_{key}.png"
        save_grid(x, self.out / name)
        return name

    def quality(self, ck, key: str) -> dict | None:
        net = self.inception_net()
        if net is None:
            return None
        from ddpm.evaluate.fid import compute_statistics, score_images
        from ddpm.evaluate.inputs import eval_images
        from ddpm.sampling.api import generate

        n = self.scale.fid_num
        self.log(f"sampling {n} images from {key} for FID/IS")
        x = self.timed(f"sample {key}", generate, ck.model, ck.diffusion, n, batch_size=self.scale.eval_batch,
                       seed=0, device=next(ck.model.parameters()).device, progress=self.progress)
        ref_path = self.out / f"reference_stats_train_{self.scale.ref_num or 'all'}.npz"
        if ref_path.is_file():
            from ddpm.evaluate.fid import InceptionStats

            ref = InceptionStats.load(ref_path)
        else:
            xr, _, _ = eval_images(None, self.eval_config(ck), split="train", num=self.scale.ref_num)
            ref = self.timed("reference stats", compute_statistics, net, xr, progress=self.progress)
            ref.save(ref_path)
        return self.timed(f"fid/is {key}", score_images, net, x, ref)


    def digits_quality(self, ck, key: str) -> dict | None:
        """FD/KID/precision/recall (and class accuracy for conditional models) of ``fid_num`` Algorithm 2
        samples on the digits features, with the real-vs-real floor; None when the images are not grey
        digits (then only Inception scores apply)."""
        from ddpm.evaluate import quality
        from ddpm.evaluate.sweep import measure

        c, h, _ = ck.config.model.image_shape
        if c != 1 or not quality.MIN_DIGITS_RES <= h <= 28 or ck.config.data.source not in ("digits", "mnist"):
            return None
        inst = quality.digits_instrument(h)
        n = self.scale.fid_num
        self.log(f"sampling {n} images from {key} for the digits features")
        row = self.timed(f"digits quality {key}", measure, ck, ck.config.sampling, n=n,
                         classes="all" if ck.config.model.num_classes else "null", batch_size=self.scale.eval_batch,
                         device=next(ck.model.parameters()).device, progress=self.progress, instrument=inst)
        if "untrained" not in self.results:
            self.results["untrained"] = self.timed("digits quality untrained", self._untrained_fd, ck, inst, n)
        return row

    def _untrained_fd(self, ck, inst, n: int) -> dict:
        """The same network at its initialisation (the trainer's seed), sampled and scored the same way:
        what training must beat."""
        import torch

        from ddpm.checkpoint import LoadedCheckpoint
        from ddpm.evaluate.sweep import measure
        from ddpm.models.registry import build_model

        torch.manual_seed(ck.config.train.seed)
        net = build_model(ck.config.model).eval()
        fresh = LoadedCheckpoint(model=net, diffusion=ck.diffusion, config=ck.config, step=0, weights="init")
        row = measure(fresh, ck.config.sampling, n=n, classes="all" if ck.config.model.num_classes else "null",
                      batch_size=self.scale.eval_batch, instrument=inst, with_floor=False)
        return {k: row[k] for k in ("fd", "fd_std", "kid", "kid_std")}


def _fmt(v, digits: int = 2) -> str:
    return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _digits_cells(d: dict | None) -> tuple[str, str]:
    if d is None:
        return "–", "–"
    acc = "" if d.get("accuracy") is None else f", acc {100 * d['accuracy']:.1f}%"
    return f"{d['fd']:.2f} ± {d['fd_std']:.2f}{acc}", f"{d['kid']:.4f} ± {d['kid_std']:.4f}"


def _digits_notes(r: Repro) -> list[str]:
    """The floor and the untrained network beside the digits columns, so a reader can place them."""
    rows = [v["digits"] for v in r.results.values() if isinstance(v, dict) and v.get("digits")]
    if not rows:
        return []
    floor, un, n = rows[0].get("floor"), r.results.get("untrained"), rows[0]["n"]
    lines = [f"FD/KID digits: the project's digits features ({rows[0]['features']}), {n} samples of Algorithm 2 "
             f"(seed 0) against the bundled digits the features never saw; ± is the std over random halves of the samples (the "
             f"delete-half jackknife; `docs/evaluation.md`)."]
    if floor:
        lines[-1] += (f" Real vs real at the same n (the floor): FD {floor['fd'][0]:.2f} ± {floor['fd'][1]:.2f}, "
                      f"KID {floor['kid'][0]:.4f} ± {floor['kid'][1]:.4f}.")
    if un:
        lines[-1] += f" The same network untrained: FD {un['fd']:.2f} ± {un['fd_std']:.2f}, KID {un['kid']:.4f}."
    return lines


def _quality_cells(q: dict | None) -> tuple[str, str]:
    if q is None:
        return "n/c", "n/c"
    is_ = f"{q['is_mean']:.2f} ± {q['is_std']:.2f}" if q["is_mean"] is not None else "–"
    return is_, f"{q['fid']:.2f}"


# ----------------------------------------------------------------------------------------- recipes
def _table1(r: Repro) -> list[str]:
    variants = ["eps-kl", "eps-mse"] if not r.ckpt else ["checkpoint"]
    figures = []
    lines = ["| model | IS (paper) | IS (ours) | FID (paper) | FID (ours) | FD digits (ours) | KID digits (ours) | "
             "NLL test (train), paper | NLL test (train), ours |", "|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        ck = r.model(v if v != "checkpoint" else "eps-mse")
        test, train = r.nll(ck, "test", v), r.nll(ck, "train", v)
        q = r.quality(ck, v)
        dq = r.digits_quality(ck, v)
        r.results[v] = {"nll_test": test.summary(), "nll_train": train.summary(), "quality": q, "digits": dq}
        p = PAPER_TABLE1.get(v, {"label": v, "is": "–", "fid": None, "nll_test": None, "nll_train": None})
        is_, fid = _quality_cells(q)
        fd, kid = _digits_cells(dq)
        lines.append(f"| {p['label']} | {p['is']} | {is_} | {_fmt(p['fid'])} | {fid} | {fd} | {kid} | "
                     f"≤ {_fmt(p['nll_test'])} ({_fmt(p['nll_train'])}) | "
                     f"≤ {test.bpd:.3f} ± {test.bpd_stderr:.3f} ({train.bpd:.3f} ± {train.bpd_stderr:.3f}) |")
        if v in ("eps-mse", "checkpoint"):
            r.results["rate_distortion"] = {"rate": test.rate_bpd, "distortion": test.decoder_bpd}
            _rd_files(r, test)
        figures.append(r.sample_grid(ck, v))
    rd = r.results.get("rate_distortion")
    if rd:
        lines += ["", f"L_simple decomposition (test): rate {rd['rate']:.3f} + distortion {rd['distortion']:.3f} "
                      f"bits/dim (paper: {PAPER_RATE_DISTORTION['rate']} + {PAPER_RATE_DISTORTION['distortion']}); "
                      "curves from the same pass: rate_distortion.csv, fig5_rate_distortion.png."]
    lines += ["", "NLL ± is the standard error over images; n/c = not computed (see notes)."]
    lines += _digits_notes(r) + [""]
    lines += [f"![samples of {v}]({name}) " for v, name in zip(variants, figures)]
    lines += ["", f"Samples (Algorithm 2, EMA weights, seed 0), left to right: {', '.join(variants)}."]
    return lines


def _table2(r: Repro) -> list[str]:
    if r.ckpt:
        raise ConfigError("table2 trains its six models itself; drop --ckpt")
    lines = ["| objective | IS (paper) | IS (ours) | FID (paper) | FID (ours) | FD digits (ours) | KID digits (ours) "
             "| NLL test, ours |", "|---|---|---|---|---|---|---|---|"]
    for v in ("xprev-learned", "xprev-kl", "xprev-mse", "eps-learned", "eps-kl", "eps-mse"):
        ck = r.model(v)
        test = r.nll(ck, "test", v)
        q = r.quality(ck, v)
        dq = r.digits_quality(ck, v)
        r.results[v] = {"nll_test": test.summary(), "quality": q, "digits": dq}
        p = PAPER_TABLE2[v]
        is_, fid = _quality_cells(q)
        fd, kid = _digits_cells(dq)
        lines.append(f"| {p['label']} | {p['is']} | {is_} | {p['fid']} | {fid} | {fd} | {kid} | {test.bpd:.3f} |")
    lines += [""] + _digits_notes(r)
    return lines


def _rd_files(r: Repro, test):
    from ddpm.evaluate.rate_distortion import from_bpd_result, plot_rate_distortion

    rd = from_bpd_result(test)
    rd.write_csv(r.out / "rate_distortion.csv")
    plot_rate_distortion(rd, r.out / "fig5_rate_distortion.png", title=f"rate–distortion ({test.num} test images)")
    return rd


def _rate_distortion(r: Repro) -> list[str]:
    ck = r.model("eps-mse")
    test = r.nll(ck, "test", "eps-mse")
    rd = _rd_files(r, test)
    r.results["rate_distortion"] = {"rate": test.rate_bpd, "distortion": test.decoder_bpd, "table4": rd.table4()}
    T = rd.num_timesteps
    lines = ["![Fig. 5](fig5_rate_distortion.png)", "",
             f"Rate {test.rate_bpd:.4f} + distortion {test.decoder_bpd:.4f} = {test.bpd:.4f} bits/dim "
             f"(paper: {PAPER_RATE_DISTORTION['rate']} + {PAPER_RATE_DISTORTION['distortion']}); final RMSE "
             f"{rd.distortion[-1]:.3f} (paper {PAPER_RATE_DISTORTION['rmse']}). Full curves: rate_distortion.csv.",
             "", "| reverse time T−t+1 (ours, T=%d) | rate (ours) | distortion (ours) | paper column | rate (paper) "
             "| distortion (paper) |" % T, "|---|---|---|---|---|---|"]
    for row, (col, (prate, pdist)) in zip(rd.table4(), PAPER_TABLE4.items()):
        lines.append(f"| {row['reverse_time']} | {row['rate_bpd']:.5f} | {row['distortion_rmse']:.5f} | {col} | "
                     f"{prate:.5f} | {pdist:.5f} |")
    lines += ["", "Distortion is 127.5·√(mean MSE of x̂0) over the test images; rate_distortion.csv also has "
                  "the mean per-image RMSE."]
    return lines


def _figure(r: Repro) -> list[str]:
    from ddpm.evaluate import figures
    from ddpm.evaluate.inputs import eval_images
    from ddpm.images import save_image

    ck = r.model("eps-mse")
    T = ck.diffusion.num_timesteps
    c = r.scale.chains
    if r.target == "fig6":
        f = r.timed("figure", figures.progressive_figure, ck.model, ck.diffusion, num_chains=c,
                    progress=r.progress)
        desc = f"Progressive generation: x̂0 along {c} chains at paper t = {f['frames_t']} (last: sample)."
    elif r.target == "fig7":
        f = r.timed("figure", figures.shared_latent_figure, ck.model, ck.diffusion, num_samples=c,
                    progress=r.progress)
        desc = (f"Samples sharing x_T … x_t, rows t = {f['share_until']}; first column the shared x_t "
                "(paper: t = 1000, 750, 500, 250).")
    else:
        x, _, _ = eval_images(None, r.eval_config(ck), split="test", num=2)
        ts = [r.scale.interp_t or T // 2] if r.target == "fig8" else None
        f = r.timed("figure", figures.interpolation_figure, ck.model, ck.diffusion, x[0], x[1], ts=ts)
        desc = (f"Interpolation at t = {f['ts']}: source, rec., λ = 0.1 … 0.9, rec., source "
                "(paper Fig. 8: t = 500 of 1000; Fig. 9: 0, 125, …, 1000).")
    save_image(f["grid"], r.out / f"{r.target}.png")
    return [f"![{r.target}]({r.target}.png)", "", desc]


RECIPES = {"table1": _table1, "table2": _table2, "table4": _rate_distortion, "fig5": _rate_distortion,
           "fig6": _figure, "fig7": _figure, "fig8": _figure, "fig9": _figure}

TITLES = {"table1": "Table 1: CIFAR-10 IS, FID and NLL", "table2": "Table 2: parameterisation ablation",
          "table4": "Table 4: rate and distortion along the reverse process",
          "fig5": "Fig. 5: rate–distortion", "fig6": "Fig. 6: progressive generation",
          "fig7": "Fig. 7: shared latents", "fig8": "Fig. 8: interpolation", "fig9": "Fig. 9: coarse-to-fine interpolation"}


def run_repro(target: str, scale: str = "tiny", *, out: str | Path | None = None, data: str | None = None,
              ckpt: str | None = None, inception: str | None = None, device: str | None = None,
              steps: int | None = None, progress: bool = True) -> Path:
    """Run the recipe of ``target`` at ``scale``; returns the path of the Markdown report."""
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if scale not in SCALE_SETTINGS:
        raise ConfigError(f"unknown scale {scale!r}; choose tiny or paper")
    if target == "table2" and ckpt:  # checked before the output folder is made
        raise ConfigError("table2 trains its six models itself; drop --ckpt")
    out = Path(out or f"repro/{target}-{scale}")
    out.mkdir(parents=True, exist_ok=True)
    r = Repro(target, SCALE_SETTINGS[scale], out, data=data, ckpt=ckpt, inception=inception, device=device,
              steps=steps, progress=progress)
    from ddpm.outputs import describe_machine, machine

    host = machine()  # the load at the start: wall times depend on what else runs
    t0 = time.perf_counter()
    body = RECIPES[target](r)
    wall = time.perf_counter() - t0
    cfg = r.base_config()
    lines = [f"# {TITLES[target]} — `{scale}` scale", "",
             f"Produced by `ddpm repro {target} --scale {scale}`" + (f" --ckpt {ckpt}" if ckpt else "") +
             f" in {wall / 60:.1f} min wall time on {describe_machine(host)} at the start.", ""]
    if scale != "paper":
        lines += [f"Setting: {cfg.data.source} at {cfg.model.resolution}×{cfg.model.resolution}, U-Net ch "
                  f"{cfg.model.ch} × {list(cfg.model.ch_mult)}, T = {cfg.diffusion.num_timesteps} (β "
                  f"{cfg.diffusion.beta_start} → {cfg.diffusion.beta_end}), {cfg.train.steps} training steps "
                  f"at batch {cfg.train.batch_size}, NLL on {r.scale.nll_num} images per split. The paper's "
                  "numbers are CIFAR-10 / CelebA-HQ at full scale: the columns show the same quantities, "
                  "not comparable values.", ""]
    lines += body + [""]
    if r.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(r.notes)] + [""]
    lines += ["## Wall time", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r.timings.items()] + [f"| total | {wall:.1f} |", ""]
    from ddpm.outputs import provenance, write_text

    report = out / "report.md"
    write_text(report, "\n".join(lines))
    record = provenance(target=target, scale=scale, ckpt=ckpt, steps=steps, timings=r.timings,
                        machine_at_start=host)
    write_text(out / "results.json", json.dumps({"target": target, "scale": scale, "wall_s": wall,
                                                 "timings": r.timings, "results": r.results,
                                                 "notes": r.notes, "provenance": record},
                                                indent=2, default=_json_default) + "\n")
    return report


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


__all__ = ["run_repro", "TARGETS", "SCALES", "VARIANTS", "PAPER_TABLE1", "PAPER_TABLE2", "PAPER_TABLE4",
           "PAPER_RATE_DISTORTION", "variant_config"]
