"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): halve the sampling steps, round by round.

One round teaches a student to do in one deterministic DDIM step what its teacher does in two. On the
student's K-step grid of code timesteps s_1 < … < s_K (the ``trailing`` spacing, whose K-grid is every
other point of the 2K-grid, :mod:`ddpm.sampling.respace`) an example gets a grid step i, t = s_i,
t' the teacher's grid point between s_i and s_{i−1}, t'' = s_{i−1} (clean data below s_1), and with
z_t = α_t x + σ_t ε (α = √ᾱ, σ = √(1−ᾱ)):

    z_t'  = α_t' x̂_η(z_t) + σ_t'/σ_t · (z_t − α_t x̂_η(z_t))              (teacher DDIM step)
    z_t'' = α_t'' x̂_η(z_t') + σ_t''/σ_t' · (z_t' − α_t' x̂_η(z_t'))       (teacher DDIM step)
    x̃    = (z_t'' − σ_t''/σ_t · z_t) / (α_t'' − σ_t''/σ_t · α_t)          (the student's target)

so that one student DDIM step with x̂_θ(z_t) = x̃ lands exactly on z_t''. The loss is
w(λ_t)·‖x̃ − x̂_θ(z_t)‖² with the paper's "SNR+1" weighting w = 1 + α²/σ² (= ‖ṽ − v̂‖² for a
v-prediction student, the default) or its "truncated SNR" max(α²/σ², 1), or w = α²/σ² (``snr``: the
same error measured in ε, ‖ε̃ − ε̂‖², the weighting an ε-teacher was trained with). ``snr`` was tried
for a first round from an ε-teacher, whose x̂ = (z − σε̂)/α near t = T carries ε̂'s error times σ/α
(≈ 160 at t = 999 of the linear schedule), so that x̃ there is an ill-conditioned target dominating an
x-space loss; on digits it made the first round's student worse (docs/distillation.md), so snr+1 stays.

Choices where the paper leaves room (docs/distillation.md):

- the student predicts v (``diffusion.mean_type = "v"``, App. D) and starts from the teacher's weights;
  an ε-teacher's first round therefore also re-parameterises (ε ≈ v at low noise, not at high noise);
- x̂_η is clipped to [−1, 1] as in the project's DDIM (``clip``), so the target is exactly two steps of
  ``ddpm sample --sampler ddim`` of the teacher;
- a class-conditional teacher is distilled with classifier-free guidance at a FIXED w (``guidance``):
  the student learns the guided teacher and samples with guidance 0; labels drop to the null label at
  ``train.class_dropout`` as in the teacher's training, so the student also samples unconditionally;
- the grid step i comes from the trainer's t (i = the first grid step with s_i ≥ t), so t is uniform
  in time as the paper's t = i/N and the run keeps the trainer's exact, rank-independent resume.

:func:`run_progressive` chains the rounds into run directories ``D/steps-K`` (each an ordinary run:
checkpoints, exact resume); every student's ``config.sampling`` is DDIM with its K trailing steps.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from ddpm.errors import ConfigError
from ddpm.sampling.registry import Option
from ddpm.train.objectives import Objective

WEIGHTINGS = ("snr+1", "truncated-snr", "snr")


def load_teacher(path, device, guidance: float = 0.0):
    """(callable network, its diffusion, its config) of a teacher checkpoint (EMA weights, frozen),
    wrapped with classifier-free guidance w when ``guidance`` > 0."""
    from ddpm.checkpoint import load_checkpoint
    from ddpm.sampling.guidance import ClassifierFreeGuidance

    ck = load_checkpoint(path, device=device)
    ck.model.requires_grad_(False).eval()
    net = ck.model
    if guidance > 0:
        if ck.config.model.num_classes is None:
            raise ConfigError(f"guidance w={guidance:g} needs a class-conditional teacher; {path} is unconditional")
        net = ClassifierFreeGuidance(net, guidance, null_label=ck.config.model.num_classes,
                                     data_channels=ck.config.model.image_shape[0])
    return net, ck.diffusion, ck.config


def pd_grid(num_timesteps: int, student_steps: int) -> np.ndarray:
    """(K, 3) code timesteps (t, t', t'') of each student step i = 1..K (−1: clean data)."""
    from ddpm.sampling.respace import timestep_subsequence

    teacher = [-1] + timestep_subsequence(num_timesteps, 2 * student_steps, "trailing")
    return np.array([[teacher[2 * i], teacher[2 * i - 1], teacher[2 * i - 2]] for i in range(1, student_steps + 1)])


class DDIMJumps:
    """Deterministic DDIM steps (η = 0) between any two code timesteps of one schedule (t = −1: clean
    data), per example: the teacher's steps of a target and ``scripts/pd_diagnose.py``'s chains."""

    def __init__(self, diffusion, device):
        ac = np.concatenate([[1.0], diffusion.alphas_cumprod])  # index 0: clean data (t = −1)
        self.alpha = torch.from_numpy(np.sqrt(ac)).float().to(device)
        self.sigma = torch.from_numpy(np.sqrt(1.0 - ac)).float().to(device)

    def coef(self, t: torch.Tensor, like: torch.Tensor):
        """(α_t, σ_t) of each example, shaped to broadcast against ``like``."""
        shape = (-1,) + (1,) * (like.ndim - 1)
        return self.alpha[t + 1].view(shape), self.sigma[t + 1].view(shape)

    def step(self, diffusion, net, z, t, t_next, model_kwargs, clip: bool):
        """z at t to t_next through ``net``'s x̂ (clipped to [−1, 1] when ``clip``, as ``ddpm sample``)."""
        x0 = diffusion.p_mean_variance(net, z, t, clip_denoised=clip, model_kwargs=model_kwargs)["pred_xstart"]
        a, s = self.coef(t, z)
        a_n, s_n = self.coef(t_next, z)
        return a_n * x0 + s_n / s * (z - a * x0)


class ProgressiveDistillationObjective(Objective):
    """One round of Algorithm 2: the student (the trained model) learns the teacher's two DDIM steps."""

    name = "progressive-distillation"
    options = (
        Option("teacher", "", "the teacher checkpoint (run dir, checkpoint dir or weights file)", kind=str),
        Option("teacher_steps", 2, "N: the teacher's DDIM steps (trailing); the student gets N/2", kind=int,
               low=2),
        Option("guidance", 0.0, "classifier-free guidance w of the teacher, fixed (the student samples at 0)",
               low=0.0),
        Option("clip", True, "clip the teacher's x̂0 to [-1, 1] in its DDIM steps (as ddpm sample does)",
               kind=bool),
        Option("weighting", "snr+1",
               "loss weight on ‖x̃ − x̂‖²: snr+1 (= v-MSE), truncated-snr (max(SNR, 1)) or snr (= ε-MSE)",
               kind=str, choices=WEIGHTINGS),
    )

    def __init__(self, config, diffusion, device, options=None):
        super().__init__(config, diffusion, device, options)
        o = self.opts
        if not o["teacher"]:
            raise ConfigError("progressive distillation needs a teacher: set train.objective_options.teacher "
                              "(or use `ddpm distill progressive --teacher CKPT`)")
        n = o["teacher_steps"]
        if n % 2:
            raise ConfigError(f"teacher_steps must be even (the student takes half), got {n}")
        if diffusion.mean_type not in ("v", "xstart"):
            raise ConfigError(f"a progressive-distillation student predicts v or x0 (diffusion.mean_type v or "
                              f"xstart; Salimans & Ho 2022, §4), not {diffusion.mean_type!r}")
        self.teacher, self.teacher_diffusion, tcfg = load_teacher(o["teacher"], self.device, o["guidance"])
        if self.teacher_diffusion.num_timesteps != diffusion.num_timesteps or not np.allclose(
                self.teacher_diffusion.alphas_cumprod, diffusion.alphas_cumprod, rtol=1e-6, atol=0):
            raise ConfigError("the student's diffusion must have the teacher's noise schedule")
        if n > diffusion.num_timesteps:
            raise ConfigError(f"teacher_steps={n} exceeds the model's {diffusion.num_timesteps} timesteps")
        grid = pd_grid(diffusion.num_timesteps, n // 2)
        self.grid = torch.from_numpy(grid).to(self.device)
        self.bounds = self.grid[:, 0].contiguous()  # s_1 < … < s_K
        self.jumps = DDIMJumps(diffusion, self.device)

    def _coef(self, t: torch.Tensor, like: torch.Tensor):
        return self.jumps.coef(t, like)

    def _ddim(self, z, t, t_next, model_kwargs):
        """One teacher DDIM step (η = 0) from z at t to t_next."""
        return self.jumps.step(self.teacher_diffusion, self.teacher, z, t, t_next, model_kwargs, self.opts["clip"])

    @torch.no_grad()
    def target(self, z: torch.Tensor, i: torch.Tensor, model_kwargs: dict) -> torch.Tensor:
        """x̃ of Algorithm 2 for z at the student's grid steps ``i`` (0-based)."""
        t, t1, t2 = self.grid[i].unbind(1)
        z1 = self._ddim(z, t, t1, model_kwargs)
        z2 = self._ddim(z1, t1, t2, model_kwargs)
        a, s = self._coef(t, z)
        a2, s2 = self._coef(t2, z)
        ratio = s2 / s
        return (z2 - ratio * z) / (a2 - ratio * a)

    def grid_steps(self, t: torch.Tensor) -> torch.Tensor:
        """The student's grid step (0-based) of each trainer timestep: the first s_i ≥ t."""
        return torch.searchsorted(self.bounds, t.to(self.bounds.device))

    def losses(self, model, x0, t, noise, model_kwargs):
        i = self.grid_steps(t)
        t_i = self.grid[i, 0]
        z = self.diffusion.q_sample(x0, t_i, noise=noise)
        x_target = self.target(z, i, model_kwargs)
        x_hat = self.diffusion.p_mean_variance(model, z, t_i, clip_denoised=False,
                                               model_kwargs=model_kwargs)["pred_xstart"]
        a, s = self._coef(t_i, z)
        snr = (a / s) ** 2
        weight = {"snr+1": 1.0 + snr, "truncated-snr": torch.clamp(snr, min=1.0), "snr": snr}[self.opts["weighting"]]
        mse = ((x_target - x_hat) ** 2).flatten(1).mean(1)
        return {"loss": weight.flatten() * mse, "mse": mse}


# ------------------------------------------------------------------------------------------- rounds
# What a round changes in the teacher's recipe (fine-tuning, not training from scratch). EMA 0.99: a
# round of a few hundred steps must forget the teacher's initial weights in the average.
ROUND_DEFAULTS = ("train.lr=2e-4", "train.warmup=20", "train.ema_decay=0.99", "train.sample_every=0",
                  "train.log_every=10", "train.keep_checkpoints=1")


def student_config(teacher_config, teacher: str, teacher_steps: int, *, round_steps: int, guidance: float = 0.0,
                   overrides=(), mean_type: str = "v"):
    """The Config of the round whose teacher takes ``teacher_steps`` DDIM steps: the teacher's network,
    data and schedule, a v student, the round's objective and a K = N/2-step DDIM default sampler."""
    from ddpm.config import SamplerConfig, apply_overrides

    cfg = apply_overrides(teacher_config, [*ROUND_DEFAULTS, f"train.steps={round_steps}",
                                           f"train.ckpt_every={max(1, min(250, round_steps))}", *overrides])
    options = {"teacher": str(teacher), "teacher_steps": int(teacher_steps), "guidance": float(guidance)}
    options.update({k: v for k, v in cfg.train.objective_options.items() if k not in options})
    train = dataclasses.replace(cfg.train, objective="progressive-distillation", objective_options=options,
                                sample_steps=None)
    diffusion = dataclasses.replace(cfg.diffusion, mean_type=mean_type)
    sampling = SamplerConfig(sampler="ddim", steps=teacher_steps // 2, spacing="trailing", guidance=0.0)
    return dataclasses.replace(cfg, train=train, diffusion=diffusion, sampling=sampling, preset=None)


def round_plan(from_steps: int, to_steps: int) -> list[int]:
    """The teachers' step counts N, N/2, …, 2K of the rounds from N down to K steps."""
    if to_steps < 1 or from_steps <= to_steps or from_steps % to_steps or (from_steps // to_steps) & (
            from_steps // to_steps - 1):
        raise ConfigError(f"--from {from_steps} --to {to_steps}: N must be K times a power of two, N > K ≥ 1 "
                          "(each round halves the steps)")
    plan, n = [], from_steps
    while n > to_steps:
        plan.append(n)
        n //= 2
    return plan


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def run_progressive(teacher, from_steps: int, to_steps: int, run_dir, *, round_steps: int, guidance: float = 0.0,
                    overrides=(), device=None, progress=None, log=_stderr) -> list[Path]:
    """Distil ``teacher`` from ``from_steps`` to ``to_steps`` DDIM steps, one round per halving, into
    ``run_dir/steps-K``; returns the round directories. Running it again resumes: finished rounds are
    kept, an interrupted one continues from its last checkpoint (exactly), the rest start afresh.
    ``round_steps`` optimizer steps per round; ``overrides`` are ``section.field=value`` strings.
    ``guidance`` w applies to the first round's teacher; later teachers already carry it."""
    import json
    import shutil
    import time

    from ddpm import checkpoint as ckpt
    from ddpm.train.trainer import Trainer

    run_dir = Path(run_dir)
    plan = round_plan(int(from_steps), int(to_steps))
    teacher = str(Path(teacher).resolve()) if Path(teacher).exists() else str(teacher)
    teacher_cfg = load_teacher(teacher, "cpu")[2]
    if int(from_steps) > teacher_cfg.diffusion.num_timesteps:
        raise ConfigError(f"--from {from_steps} exceeds the teacher's {teacher_cfg.diffusion.num_timesteps} timesteps")
    timing_path = run_dir / "distill.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"teacher": teacher, "rounds": {}}
    dirs = []
    for n in plan:
        rd = run_dir / f"steps-{n // 2}"
        cfg = student_config(teacher_cfg, teacher, n, round_steps=round_steps, guidance=guidance, overrides=overrides)
        if rd.exists() and not ckpt.list_checkpoints(rd):
            log(f"{rd}: no checkpoint yet; starting the round afresh")
            shutil.rmtree(rd)
        resume = rd.exists()
        trainer = Trainer(cfg, rd, device=device, resume=resume, init_from=None if resume else teacher,
                          progress=progress)
        try:
            if trainer.step < round_steps:
                log(f"round {n} -> {n // 2} steps: training {rd} to step {round_steps}")
                t0 = time.perf_counter()
                trainer.train(steps=round_steps)
                entry = timing["rounds"].setdefault(rd.name, {"seconds": 0.0})
                entry.update(seconds=entry["seconds"] + time.perf_counter() - t0, steps=trainer.step,
                             teacher=teacher)
                ckpt.write_text_atomic(timing_path, json.dumps(timing, indent=1) + "\n")
        finally:
            trainer.close()
        dirs.append(rd)
        teacher, teacher_cfg, guidance = str(rd.resolve()), cfg, 0.0
    return dirs


__all__ = ["ProgressiveDistillationObjective", "DDIMJumps", "pd_grid", "load_teacher", "student_config", "round_plan",
           "run_progressive", "ROUND_DEFAULTS"]
