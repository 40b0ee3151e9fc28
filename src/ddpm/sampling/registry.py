"""The sampler registry: every way of drawing x_0 from x_T is one entry with one call signature.

The contract (in the spirit of k-diffusion's ``sample_x(model, x, sigmas, …)``): a sampler is

    fn(model, diffusion, x, *, noise, steps, spacing, clip_denoised, model_kwargs, callback, progress,
       t_start, **options) -> x_0

- ``model(x, t, **model_kwargs)`` is the network (already wrapped for guidance or the fast path), called
  with timesteps of the diffusion it was trained on;
- ``diffusion`` is that full :class:`ddpm.diffusion.GaussianDiffusion`; a sampler that visits fewer
  steps respaces or re-discretises it itself;
- ``x`` is the starting noise x_T, shape (B, C, H, W);
- ``noise(t)`` returns the next standard-normal draw shaped like ``x``; ``t`` is the original-schedule
  code timestep of the step that asks (or None where a step has none). Only stochastic samplers call
  it, never for the last step. Sources draw per image (see :mod:`ddpm.sampling.noise`), so image i
  depends only on (seed, i);
- ``callback(info)``, when given, is called after every step with ``i`` (0-based step count), ``t``
  (original code timestep just left, or None), ``x`` (the new state) and ``pred_xstart`` (x̂0, or None
  where a step has none); a sampler whose network-call count is not known ahead (``nfe`` None, e.g.
  an adaptive ODE solver) adds ``nfe``, the calls made so far;
- ``t_start`` (samplers with ``supports_t_start``) starts the chain part-way, ``x`` being x_{t_start};
- ``options`` are the sampler's own settings, declared as :class:`Option` s and validated before the
  call (so samplers may trust them);
- a ``model`` may offer ``mean_shift`` = (unguided model, cond_fn) — classifier guidance does
  (:mod:`ddpm.sampling.classifier_guidance`). A sampler that forms a Gaussian mean μ may use it as
  Dhariwal & Nichol's Algorithm 1 (μ + Σ·cond_fn(x_t, t, **model_kwargs), as ``ddpm`` does); every
  other sampler simply calls ``model``, whose output is then the guided ε̂ (their Algorithm 2).

Adding a sampler: write ``sampling/<name>.py`` defining ``fn`` and a :class:`SamplerSpec`, then add one
line to :data:`SAMPLERS` below (see docs/extending.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ddpm.errors import ConfigError

# name -> "module:attribute" of its SamplerSpec; imported on first use, so listing names is cheap.
SAMPLERS: dict[str, str] = {
    "ddpm": "ddpm.sampling.ancestral:ANCESTRAL",
    "ddim": "ddpm.sampling.ddim:DDIM",
    "euler": "ddpm.sampling.euler:EULER",
    "euler-ancestral": "ddpm.sampling.euler:EULER_ANCESTRAL",
    "heun": "ddpm.sampling.euler:HEUN",
    "dpm-solver": "ddpm.sampling.dpm_solver:DPM_SOLVER",
    "dpmpp-2m": "ddpm.sampling.dpm_solver:DPMPP_2M",
    "dpmpp-2s": "ddpm.sampling.dpm_solver:DPMPP_2S",
    "dpmpp-3m": "ddpm.sampling.dpm_solver:DPMPP_3M",
    "unipc": "ddpm.sampling.unipc:UNIPC",
    "ode": "ddpm.sampling.ode:ODE",
    "pc": "ddpm.sampling.score_sde:PC",
    "langevin": "ddpm.sampling.score_sde:LANGEVIN",
    "consistency": "ddpm.sampling.consistency:CONSISTENCY",
}


@dataclass(frozen=True)
class Option:
    """One sampler-specific setting: its type, default, allowed range and help text."""

    name: str
    default: Any
    help: str
    kind: type = float
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    choices: tuple | None = None

    def check(self, value: Any, sampler: str) -> Any:
        """``value`` converted to this option's type, or ConfigError saying what is allowed."""
        label = f"{sampler} option {self.name}"
        if self.kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                value = value.lower() in ("true", "1")
            if not isinstance(value, bool):
                raise ConfigError(f"{label} must be true or false, got {value!r}")
            return value
        if self.kind in (int, float):
            try:
                if isinstance(value, bool):
                    raise ValueError
                converted = self.kind(value)
                if self.kind is int and converted != float(value):
                    raise ValueError
            except (TypeError, ValueError):
                raise ConfigError(f"{label} must be {'an integer' if self.kind is int else 'a number'}, "
                                  f"got {value!r}") from None
            if converted != converted or converted in (float("inf"), float("-inf")):
                raise ConfigError(f"{label} must be finite, got {value!r}")
            if (self.low is not None and converted < self.low) or (self.high is not None and converted > self.high):
                low = "-inf" if self.low is None else f"{self.low:g}"
                high = "inf" if self.high is None else f"{self.high:g}"
                raise ConfigError(f"{label} must be in [{low}, {high}], got {value!r}")
            return converted
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{label} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        return value


def _never(options: Mapping[str, Any]) -> bool:
    return False


