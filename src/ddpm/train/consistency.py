"""Consistency distillation and consistency training (Song et al. 2023; improved training: Song &
Dhariwal 2023) as training objectives of the project's trainer.

Both train a consistency model (``model.arch = "consistency"``, :mod:`ddpm.models.consistency`) so
that f_θ gives the same x_0 from two adjacent points of one probability-flow trajectory. The
discretisation is Karras et al.'s (2022, Eq. 5) σ grid with ρ = 7 between the diffusion's smallest
and largest σ (σ_t = √((1−ᾱ_t)/ᾱ_t) at code steps 0 and T−1), each point moved to the code timestep of
nearest log σ (duplicates merged), so the network only ever sees the timesteps it samples with.

- **Consistency distillation** (``consistency-distillation``, Song et al. 2023, Algorithm 2): n uniform
  on the N−1 intervals, x_{t_{n+1}} = q_sample(x_0, t_{n+1}, ε), one ODE step of the teacher down to
  t_n (``solver``: Heun, EDM's 2nd-order step, or Euler, which in the σ view *is* a DDIM step), target
  f_θ⁻(x̂_{t_n}, t_n) of the EMA target network θ⁻ ← μθ⁻ + (1−μ)θ.
- **Consistency training** (``consistency-training``, Song & Dhariwal 2023, §3–4): no teacher and no EMA
  target (θ⁻ = stop-grad θ), both points from the same ε, the pseudo-Huber metric, λ(σ_i) =
  1/(σ_{i+1} − σ_i), i drawn with p(i) ∝ erf((ln σ_{i+1} − P_mean)/(√2 P_std)) − erf((ln σ_i − P_mean)/(√2 P_std)),
  and N(k) = min(s_0·2^⌊k/K'⌋, s_1) + 1 points at step k with K' = ⌊K/(log₂⌊s_1/s_0⌋ + 1)⌋.

The metric d is the squared L2 distance (mean over pixels) or the pseudo-Huber √(‖a−b‖² + c²) − c with
c = 0.00054·√d (d pixels); LPIPS, the papers' best CD metric, needs ImageNet-trained weights that are
not available offline. The grid indices come from each objective's own seeded generator, saved with
the run (exact resume; under DDP every rank draws the same index sequence for its own examples).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from ddpm.errors import ConfigError
from ddpm.sampling.registry import Option
from ddpm.train.objectives import Objective

METRICS = ("pseudo-huber", "l2")
SOLVERS = ("heun", "euler")
RHO = 7.0
HUBER_C = 0.00054  # per √pixels (Song & Dhariwal 2023, §3.3)


def vp_sigmas(diffusion) -> np.ndarray:
    ac = diffusion.alphas_cumprod
    return np.sqrt((1.0 - ac) / ac)


def karras_timesteps(sigmas: np.ndarray, n: int, rho: float = RHO) -> np.ndarray:
    """Ascending code timesteps nearest (in log σ) to Karras et al.'s ρ-spaced grid of ``n`` noise
    levels from sigmas[0] to sigmas[-1]; merged duplicates can leave fewer than ``n``."""
    lo, hi = sigmas[0] ** (1.0 / rho), sigmas[-1] ** (1.0 / rho)
    grid = (lo + np.arange(n) / max(n - 1, 1) * (hi - lo)) ** rho
    idx = np.abs(np.log(sigmas)[None, :] - np.log(grid)[:, None]).argmin(axis=1)
    return np.unique(idx)


def distance(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-example d(a, b): mean squared error, or the pseudo-Huber metric of the improved recipe."""
    diff = (a - b).float().flatten(1)
    if metric == "l2":
        return (diff**2).mean(1)
    c = HUBER_C * math.sqrt(diff.shape[1])
    return torch.sqrt((diff**2).sum(1) + c * c) - c


def _check_student(config, diffusion, who: str) -> None:
    if getattr(config.model, "arch", None) != "consistency" or diffusion.mean_type != "xstart":
        raise ConfigError(f"{who} trains a consistency model: model.arch 'consistency' with diffusion.mean_type "
                          "'xstart' (use `ddpm distill consistency` or the digits-ct preset)")


