"""The Gaussian diffusion of Ho et al. (2020): forward process, posterior, reverse-process
parameterisations, training losses, the variational bound in bits/dim, and ancestral sampling.

A port of the authors' ``diffusion_utils_2.py::GaussianDiffusion2`` (option names and constants kept)
with improved DDPM's ``learned_range`` variance and ``hybrid`` loss (Nichol & Dhariwal 2021, §3.1,
Eq. 15–16). It knows nothing about the network: ``model`` is any callable
``model(x_t, t, **model_kwargs)`` returning a tensor shaped like ``x_t`` (twice the channels for
learned variances: mean part first, variance part second).

Conventions: tensors are NCHW (any shape ``(B, ...)`` works); ``t`` is a LongTensor ``(B,)`` of 0-based
code timesteps, ``t = 0`` being the paper's ``t = 1``. Tables are float64 numpy attributes, gathered and
cast at use to float64 for float64 inputs and to float32 otherwise (low-precision tables would lose
constants such as ᾱ_T ≈ 4e-5), with the cast copies cached per device.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from ddpm.errors import ConfigError
from ddpm.likelihoods import (
    LN2,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)
from ddpm.schedules import compute_tables

MEAN_TYPES = ("eps", "xstart", "xprev", "v")
VAR_TYPES = ("fixedlarge", "fixedsmall", "learned", "learned_range")
LOSS_TYPES = ("mse", "kl", "hybrid")
LEARNED_VARS = ("learned", "learned_range")

# Improved DDPM's λ = 0.001 on L_vlb: with one sampled term standing for T of them, λ·T·L_t = (T/1000)·L_t.
HYBRID_VB_SCALE = 1000.0

NoiseLike = torch.Tensor | Callable[[int], torch.Tensor] | None


class GaussianDiffusion:
    """Forward/reverse diffusion with the authors' options.

    Args:
        betas: β_1..β_T (any 1-D array-like in (0, 1]).
        mean_type: what the network predicts — ``eps`` (ε, the paper's choice), ``xstart`` (x0),
            ``xprev`` (the posterior mean μ̃ directly) or ``v`` (v = √ᾱ_t ε − √(1−ᾱ_t) x0, the
            "velocity" of Salimans & Ho 2022, §4 and App. D, used by progressive distillation).
        var_type: ``fixedlarge`` (σ² = β, β̃_1 at t = 0; the CIFAR-10 default), ``fixedsmall``
            (σ² = β̃), ``learned`` (network outputs log σ²) or ``learned_range`` (network outputs v,
            log σ² = (v+1)/2·log β + (1−(v+1)/2)·log β̃).
        loss_type: ``mse`` (L_simple for eps), ``kl`` (the VLB term of the sampled t, bits/dim) or
            ``hybrid`` (mse + T/1000 · VLB term with the mean frozen; learned variances only).
    """

    def __init__(self, betas, mean_type: str = "eps", var_type: str = "fixedlarge", loss_type: str = "mse"):
        _check_choice("mean_type", mean_type, MEAN_TYPES)
        _check_choice("var_type", var_type, VAR_TYPES)
        _check_choice("loss_type", loss_type, LOSS_TYPES)
        if loss_type == "mse" and var_type in LEARNED_VARS:
            raise ConfigError(
                f"loss_type 'mse' cannot train var_type {var_type!r} (the variance gets no gradient); "
                "use loss_type 'hybrid' or 'kl', or a fixed var_type (fixedlarge/fixedsmall)"
            )
        if loss_type == "hybrid" and var_type not in LEARNED_VARS:
            raise ConfigError(
                f"loss_type 'hybrid' needs a learned variance (var_type learned or learned_range), "
                f"got {var_type!r}; with a fixed variance use loss_type 'mse' or 'kl'"
            )
        self.mean_type = mean_type
        self.var_type = var_type
        self.loss_type = loss_type
        tables = compute_tables(betas)
        self._table_names = tuple(tables)
        for name, arr in tables.items():
            setattr(self, name, arr)
        self.num_timesteps = int(self.betas.shape[0])
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}
        self._last: tuple | None = None

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(T={self.num_timesteps}, mean_type={self.mean_type!r}, "
            f"var_type={self.var_type!r}, loss_type={self.loss_type!r})"
        )

    # ------------------------------------------------------------------ tables
    @property
    def learns_variance(self) -> bool:
        """True when the model must output 2C channels (mean part, variance part)."""
        return self.var_type in LEARNED_VARS

    def add_tables(self, tables: dict) -> None:
        """Register float64 tables derived from this schedule (e.g. a sampler's per-step coefficients)
        so that :meth:`gather` serves them, cast and cached like the built-in ones. Names already
        present are kept as they are."""
        new = {k: np.asarray(v, dtype=np.float64) for k, v in tables.items() if k not in self._table_names}
        if not new:
            return
        for name, arr in new.items():
            setattr(self, name, arr)
        self._table_names += tuple(new)
        self._cache.clear()
        self._last = None

    def tables(self, device, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Every table as a torch tensor on ``device`` in ``dtype`` (built once, then cached)."""
        key = (torch.device(device), dtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = {
                name: torch.as_tensor(getattr(self, name), dtype=torch.float64).to(device=key[0], dtype=dtype)
                for name in self._table_names
            }
            self._cache[key] = cached
        return cached

    def gather(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Table ``name`` at timesteps ``t``, shaped ``(B, 1, ..., 1)`` to broadcast against ``x``."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        # sampling loops call this a dozen times per step: skip the dict building for repeat keys
        last = self._last
        if last is not None and last[1] is dtype and last[0] == x.device:
            table = last[2][name]
        else:
            tabs = self.tables(x.device, dtype)
            self._last = (x.device, dtype, tabs)
            table = tabs[name]
        return table[t].view(t.shape[0], *((1,) * (x.ndim - 1)))

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0) = N(√ᾱ_t x0, (1−ᾱ_t) I)."""
        t = self._timesteps(t, x0)
        mean = self.gather("sqrt_alphas_cumprod", t, x0) * x0
        variance = self.gather("one_minus_alphas_cumprod", t, x0).expand_as(x0)
        log_variance = self.gather("log_one_minus_alphas_cumprod", t, x0).expand_as(x0)
        return mean, variance, log_variance

    def q_sample(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0): √ᾱ_t x0 + √(1−ᾱ_t) ε, with ε = ``noise`` or drawn from ``generator``."""
        t = self._timesteps(t, x0)
        if noise is None:
            noise = randn_like(x0, generator)
        return self.gather("sqrt_alphas_cumprod", t, x0) * x0 + self.gather(
            "sqrt_one_minus_alphas_cumprod", t, x0
        ) * noise

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of the posterior q(x_{t−1} | x_t, x_0)."""
        t = self._timesteps(t, x_t)
        mean = self._posterior_mean(x0, x_t, t)
        variance = self.gather("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self.gather("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    def _posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.gather("posterior_mean_coef1", t, x_t) * x0 + self.gather("posterior_mean_coef2", t, x_t) * x_t

    # ------------------------------------------------------------------ x0 / ε conversions
    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε."""
        return self.gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self.gather(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        ) * eps

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        """ε̂ = (√(1/ᾱ_t) x_t − x̂0) / √(1/ᾱ_t − 1), the inverse of :meth:`predict_xstart_from_eps`."""
        return (self.gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart) / self.gather(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def predict_xstart_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x̂0 = √ᾱ_t x_t − √(1−ᾱ_t) v (Salimans & Ho 2022, App. D: x = α z − σ v with α² + σ² = 1)."""
        return self.gather("sqrt_alphas_cumprod", t, x_t) * x_t - self.gather(
            "sqrt_one_minus_alphas_cumprod", t, x_t
        ) * v

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1−ᾱ_t) x0, the training target of a ``v`` model."""
        return self.gather("sqrt_alphas_cumprod", t, x0) * noise - self.gather(
            "sqrt_one_minus_alphas_cumprod", t, x0
        ) * x0

    def predict_xstart_from_xprev(self, x_t: torch.Tensor, t: torch.Tensor, xprev: torch.Tensor) -> torch.Tensor:
        """x̂0 from a posterior mean: (μ − coef2 x_t) / coef1."""
        return self.gather("xprev_coef1", t, x_t) * xprev - self.gather("xprev_coef2", t, x_t) * x_t

    # improved-diffusion's private names, for code ported from it
    _predict_xstart_from_eps = predict_xstart_from_eps
    _predict_eps_from_xstart = predict_eps_from_xstart
    _predict_xstart_from_xprev = predict_xstart_from_xprev

    # ------------------------------------------------------------------ reverse process
    def model_output(self, model, x_t: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None = None) -> torch.Tensor:
        """Call ``model(x_t, t, **model_kwargs)`` and check its channel count.

        Every model evaluation goes through here, so a subclass (e.g. a respaced diffusion mapping
        its timesteps to the original ones) only needs to override this method.
        """
        out = model(x_t, t, **(model_kwargs or {}))
        self._check_output(out, x_t)
        return out

    def _check_output(self, out: torch.Tensor, x_t: torch.Tensor) -> None:
        c = x_t.shape[1]
        want = 2 * c if self.learns_variance else c
        if out.shape[0] != x_t.shape[0] or out.shape[1] != want or out.shape[2:] != x_t.shape[2:]:
            raise ConfigError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}, but var_type "
                f"{self.var_type!r} needs {want} output channels; set the model's out_channels to {want}"
            )

    def p_mean_variance(
        self,
        model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs: dict | None = None,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_output: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The reverse step p(x_{t−1} | x_t): dict with ``mean``, ``variance``, ``log_variance``,
        ``pred_xstart`` (x̂0, clipped to [-1, 1] when ``clip_denoised``) and ``model_output``.

        ``denoised_fn`` (applied to x̂0 before clipping) and a precomputed ``model_output`` are
        optional extras, as in improved-diffusion.
        """
        t = self._timesteps(t, x_t)
        if model_output is None:
            model_output = self.model_output(model, x_t, t, model_kwargs)
        else:
            self._check_output(model_output, x_t)

        if self.learns_variance:
            out, v = torch.split(model_output, x_t.shape[1], dim=1)
            if self.var_type == "learned":
                log_variance = v
            else:
                frac = (v + 1.0) / 2.0
                log_variance = frac * self.gather("log_betas", t, x_t) + (1.0 - frac) * self.gather(
                    "posterior_log_variance_clipped", t, x_t
                )
            variance = torch.exp(log_variance)
        else:
            out = model_output
            if self.var_type == "fixedlarge":
                var_name, logvar_name = "fixedlarge_variance", "fixedlarge_log_variance"
            else:
                var_name, logvar_name = "posterior_variance", "posterior_log_variance_clipped"
            variance = self.gather(var_name, t, x_t).expand_as(x_t)
            log_variance = self.gather(logvar_name, t, x_t).expand_as(x_t)

        def process(x: torch.Tensor) -> torch.Tensor:
            if denoised_fn is not None:
                x = denoised_fn(x)
            return x.clamp(-1.0, 1.0) if clip_denoised else x

        if self.mean_type == "xprev":
            pred_xstart = process(self.predict_xstart_from_xprev(x_t, t, out))
            mean = out  # the raw prediction; x̂0 is only reported
        else:
            if self.mean_type == "xstart":
                pred_xstart = process(out)
            elif self.mean_type == "v":
                pred_xstart = process(self.predict_xstart_from_v(x_t, t, out))
            else:
                pred_xstart = process(self.predict_xstart_from_eps(x_t, t, out))
            mean = self._posterior_mean(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "model_output": model_output,
        }

    # ------------------------------------------------------------------ losses and the bound
    def training_losses(
        self,
        model,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        model_kwargs: dict | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example losses (shape (B,)) at timesteps ``t`` for x_t = q_sample(x0, t, noise).

        Returns ``loss`` plus its parts: ``mse`` (mean over dims of (target − output)², for mse and
        hybrid) and ``vb`` (the VLB term in bits/dim, for kl and hybrid; in hybrid already scaled by
        T/1000 and computed with the mean output detached so it trains the variance only).
        """
        t = self._timesteps(t, x0)
        if noise is None:
            noise = randn_like(x0, generator)
        x_t = self.q_sample(x0, t, noise=noise)
        terms: dict[str, torch.Tensor] = {}

        if self.loss_type == "kl":
            terms["vb"] = self.vb_terms_bpd(model, x0, x_t, t, clip_denoised=False, model_kwargs=model_kwargs)["output"]
            terms["loss"] = terms["vb"]
            return terms

        model_output = self.model_output(model, x_t, t, model_kwargs)
        if self.loss_type == "hybrid":
            out, v = torch.split(model_output, x0.shape[1], dim=1)
            frozen = torch.cat([out.detach(), v], dim=1)  # the VLB term must not move the mean
            vb = self.vb_terms_bpd(None, x0, x_t, t, clip_denoised=False, model_output=frozen)["output"]
            terms["vb"] = vb * (self.num_timesteps / HYBRID_VB_SCALE)
        else:
            out = model_output

        if self.mean_type == "eps":
            target = noise
        elif self.mean_type == "xstart":
            target = x0
        elif self.mean_type == "v":
            target = self.v_target(x0, t, noise)
        else:
            target = self.q_posterior_mean_variance(x0, x_t, t)[0]
        terms["mse"] = mean_flat((target - out) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def vb_terms_bpd(
        self,
        model,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs: dict | None = None,
        model_output: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One term of the variational bound, in bits/dim: the decoder NLL −log p(x0|x1) where t = 0,
        KL(q(x_{t−1}|x_t,x0) ‖ p(x_{t−1}|x_t)) elsewhere. Dict with ``output`` (B,) and ``pred_xstart``.
        """
        t = self._timesteps(t, x_t)
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(
            model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs, model_output=model_output
        )
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / LN2
        nll = -discretized_gaussian_log_likelihood(x0, means=out["mean"], log_scales=0.5 * out["log_variance"])
        nll = mean_flat(nll) / LN2
        return {"output": torch.where(t == 0, nll, kl), "pred_xstart": out["pred_xstart"]}

    _vb_terms_bpd = vb_terms_bpd

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x0) ‖ N(0, I)) in bits/dim, shape (B,). It has no parameters to learn."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, dtype=torch.long, device=x0.device)
        mean, _, log_variance = self.q_mean_variance(x0, t)
        return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / LN2

    _prior_bpd = prior_bpd

    @torch.no_grad()
    def calc_bpd_loop(
        self,
        model,
        x0: torch.Tensor,
        clip_denoised: bool = True,
        noise: torch.Tensor | Callable[[int], torch.Tensor] | torch.Generator | None = None,
        model_kwargs: dict | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The full variational bound of x0 in bits/dim, one fresh x_t per timestep (Ho et al. 2020, Eq. 5).

        ``noise``: a (T, B, ...) tensor whose ``noise[t]`` draws x_t, a callable ``t -> (B, ...)``
        tensor, or a ``torch.Generator`` (same as passing ``generator``); default: fresh normal draws.
        Returns ``total_bpd`` (B,) = Σ_t ``terms_bpd`` (B, T) + ``prior_bpd`` (B,); ``mse`` (B, T), the
        mean squared error of the (clipped, if ``clip_denoised``) x̂0 at each t, as the authors; and
        ``eps_mse`` (B, T), the same for the ε implied by that x̂0 (improved-diffusion's ``mse``).
        """
        if isinstance(noise, torch.Generator):
            noise, generator = None, noise
        T = self.num_timesteps
        terms, mses, eps_mses = [None] * T, [None] * T, [None] * T
        for i in _progress(range(T - 1, -1, -1), progress, "bpd"):
            t = torch.full((x0.shape[0],), i, dtype=torch.long, device=x0.device)
            eps = noise_at(noise, i, x0, generator)
            x_t = self.q_sample(x0, t, noise=eps)
            out = self.vb_terms_bpd(model, x0, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
            terms[i] = out["output"]
            mses[i] = mean_flat((out["pred_xstart"] - x0) ** 2)
            eps_mses[i] = mean_flat((self.predict_eps_from_xstart(x_t, t, out["pred_xstart"]) - eps) ** 2)
        terms_bpd = torch.stack(terms, dim=1)
        prior = self.prior_bpd(x0)
        return {
            "total_bpd": terms_bpd.sum(dim=1) + prior,
            "terms_bpd": terms_bpd,
            "prior_bpd": prior,
            "mse": torch.stack(mses, dim=1),
            "eps_mse": torch.stack(eps_mses, dim=1),
        }

    # ------------------------------------------------------------------ sampling (Algorithm 2)
    def original_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps the network sees for this chain's ``t`` (a respaced chain maps them)."""
        return t

    def condition_mean(self, cond_fn, p_mean_var: dict, x_t: torch.Tensor, t: torch.Tensor,
                       model_kwargs: dict | None = None) -> torch.Tensor:
        """μ + Σ·g with g = ``cond_fn(x_t, t, **model_kwargs)`` evaluated at x_t and the network's
        timesteps (Sohl-Dickstein et al. 2015; Dhariwal & Nichol 2021, Algorithm 1)."""
        gradient = cond_fn(x_t, self.original_timesteps(t), **(model_kwargs or {}))
        return p_mean_var["mean"] + p_mean_var["variance"] * gradient

    def p_sample(
        self,
        model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        model_kwargs: dict | None = None,
        generator: torch.Generator | None = None,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: Callable[..., torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One ancestral step x_t -> x_{t−1} = μθ + σ z, with z masked to 0 where t = 0.

        ``cond_fn(x_t, t, **model_kwargs)`` (optional) is a gradient g of a log-probability, e.g.
        s·∇ log p_φ(y | x_t) of a classifier; the mean becomes μθ + Σ·g (:meth:`condition_mean`).
        Returns ``sample``, ``pred_xstart``, ``mean`` and ``log_variance``.
        """
        t = self._timesteps(t, x_t)
        out = self.p_mean_variance(
            model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs, denoised_fn=denoised_fn
        )
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x_t, t, model_kwargs)
        if noise is None:
            noise = randn_like(x_t, generator)
        nonzero = (t != 0).to(out["mean"].dtype).reshape(-1, *((1,) * (x_t.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {
            "sample": sample,
            "pred_xstart": out["pred_xstart"],
            "mean": out["mean"],
            "log_variance": out["log_variance"],
        }

    def p_sample_loop_progressive(
        self,
        model,
        shape,
        noise: torch.Tensor | None = None,
        step_noise: NoiseLike = None,
        clip_denoised: bool = True,
        progress: bool = False,
        model_kwargs: dict | None = None,
        generator: torch.Generator | None = None,
        device=None,
        t_start: int | None = None,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: Callable[..., torch.Tensor] | None = None,
    ) -> Iterator[dict]:
        """Run Algorithm 2, yielding after each step a dict with ``t`` (the code step just taken, an
        int from ``t_start`` down to 0), ``sample`` (its output x_{t−1}; the last one is x0) and
        ``pred_xstart``.

        ``noise`` is the chain's starting point x_T (drawn from ``generator`` when None);
        ``step_noise[t]`` (a (T, B, ...) tensor or a callable ``t -> tensor``) is the noise of the
        step taken at code step t (the step at t = 0 uses none). ``t_start`` starts the chain
        part-way: ``noise`` is then the input of step ``t_start`` (x_{t_start} in code indexing).
        ``cond_fn`` shifts every step's mean (:meth:`p_sample`). Runs without autograd.
        """
        t_start = self.num_timesteps - 1 if t_start is None else int(t_start)
        if not 0 <= t_start < self.num_timesteps:
            raise ConfigError(f"t_start must be in [0, {self.num_timesteps - 1}], got {t_start}")
        if noise is not None:
            x = noise
        else:
            if device is None:
                device = model_device(model)
            x = randn(tuple(shape), generator, device)
        batch = x.shape[0]
        zero = x.new_zeros(())
        for i in _progress(range(t_start, -1, -1), progress, "sampling"):
            t = torch.full((batch,), i, dtype=torch.long, device=x.device)
            z = zero if i == 0 else noise_at(step_noise, i, x, generator)
            with torch.no_grad():
                out = self.p_sample(
                    model, x, t, noise=z, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                    denoised_fn=denoised_fn, cond_fn=cond_fn,
                )
            x = out["sample"]
            yield {"t": i, "sample": x, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(
        self,
        model,
        shape,
        noise: torch.Tensor | None = None,
        step_noise: NoiseLike = None,
        clip_denoised: bool = True,
        progress: bool = False,
        model_kwargs: dict | None = None,
        generator: torch.Generator | None = None,
        device=None,
        t_start: int | None = None,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Algorithm 2: x_T ~ N(0, I), T ancestral steps, returns x0 (in [-1, 1] when clipping).

        Arguments as :meth:`p_sample_loop_progressive`. With the same ``noise`` and ``step_noise``
        (or the same generator state) the result is identical.
        """
        final = None
        for final in self.p_sample_loop_progressive(
            model, shape, noise=noise, step_noise=step_noise, clip_denoised=clip_denoised, progress=progress,
            model_kwargs=model_kwargs, generator=generator, device=device, t_start=t_start,
            denoised_fn=denoised_fn, cond_fn=cond_fn,
        ):
            pass
        return final["sample"]

    # ------------------------------------------------------------------ helpers
    def _timesteps(self, t, x: torch.Tensor) -> torch.Tensor:
        """``t`` as a LongTensor (B,) on x's device; a Python int is broadcast over the batch."""
        if isinstance(t, torch.Tensor):
            if t.ndim == 0:
                t = t.expand(x.shape[0])
            return t.to(device=x.device, dtype=torch.long)
        return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)


def _check_choice(label: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {label} {value!r}; choose one of {', '.join(allowed)}")


def randn(shape, generator: torch.Generator | None, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn from ``generator`` on its own device
    (so a CPU generator gives the same numbers whatever device the result lives on)."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    z = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
    return z if device is None else z.to(device)


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (float32 unless x is float64), from ``generator``."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return randn(x.shape, generator, x.device, dtype).to(x.dtype)


def noise_at(noise, i: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise for code step ``i``: ``noise[i]`` of a tensor, ``noise(i)`` of a callable, else a draw."""
    if noise is None:
        return randn_like(like, generator)
    if callable(noise) and not isinstance(noise, torch.Tensor):
        z = noise(i)
    else:
        z = noise[i]
    return z.to(device=like.device, dtype=like.dtype)


def model_device(model) -> torch.device:
    """The device of ``model``'s first parameter, looking through wrappers that keep the network in
    ``.model`` or ``.module`` (timestep maps, guidance, DDP); CPU for parameter-less callables."""
    for _ in range(8):
        params = getattr(model, "parameters", None)
        if callable(params):
            for p in params():
                return p.device
        inner = getattr(model, "model", None) or getattr(model, "module", None)
        if inner is None:
            break
        model = inner
    return torch.device("cpu")


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=len(it))


__all__ = ["GaussianDiffusion", "MEAN_TYPES", "VAR_TYPES", "LOSS_TYPES", "randn", "randn_like", "model_device"]