@dataclass(frozen=True)
class SamplerSpec:
    """A registry entry: the sampler function and what the rest of the tool needs to know about it."""

    name: str
    fn: Callable
    summary: str  # one line, shown by --help and docs
    options: tuple[Option, ...] = ()
    spacings: tuple[str, ...] = ("uniform", "quadratic", "even")  # first = default
    # Whether a run with these (resolved) options draws no noise after x_T.
    deterministic: Callable[[Mapping[str, Any]], bool] = _never
    # How many step-noise draws a run makes, (T, steps, spacing, options) -> n; None lets the noise
    # source draw lazily. Knowing it lets per-image noise be drawn in blocks.
    noise_draws: Callable[[int, int | None, str, Mapping[str, Any]], int | None] | None = None
    # Network evaluations per image, (T, steps, spacing, options) -> n (steps None: the sampler's default);
    # None: not known before the run (adaptive solvers), which then report ``nfe`` in their callbacks.
    nfe: Callable[[int, int | None, str, Mapping[str, Any]], int | None] = lambda T, steps, spacing, options: steps or T
    supports_t_start: bool = False
    references: str = ""  # the paper(s) it implements, for docs
    option_map: dict = field(default_factory=dict, compare=False)  # filled in __post_init__

    def __post_init__(self):
        object.__setattr__(self, "option_map", {o.name: o for o in self.options})

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given``, each value checked; unknown names are an error."""
        unknown = sorted(set(given) - set(self.option_map))
        if unknown:
            known = ", ".join(self.option_map) or "none"
            raise ConfigError(f"sampler {self.name!r} has no option {', '.join(unknown)} (its options: {known})")
        return {name: opt.check(given[name], self.name) if name in given else opt.default
                for name, opt in self.option_map.items()}


@dataclass(frozen=True)
class ResolvedSampler:
    """A :class:`ddpm.config.SamplerConfig` checked against one model: ready to run."""

    spec: SamplerSpec
    steps: int | None
    spacing: str
    guidance: float
    clip_denoised: bool
    options: dict

    @property
    def name(self) -> str:
        return self.spec.name

    def deterministic(self) -> bool:
        return self.spec.deterministic(self.options)

    def noise_draws(self, num_timesteps: int) -> int | None:
        if self.deterministic():
            return 0
        fn = self.spec.noise_draws
        return None if fn is None else fn(num_timesteps, self.steps, self.spacing, self.options)

    def nfe(self, num_timesteps: int) -> int | None:
        """Network evaluations per image (guidance doubles the batch, not the count); None: adaptive."""
        return self.spec.nfe(num_timesteps, self.steps, self.spacing, self.options)

    def __call__(self, model, diffusion, x, *, noise, model_kwargs: dict | None = None, callback=None,
                 progress: bool = False, t_start: int | None = None):
        return self.spec.fn(model, diffusion, x, noise=noise, steps=self.steps, spacing=self.spacing,
                            clip_denoised=self.clip_denoised, model_kwargs=model_kwargs, callback=callback,
                            progress=progress, t_start=t_start, **self.options)

    def describe(self) -> str:
        """e.g. ``ddim, 50 steps (uniform), eta=0`` — for summaries and reports."""
        steps = "all steps" if self.steps is None else f"{self.steps} steps"
        parts = [f"{self.name}, {steps} ({self.spacing})"]
        parts += [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.options.items()]
        if self.guidance:
            parts.append(f"guidance w={self.guidance:g}")
        if not self.clip_denoised:
            parts.append("no clipping")
        return ", ".join(parts)


def resolve_sampler(config, num_timesteps: int, *, num_classes: int | None = None,
                    labels: bool = False, t_start: int | None = None) -> ResolvedSampler:
    """Check a :class:`ddpm.config.SamplerConfig` against a model, once, with one-line errors.

    ``num_classes``: the model's class count (None: unconditional); ``labels``: whether class labels
    are given (guidance needs them); ``t_start``: a part-way start that the sampler must support.
    """
    spec = get_sampler(config.sampler)
    T = int(num_timesteps)
    steps = config.steps
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
            raise ConfigError(f"steps must be an integer between 1 and the model's {T} timesteps, got {steps!r}")
    spacing = config.spacing if config.spacing is not None else spec.spacings[0]
    if spacing not in spec.spacings:
        raise ConfigError(f"unknown spacing {spacing!r} for sampler {spec.name!r}; choose one of "
                          f"{', '.join(spec.spacings)}")
    try:
        guidance = float(config.guidance)
    except (TypeError, ValueError):
        raise ConfigError(f"guidance must be a number ≥ 0, got {config.guidance!r}") from None
    if not guidance >= 0 or guidance == float("inf"):
        raise ConfigError(f"guidance must be a finite number ≥ 0 (0 = conditional model alone), got {guidance}")
    if guidance > 0:
        if num_classes is None:
            raise ConfigError("guidance needs a class-conditional model (model.num_classes); "
                              "this one is unconditional, drop --guidance")
        if not labels:
            raise ConfigError("guidance needs class labels: pass --class C (or class_labels=...)")
    if t_start is not None and not spec.supports_t_start:
        raise ConfigError(f"sampler {spec.name!r} cannot start part-way through the chain; use ddpm")
    try:
        options = spec.resolve_options(dict(config.options or {}))
    except ConfigError as e:
        unknown = sorted(set(config.options or {}) - set(spec.option_map))
        if unknown:
            owners = [n for n in SAMPLERS if unknown[0] in get_sampler(n).option_map]
            if owners:
                raise ConfigError(f"{unknown[0]} is an option of the {', '.join(owners)} sampler"
                                  f"{'s' if len(owners) > 1 else ''}, not of {spec.name!r}; "
                                  f"choose --sampler {owners[0]} or drop it") from None
        raise e from None
    return ResolvedSampler(spec, steps, spacing, guidance, bool(config.clip_denoised), options)


def sampler_names() -> list[str]:
    """Every registered sampler name, in registry order (the CLI's --sampler choices)."""
    return list(SAMPLERS)


def get_sampler(name: str) -> SamplerSpec:
    """The :class:`SamplerSpec` called ``name``; ConfigError listing the choices for an unknown one."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    module, attr = SAMPLERS[name].split(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["SAMPLERS", "Option", "SamplerSpec", "ResolvedSampler", "get_sampler", "resolve_sampler",
           "sampler_names"]
