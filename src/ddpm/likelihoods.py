"""Pure likelihood functions: Gaussian KL, the discretized Gaussian decoder, bits/dim (Ho et al. 2020, Eq. 5 and 13).

All functions are elementwise in nats unless their name says otherwise; ``mean_flat`` followed by a
division by ln 2 turns them into the bits/dim the paper reports.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)

# The decoder's bins: 256 levels mapped to [-1, 1] are 2/255 apart, so a bin is ±1/255 around a level;
# the outermost bins extend to ±∞ (pixel values 0 and 255 sit below −0.999 / above 0.999).
BIN_HALF_WIDTH = 1.0 / 255.0
EDGE = 0.999
LOG_FLOOR = 1e-12


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first (the authors' ``meanflat``)."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats.

    Arguments broadcast; at least one must be a tensor (plain numbers, e.g. the standard-normal
    prior's 0, 0, are converted to its dtype and device).
    """
    ref = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl needs at least one tensor argument")
    mean1, logvar1, mean2, logvar2 = (
        a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=ref.dtype, device=ref.device)
        for a in (mean1, logvar1, mean2, logvar2)
    )
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The authors' tanh approximation of the standard normal CDF (not erf; kept for exact parity)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x) in nats, elementwise, of data ``x`` in [-1, 1] (256 levels) under a Gaussian
    N(means, exp(log_scales)²) integrated over each level's bin (Ho et al. 2020, Eq. 13).

    ``log_scales`` is the log standard deviation (half the log-variance). The outer bins are open
    (x < -0.999 integrates from -∞, x > 0.999 to +∞), and every probability is floored at 1e-12
    before the log, as in the authors' code. Arguments broadcast.
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + BIN_HALF_WIDTH))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - BIN_HALF_WIDTH))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=LOG_FLOOR))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=LOG_FLOOR))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=LOG_FLOOR))
    return torch.where(
        x < -EDGE, log_cdf_plus, torch.where(x > EDGE, log_one_minus_cdf_min, log_cdf_delta)
    )


def to_bits_per_dim(nats: torch.Tensor) -> torch.Tensor:
    """Per-example bits/dim from elementwise nats: mean over non-batch dims, divided by ln 2."""
    return mean_flat(nats) / LN2