class _ConsistencyBase(Objective):
    """Shared: the σ tables, the seeded index generator, and their state."""

    def __init__(self, config, diffusion, device, options=None):
        super().__init__(config, diffusion, device, options)
        _check_student(config, diffusion, f"train.objective {self.name!r}")
        self.sigmas = vp_sigmas(diffusion)
        self.sigma_t = torch.from_numpy(self.sigmas).float().to(self.device)
        self.gen = torch.Generator().manual_seed(config.train.seed + 7919)

    def pair(self, x0, noise, t_lo, t_hi):
        """(x at t_hi, x at t_lo), both from the same ε."""
        return self.diffusion.q_sample(x0, t_hi, noise=noise), self.diffusion.q_sample(x0, t_lo, noise=noise)

    def state_dict(self):
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state):
        if "gen" in state:
            self.gen.set_state(state["gen"])


class ConsistencyDistillationObjective(_ConsistencyBase):
    """Algorithm 2 of Song et al. 2023 with a teacher's probability-flow ODE."""

    name = "consistency-distillation"
    options = (
        Option("teacher", "", "the teacher checkpoint (run dir, checkpoint dir or weights file)", kind=str),
        Option("num_scales", 18, "N: points of the discretisation (Song et al.: 18 on CIFAR-10)", kind=int,
               low=2, high=100_000),
        Option("solver", "heun", "teacher ODE step: heun (2 calls) or euler (= DDIM, 1 call)", kind=str,
               choices=SOLVERS),
        Option("target_ema", 0.95, "μ of the target network θ⁻ ← μθ⁻ + (1−μ)θ", low=0.0, high=1.0),
        Option("metric", "pseudo-huber", "d: pseudo-huber or l2 (LPIPS is not available offline)", kind=str,
               choices=METRICS),
        Option("guidance", 0.0, "classifier-free guidance w of the teacher, fixed (the student samples at 0)",
               low=0.0),
    )

    def __init__(self, config, diffusion, device, options=None):
        super().__init__(config, diffusion, device, options)
        from ddpm.train.progressive import load_teacher

        o = self.opts
        if not o["teacher"]:
            raise ConfigError("consistency distillation needs a teacher: set train.objective_options.teacher "
                              "(or use `ddpm distill consistency --teacher CKPT`)")
        self.teacher, self.teacher_diffusion, _ = load_teacher(o["teacher"], self.device, o["guidance"])
        if not np.allclose(self.teacher_diffusion.alphas_cumprod, diffusion.alphas_cumprod, rtol=1e-6, atol=0):
            raise ConfigError("the consistency model's diffusion must have the teacher's noise schedule")
        self.grid = torch.from_numpy(karras_timesteps(self.sigmas, o["num_scales"])).to(self.device)
        self.target_net: torch.nn.Module | None = None
        self._pending: dict | None = None

    # ---------------------------------------------------------------------------- teacher ODE
    def teacher_eps(self, x, t, model_kwargs):
        out = self.teacher_diffusion.p_mean_variance(self.teacher, x, t, clip_denoised=False,
                                                     model_kwargs=model_kwargs)
        return self.teacher_diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])

    @torch.no_grad()
    def ode_step(self, x, t_hi, t_lo, model_kwargs):
        """x at t_hi → x at t_lo by one step of the probability-flow ODE dx̃/dσ = ε̂ in the σ view
        (x̃ = x/√ᾱ; Karras et al. 2022, Algorithm 1: Euler, plus Heun's correction)."""
        shape = (-1,) + (1,) * (x.ndim - 1)
        s_hi, s_lo = self.sigma_t[t_hi].view(shape), self.sigma_t[t_lo].view(shape)
        xt = x * torch.sqrt(1 + s_hi**2)
        d = self.teacher_eps(x, t_hi, model_kwargs)
        x_lo = xt + (s_lo - s_hi) * d
        if self.opts["solver"] == "heun":
            d2 = self.teacher_eps(x_lo / torch.sqrt(1 + s_lo**2), t_lo, model_kwargs)
            x_lo = xt + (s_lo - s_hi) * (d + d2) / 2
        return x_lo / torch.sqrt(1 + s_lo**2)

    # ---------------------------------------------------------------------------- target network
    def _target(self, model) -> torch.nn.Module:
        if self.target_net is None:
            self.target_net = copy.deepcopy(getattr(model, "module", model)).eval().requires_grad_(False)
            if self._pending:
                self.target_net.load_state_dict(self._pending)
                self._pending = None
        return self.target_net

    def after_step(self, model):
        if self.target_net is not None:
            mu = self.opts["target_ema"]
            with torch.no_grad():
                torch._foreach_lerp_(list(self.target_net.parameters()),
                                     [p.detach() for p in model.parameters()], 1.0 - mu)

    def state_dict(self):
        state = super().state_dict()
        if self.target_net is not None:
            state.update({f"target.{k}": v for k, v in self.target_net.state_dict().items()})
        elif self._pending:
            state.update({f"target.{k}": v for k, v in self._pending.items()})
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        target = {k[len("target."):]: v for k, v in state.items() if k.startswith("target.")}
        if target:
            if self.target_net is not None:
                self.target_net.load_state_dict(target)
            else:
                self._pending = target

    # ---------------------------------------------------------------------------- loss
    def losses(self, model, x0, t, noise, model_kwargs):
        n = torch.randint(0, len(self.grid) - 1, (x0.shape[0],), generator=self.gen).to(self.device)
        t_lo, t_hi = self.grid[n], self.grid[n + 1]
        x_hi = self.diffusion.q_sample(x0, t_hi, noise=noise)
        target_net = self._target(model)
        with torch.no_grad():
            x_lo = self.ode_step(x_hi, t_hi, t_lo, model_kwargs)
            target = target_net(x_lo, t_lo, **model_kwargs)
        pred = model(x_hi, t_hi, **model_kwargs)
        return {"loss": distance(pred, target, self.opts["metric"])}


