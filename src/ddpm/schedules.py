"""Variance schedules β_1..β_T and the float64 tables derived from them (Ho et al. 2020, §2 and §4;
cosine: Nichol & Dhariwal 2021, §3.2, Eq. 17).

Everything here is numpy float64, as in the authors' code ("computations here in float64 for
accuracy"); :class:`ddpm.diffusion.GaussianDiffusion` casts the tables to the working dtype at use.
Index convention: array index ``i`` (0-based "code" timestep) is the paper's step ``t = i + 1``.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import numpy as np

from ddpm.errors import ConfigError

SCHEDULES = ("linear", "quad", "const", "jsd", "warmup10", "warmup50", "cosine")

# Improved DDPM (Nichol & Dhariwal 2021): offset s keeps √β_0 just below the pixel bin size, and β is
# capped so that the last step is not a singular (β = 1) one.
COSINE_S = 0.008
COSINE_MAX_BETA = 0.999


def get_beta_schedule(
    name: str,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    num_timesteps: int = 1000,
) -> np.ndarray:
    """The β schedule called ``name`` as a float64 array of length ``num_timesteps``.

    Names follow the authors' ``get_beta_schedule``: ``linear`` (the paper's, 1e-4 -> 0.02),
    ``quad`` (linear in √β), ``const`` (β_end everywhere), ``jsd`` (1/T, 1/(T-1), ..., 1),
    ``warmup10`` / ``warmup50`` (linear over the first 10% / 50% of steps, then β_end), plus
    improved-DDPM's ``cosine`` (ignores ``beta_start``/``beta_end``). Unlike improved-diffusion,
    ``linear`` is *not* rescaled by 1000/T: it is the authors' plain ``linspace``.

    Raises :class:`ConfigError` for an unknown name, a non-positive length, or any β outside (0, 1].
    """
    if name not in SCHEDULES:
        raise ConfigError(f"unknown beta schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ConfigError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    T = int(num_timesteps)
    if name not in ("jsd", "cosine"):
        for label, b in (("beta_start", beta_start), ("beta_end", beta_end)):
            if isinstance(b, bool) or not (isinstance(b, numbers.Real) and 0.0 < b <= 1.0):
                raise ConfigError(f"{label} must lie in (0, 1], got {b!r}")

    if name == "linear":
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif name == "quad":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    elif name == "const":
        betas = beta_end * np.ones(T, dtype=np.float64)
    elif name == "jsd":
        betas = 1.0 / np.linspace(T, 1, T, dtype=np.float64)
    elif name == "warmup10":
        betas = _warmup_beta(beta_start, beta_end, T, 0.1)
    elif name == "warmup50":
        betas = _warmup_beta(beta_start, beta_end, T, 0.5)
    else:  # cosine
        betas = betas_for_alpha_bar(T, cosine_alpha_bar, COSINE_MAX_BETA)
    check_betas(betas)
    return betas


def _warmup_beta(beta_start: float, beta_end: float, T: int, frac: float) -> np.ndarray:
    betas = beta_end * np.ones(T, dtype=np.float64)
    warmup = int(T * frac)
    betas[:warmup] = np.linspace(beta_start, beta_end, warmup, dtype=np.float64)
    return betas


def cosine_alpha_bar(tau: float, s: float = COSINE_S) -> float:
    """Improved-DDPM's ᾱ(τ) = cos²((τ + s)/(1 + s) · π/2) for τ ∈ [0, 1] (not divided by ᾱ(0))."""
    return math.cos((tau + s) / (1 + s) * math.pi / 2) ** 2


def betas_for_alpha_bar(T: int, alpha_bar: Callable[[float], float], max_beta: float = COSINE_MAX_BETA) -> np.ndarray:
    """β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta): discretise a continuous ᾱ(τ) into T steps."""
    return np.array(
        [min(1.0 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)],
        dtype=np.float64,
    )


def check_betas(betas) -> np.ndarray:
    """``betas`` as a 1-D float64 array, or :class:`ConfigError` if empty, non-finite or outside (0, 1]."""
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 1 or b.size == 0:
        raise ConfigError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
    if not np.all(np.isfinite(b)) or not (np.all(b > 0) and np.all(b <= 1)):
        raise ConfigError(
            f"every beta must lie in (0, 1]; got min {np.nanmin(b):.4g}, max {np.nanmax(b):.4g} — "
            "check beta_start/beta_end"
        )
    return b


def compute_tables(betas) -> dict[str, np.ndarray]:
    """All float64 arrays the diffusion needs, from β (Ho et al. 2020, Eq. 4, 6–7; Nichol & Dhariwal
    2021, Eq. 15).

    Keys: ``betas, alphas, alphas_cumprod, alphas_cumprod_prev, alphas_cumprod_next,
    sqrt_alphas_cumprod, sqrt_alphas_cumprod_prev, sqrt_alphas_cumprod_next (DDIM),
    sqrt_one_minus_alphas_cumprod_next (DDIM inversion), one_minus_alphas_cumprod, sqrt_one_minus_alphas_cumprod, log_one_minus_alphas_cumprod,
    sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod, posterior_variance,
    posterior_log_variance_clipped, posterior_mean_coef1, posterior_mean_coef2,
    fixedlarge_variance, fixedlarge_log_variance, log_betas, xprev_coef1, xprev_coef2``.

    ``posterior_log_variance_clipped`` replaces the zero β̃ at index 0 by β̃[1] before the log (the
    authors' ``GaussianDiffusion2``); ``fixedlarge_*`` use ``append(β̃[1], β[1:])`` "to get a better
    decoder log likelihood". With a single step (T = 1) there is no β̃[1]; β[0] stands in for it.
    """
    b = check_betas(betas)
    T = b.shape[0]
    alphas = 1.0 - b
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    ac_next = np.append(ac[1:], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # jsd ends with β = 1, i.e. ᾱ_T = 0
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        first = post_var[1] if T > 1 else b[0]
        post_var_clipped = np.append(first, post_var[1:])
        large_var = np.append(first, b[1:])
        coef1 = b * np.sqrt(ac_prev) / (1.0 - ac)
        coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
        tables = {
            "betas": b,
            "alphas": alphas,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "alphas_cumprod_next": ac_next,
            "sqrt_alphas_cumprod": np.sqrt(ac),
            "sqrt_alphas_cumprod_prev": np.sqrt(ac_prev),
            "sqrt_alphas_cumprod_next": np.sqrt(ac_next),
            "sqrt_one_minus_alphas_cumprod_next": np.sqrt(1.0 - ac_next),
            "one_minus_alphas_cumprod": 1.0 - ac,
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": np.log(post_var_clipped),
            "posterior_mean_coef1": coef1,
            "posterior_mean_coef2": coef2,
            "fixedlarge_variance": large_var,
            "fixedlarge_log_variance": np.log(large_var),
            "log_betas": np.log(b),
            # x̂0 from a predicted posterior mean: x̂0 = μ / coef1 − (coef2 / coef1) x_t
            "xprev_coef1": 1.0 / coef1,
            "xprev_coef2": coef2 / coef1,
        }
    return tables
