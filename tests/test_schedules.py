"""β schedules and derived tables against numbers computed from Ho et al. 2020 §4's linear schedule and Nichol & Dhariwal 2021 Eq. 17."""

import math

import numpy as np
import pytest

from ddpm.errors import ConfigError
from ddpm.schedules import SCHEDULES, compute_tables, get_beta_schedule


def linear(T=1000):
    return get_beta_schedule("linear", beta_start=1e-4, beta_end=0.02, num_timesteps=T)


def test_every_schedule_is_float64_of_length_T_in_range():
    for name in SCHEDULES:
        b = get_beta_schedule(name, beta_start=1e-4, beta_end=0.02, num_timesteps=200)
        assert b.dtype == np.float64 and b.shape == (200,), name
        assert np.all(b > 0) and np.all(b <= 1), name


def test_linear_schedule_reference_numbers():
    b = linear()
    tab = compute_tables(b)
    assert b[0] == 1e-4 and b[999] == 0.02
    assert b[1] == pytest.approx(1.19920e-4, rel=1e-5)
    ac = tab["alphas_cumprod"]
    assert ac[0] == pytest.approx(0.9999, rel=1e-12)
    assert ac[499] == pytest.approx(0.0785872, rel=1e-5)
    assert ac[999] == pytest.approx(4.03583e-5, rel=1e-5)
    assert tab["sqrt_alphas_cumprod"][999] == pytest.approx(6.35282e-3, rel=1e-5)
    assert tab["sqrt_one_minus_alphas_cumprod"][999] == pytest.approx(0.9999798, rel=1e-7)
    pv = tab["posterior_variance"]
    assert pv[0] == 0.0
    assert pv[1] == pytest.approx(5.45319e-5, rel=1e-5)
    assert pv[999] == pytest.approx(0.0199999835, rel=1e-8)
    plv = tab["posterior_log_variance_clipped"]
    assert plv[0] == plv[1] == pytest.approx(-9.816725, abs=1e-6)
    assert math.log(b[0]) == pytest.approx(-9.210340, abs=1e-6)
    assert math.sqrt(pv[1]) == pytest.approx(7.3846e-3, rel=1e-4)  # decoder std at t = 0
    assert tab["posterior_mean_coef1"][0] == pytest.approx(1.0, abs=1e-12)
    assert tab["posterior_mean_coef2"][0] == 0.0


def test_posterior_to_beta_ratios():
    b = linear()
    ratio = compute_tables(b)["posterior_variance"] / b
    np.testing.assert_allclose(ratio[[1, 10, 100]], [0.455, 0.864, 0.982], atol=6e-4)
    assert ratio[999] == pytest.approx(0.999999, abs=1e-6)
    assert np.all(np.diff(ratio) > 0)  # β̃/β rises monotonically to 1


def test_fixedlarge_table_uses_posterior_variance_at_t0():
    b = linear()
    tab = compute_tables(b)
    assert tab["fixedlarge_log_variance"][0] == tab["posterior_log_variance_clipped"][1]
    np.testing.assert_array_equal(tab["fixedlarge_log_variance"][1:], np.log(b[1:]))
    np.testing.assert_array_equal(tab["fixedlarge_variance"][1:], b[1:])


def test_alphas_cumprod_at_T_for_other_schedules():
    ac_T = {n: np.prod(1 - get_beta_schedule(n, beta_start=1e-4, beta_end=0.02, num_timesteps=1000))
            for n in ("quad", "const", "jsd")}
    assert ac_T["quad"] == pytest.approx(7.33e-4, rel=2e-3)
    assert ac_T["const"] == pytest.approx(1.68e-9, rel=3e-3)
    assert ac_T["jsd"] == 0.0
    jsd = get_beta_schedule("jsd", beta_start=1e-4, beta_end=0.02, num_timesteps=4)
    np.testing.assert_allclose(jsd, [1 / 4, 1 / 3, 1 / 2, 1])


def test_quad_is_linear_in_sqrt_beta_and_const_is_flat():
    q = get_beta_schedule("quad", beta_start=1e-4, beta_end=0.02, num_timesteps=100)
    np.testing.assert_allclose(np.diff(np.sqrt(q)), (math.sqrt(0.02) - 0.01) / 99, rtol=1e-9)
    c = get_beta_schedule("const", beta_start=1e-4, beta_end=0.02, num_timesteps=100)
    np.testing.assert_array_equal(c, np.full(100, 0.02))


@pytest.mark.parametrize("name,frac", [("warmup10", 0.1), ("warmup50", 0.5)])
def test_warmup_shapes(name, frac):
    T = 1000
    b = get_beta_schedule(name, beta_start=1e-4, beta_end=0.02, num_timesteps=T)
    n = int(frac * T)
    np.testing.assert_allclose(b[:n], np.linspace(1e-4, 0.02, n))
    np.testing.assert_array_equal(b[n:], 0.02)


def test_cosine_schedule_reference_numbers():
    b = get_beta_schedule("cosine", beta_start=1e-4, beta_end=0.02, num_timesteps=1000)
    assert b[0] == pytest.approx(4.13e-5, rel=2e-3)
    assert b[500] == pytest.approx(3.16e-3, rel=2e-3)
    assert b[998] == pytest.approx(0.750, rel=1e-3)
    assert b[999] == 0.999
    assert np.sum(b == 0.999) == 1  # only the last step is clipped
    assert np.prod(1 - b) == pytest.approx(2.4e-9, rel=2e-2)
    # ᾱ from the cumulative product matches the continuous f(t)/f(0) before the clipped step
    f = lambda tau: math.cos((tau + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert np.cumprod(1 - b)[499] == pytest.approx(f(0.5) / f(0), rel=1e-10)
    b4k = get_beta_schedule("cosine", beta_start=1e-4, beta_end=0.02, num_timesteps=4000)
    assert b4k[0] == pytest.approx(9.87e-6, rel=2e-3)


def test_bad_schedule_arguments_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown beta schedule 'cosin'"):
        get_beta_schedule("cosin", beta_start=1e-4, beta_end=0.02, num_timesteps=10)
    with pytest.raises(ConfigError, match="beta_start"):
        get_beta_schedule("linear", beta_start=0.0, beta_end=0.02, num_timesteps=10)
    with pytest.raises(ConfigError, match="beta_end"):
        get_beta_schedule("linear", beta_start=1e-4, beta_end=1.5, num_timesteps=10)
    with pytest.raises(ConfigError, match="num_timesteps"):
        get_beta_schedule("linear", beta_start=1e-4, beta_end=0.02, num_timesteps=0)
    with pytest.raises(ConfigError, match="num_timesteps"):
        get_beta_schedule("linear", beta_start=1e-4, beta_end=0.02, num_timesteps=10.5)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        compute_tables([0.1, 0.0, 0.2])
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        compute_tables([0.1, float("nan")])


def test_single_step_tables_are_finite():
    tab = compute_tables([0.5])
    for name, arr in tab.items():
        if name not in ("posterior_variance",):
            assert np.all(np.isfinite(arr)) or name in ("xprev_coef1", "xprev_coef2"), name
    assert tab["posterior_log_variance_clipped"][0] == math.log(0.5)