class ConsistencyTrainingObjective(_ConsistencyBase):
    """Improved consistency training (Song & Dhariwal 2023): from data alone."""

    name = "consistency-training"
    options = (
        Option("s0", 10, "initial discretisation steps s_0", kind=int, low=1, high=100_000),
        Option("s1", 1280, "final discretisation steps s_1 (the code grid caps the distinct points)", kind=int,
               low=1, high=100_000),
        Option("p_mean", -1.1, "P_mean of the log-normal σ sampling", low=-20.0, high=20.0),
        Option("p_std", 2.0, "P_std of the log-normal σ sampling", low=1e-3, high=20.0),
        Option("metric", "pseudo-huber", "d: pseudo-huber or l2", kind=str, choices=METRICS),
    )

    def __init__(self, config, diffusion, device, options=None):
        super().__init__(config, diffusion, device, options)
        o = self.opts
        if o["s1"] < o["s0"]:
            raise ConfigError(f"consistency-training needs s1 >= s0, got s0={o['s0']} s1={o['s1']}")
        total = config.train.steps
        self.stage_len = max(1, total // (int(math.log2(o["s1"] // o["s0"])) + 1))
        self.step = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def num_points(self, step: int) -> int:
        """N(k) = min(s_0·2^⌊k/K'⌋, s_1) + 1 (Song & Dhariwal 2023, Eq. 7)."""
        o = self.opts
        return min(o["s0"] * 2 ** (step // self.stage_len), o["s1"]) + 1

    def schedule(self, n: int):
        """(grid timesteps, probabilities of each interval, λ = 1/(σ_{i+1} − σ_i)) for N = n points."""
        if n not in self._cache:
            grid = karras_timesteps(self.sigmas, n)
            s = self.sigmas[grid]
            o = self.opts
            cdf = torch.special.erf(torch.from_numpy((np.log(s) - o["p_mean"]) / (math.sqrt(2) * o["p_std"])))
            p = (cdf[1:] - cdf[:-1]).clamp_min(0).double()
            self._cache[n] = (torch.from_numpy(grid).to(self.device), p / p.sum(),
                              torch.from_numpy(1.0 / np.diff(s)).float().to(self.device))
        return self._cache[n]

    def after_step(self, model):
        self.step += 1

    def state_dict(self):
        return {**super().state_dict(), "step": self.step}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.step = int(state.get("step", 0))

    def losses(self, model, x0, t, noise, model_kwargs):
        grid, p, lam = self.schedule(self.num_points(self.step))
        i = torch.multinomial(p, x0.shape[0], replacement=True, generator=self.gen).to(self.device)
        x_hi, x_lo = self.pair(x0, noise, grid[i], grid[i + 1])
        with torch.no_grad():
            target = model(x_lo, grid[i], **model_kwargs)
        pred = model(x_hi, grid[i + 1], **model_kwargs)
        return {"loss": lam[i] * distance(pred, target, self.opts["metric"])}


# ------------------------------------------------------------------------------ distillation runs
# What distillation changes in the teacher's recipe: fine-tuning from the teacher's weights; EMA 0.99
# so that a run of a few thousand steps forgets the initial weights in the sampling average.
CD_DEFAULTS = ("train.lr=2e-4", "train.warmup=20", "train.ema_decay=0.99", "train.sample_every=250",
               "train.log_every=10", "train.keep_checkpoints=1", "train.ckpt_every=100")


def distillation_config(teacher_config, teacher: str, *, steps: int, options: dict | None = None, overrides=()):
    """The Config of a consistency model distilled from a U-Net teacher: the teacher's network as a
    consistency model (same weights), data and schedule; x0 output; one-step consistency sampling."""
    import dataclasses

    from ddpm.config import Config, SamplerConfig, apply_overrides
    from ddpm.models.consistency import ConsistencyConfig

    m = teacher_config.model
    if getattr(m, "arch", None) != "unet":
        raise ConfigError(f"consistency distillation starts from a U-Net teacher (model.arch 'unet'), got "
                          f"{getattr(m, 'arch', '?')!r}")
    fields = {f.name: getattr(m, f.name) for f in dataclasses.fields(m) if f.name != "arch"}
    recipe = dataclasses.replace(teacher_config.train, objective="consistency-distillation", objective_options={},
                                 sample_steps=None)
    cfg = Config(model=ConsistencyConfig(**fields),
                 diffusion=dataclasses.replace(teacher_config.diffusion, mean_type="xstart", loss_type="mse"),
                 train=recipe, data=teacher_config.data,
                 sampling=SamplerConfig(sampler="consistency", steps=1, spacing="trailing"))
    cfg = apply_overrides(cfg, [*CD_DEFAULTS, f"train.steps={steps}", *overrides])
    opts = {**cfg.train.objective_options, **(options or {}), "teacher": str(teacher)}
    train = dataclasses.replace(cfg.train, objective_options=opts)
    return dataclasses.replace(cfg, train=train, preset=None)


def run_consistency_distillation(teacher, run_dir, *, steps: int, options: dict | None = None, overrides=(),
                                 device=None, progress=None, log=None):
    """Distil ``teacher`` into a consistency model in ``run_dir`` (an ordinary run directory). Running
    it again resumes from the last checkpoint, exactly. Returns the trainer's last metrics record."""
    import json
    import shutil
    import sys
    import time
    from pathlib import Path

    from ddpm import checkpoint as ckpt
    from ddpm.train.progressive import load_teacher
    from ddpm.train.trainer import Trainer

    log = log or (lambda m: print(m, file=sys.stderr))
    run_dir = Path(run_dir)
    teacher = str(Path(teacher).resolve()) if Path(teacher).exists() else str(teacher)
    cfg = distillation_config(load_teacher(teacher, "cpu")[2], teacher, steps=steps, options=options,
                              overrides=overrides)
    if run_dir.exists() and (run_dir / "config.json").exists() and not ckpt.list_checkpoints(run_dir):
        log(f"{run_dir}: no checkpoint yet; starting afresh")
        shutil.rmtree(run_dir)
    resume = run_dir.exists() and (run_dir / "config.json").exists()
    trainer = Trainer(cfg, run_dir, device=device, resume=resume, init_from=None if resume else teacher,
                      progress=progress)
    record = {"step": trainer.step}
    try:
        if trainer.step < steps:
            t0 = time.perf_counter()
            record = trainer.train(steps=steps)
            timing_path = run_dir / "distill.json"
            timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"teacher": teacher,
                                                                                        "seconds": 0.0}
            timing.update(seconds=timing["seconds"] + time.perf_counter() - t0, steps=trainer.step)
            ckpt.write_text_atomic(timing_path, json.dumps(timing, indent=1) + "\n")
    finally:
        trainer.close()
    return record


__all__ = ["ConsistencyDistillationObjective", "ConsistencyTrainingObjective", "karras_timesteps", "distance",
           "vp_sigmas", "distillation_config", "run_consistency_distillation", "METRICS", "SOLVERS", "CD_DEFAULTS"]
