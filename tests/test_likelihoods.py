"""The output likelihoods against independent references: torch.distributions, float64 closed forms,
numerical quadrature (scipy), and Kolmogorov-Smirnov and chi-square tests of the samplers; and a Categorical y
(integer class indices) through the library: fit, sample, the estimators, a baseline, save and load."""

import json
import math
import re

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
import torch.nn.functional as F
from torch import distributions as td

from cvae import ConditionalVAE, Regressor, estimators, fit, likelihoods
from cvae.likelihoods import (
    Bernoulli,
    Categorical,
    ContinuousBernoulli,
    Gaussian,
    Laplace,
    by_name,
    continuous_bernoulli_icdf,
    continuous_bernoulli_log_normalizer,
    continuous_bernoulli_mean,
    from_config,
)

S, N, D = 3, 4, 5
DTYPES = [torch.float64, torch.float32]
ALL = [Bernoulli(), Gaussian(), Gaussian(scale=0.3), ContinuousBernoulli(), Laplace(), Laplace(scale=0.3)]
EVERY = [*ALL, Categorical(2), Categorical(4)]  # with the likelihoods of integer y


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tolerances(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}


def random_params(k: int, dtype: torch.dtype, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    """(S, N, k D) network outputs, to be broadcast against a y of (N, D)."""
    return (torch.randn(S, N, k * D, generator=gen(seed), dtype=torch.float64) * scale).to(dtype)


def log_c_reference(logits: torch.Tensor) -> torch.Tensor:
    """log C(l) = log(l / tanh(l / 2)) in float64 (log 2 at l = 0): the closed form, no series."""
    l64 = logits.double()
    safe = torch.where(l64 == 0, torch.ones_like(l64), l64)
    return torch.where(l64 == 0, torch.full_like(l64, math.log(2.0)), torch.log(safe / torch.tanh(safe / 2)))


def density(logit: float):
    """p(y | l) of the continuous Bernoulli as a float -> float function, in float64."""
    params = torch.tensor([logit], dtype=torch.float64)
    likelihood = ContinuousBernoulli(max_logit=None)
    return lambda y: math.exp(likelihood.log_prob(params, torch.tensor([y], dtype=torch.float64)))


def continuous_bernoulli_cdf(logit: float):
    """F(y) = expm1(l y) / expm1(l) (y at l = 0), in float64 numpy."""
    if logit == 0:
        return lambda y: np.clip(y, 0, 1)
    return lambda y: np.expm1(logit * np.clip(y, 0, 1)) / np.expm1(logit)


# ---------------------------------------------------------------------------------------------------------
# log_prob against torch.distributions, with broadcasting (S, N, k D) against (N, D)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_log_prob_matches_torch_distributions(dtype):
    logits = random_params(1, dtype)
    y = torch.bernoulli(torch.full((N, D), 0.5, dtype=dtype), generator=gen(1))
    expected = td.Bernoulli(logits=logits.double()).log_prob(y.double()).sum(-1)
    got = Bernoulli().log_prob(logits, y)
    assert got.shape == (S, N) and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_learned_scale_log_prob_matches_normal(dtype):
    likelihood = Gaussian()
    assert likelihood.num_params == 2
    params = random_params(2, dtype)
    y = torch.randn(N, D, generator=gen(1), dtype=dtype) * 3
    loc, raw = params.double()[..., :D], params.double()[..., D:]
    expected = td.Normal(loc, F.softplus(raw) + 1e-4).log_prob(y.double()).sum(-1)
    got = likelihood.log_prob(params, y)
    assert got.shape == (S, N) and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, **tolerances(dtype))
    loc_out, scale_out = likelihood.loc_scale(params)
    torch.testing.assert_close(loc_out, params[..., :D])
    torch.testing.assert_close(scale_out, F.softplus(params[..., D:]) + 1e-4)


def test_gaussian_min_scale():
    assert likelihoods.MIN_SCALE == 1e-4  # the constant of the library's Gaussian heads
    # a very negative raw output still gives a positive scale of MIN_SCALE
    params = torch.tensor([[0.0, -200.0]], dtype=torch.float64)
    assert Gaussian().loc_scale(params)[1].item() == pytest.approx(1e-4)
    assert torch.isfinite(Gaussian().log_prob(params, torch.tensor([[1e-3]], dtype=torch.float64))).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_fixed_scale_log_prob_matches_normal(dtype):
    likelihood = Gaussian(scale=0.3)
    assert likelihood.num_params == 1
    loc = random_params(1, dtype)
    y = torch.randn(N, D, generator=gen(1), dtype=dtype)
    expected = td.Normal(loc.double(), 0.3).log_prob(y.double()).sum(-1)
    got = likelihood.log_prob(loc, y)
    assert got.shape == (S, N) and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_continuous_bernoulli_log_prob_matches_torch_distributions(dtype):
    logits = random_params(1, dtype, scale=4.0)
    logits[0, 0, :3] = torch.tensor([0.0, 0.05, -0.2], dtype=dtype)  # the series region as well
    y = torch.rand(N, D, generator=gen(1), dtype=dtype)
    expected = td.ContinuousBernoulli(logits=logits.double()).log_prob(y.double()).sum(-1)
    got = ContinuousBernoulli(max_logit=None).log_prob(logits, y)
    assert got.shape == (S, N) and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=1e-9 if dtype == torch.float64 else 2e-5, atol=1e-9
                               if dtype == torch.float64 else 2e-5)


def test_log_prob_rejects_mismatched_shapes():
    y = torch.zeros(N, D)
    with pytest.raises(ValueError, match="y's last dimension must be 6"):
        Bernoulli().log_prob(torch.zeros(N, D + 1), y)
    with pytest.raises(ValueError, match="multiple of 2"):
        Gaussian().log_prob(torch.zeros(N, 2 * D + 1), y)
    with pytest.raises(ValueError, match=r"Gaussian\(scale=None\) needs 2 parameters per dimension of y"):
        Gaussian().log_prob(torch.zeros(N, D + 1), y)  # a learned scale needs 2 D outputs
    with pytest.raises(ValueError, match="multiple of 2"):
        Gaussian().mean(torch.zeros(N, 3))


# ---------------------------------------------------------------------------------------------------------
# The continuous Bernoulli's normalizer, mean and sampler
# ---------------------------------------------------------------------------------------------------------

NEAR_AND_FAR = [0.0, 1e-6, -1e-6, 1e-3, -1e-3, 0.0999, 0.1, -0.1, 0.1001, 0.5, 1.0, -1.0, 20.0, -20.0, 80.0, -80.0]


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 3e-7), (torch.float64, 1e-14)])
def test_log_normalizer_near_zero_and_far_from_it(dtype, rtol):
    sweep = torch.logspace(-2, 2, 401, dtype=torch.float64)  # through the switch to the closed form at 0.1
    logits = torch.cat([torch.tensor(NEAR_AND_FAR, dtype=torch.float64), sweep, -sweep]).to(dtype)
    got = continuous_bernoulli_log_normalizer(logits)
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), log_c_reference(logits), rtol=rtol, atol=0)
    assert got[0].item() == pytest.approx(math.log(2.0), rel=1e-7)  # C(1/2) = 2


def test_log_normalizer_is_the_papers_closed_form_in_lambda():
    """C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) (Loaiza-Ganem & Cunningham 2019, eq. 7)."""
    logits = torch.tensor([-7.0, -2.0, -0.6, 0.4, 1.5, 6.0], dtype=torch.float64)
    lam = torch.sigmoid(logits)
    expected = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    torch.testing.assert_close(continuous_bernoulli_log_normalizer(logits), expected, rtol=1e-12, atol=0)


def test_log_prob_gradient_at_zero_logit():
    """d/dl [y l - softplus(l) + log C(l)] = y - sigmoid(l) + d log C / dl = y - 1/2 at l = 0 (log C is even)."""
    logits = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0.0, 0.3, 1.0]], dtype=torch.float64)
    ContinuousBernoulli(max_logit=None).log_prob(logits, y).sum().backward()
    torch.testing.assert_close(logits.grad, y - 0.5)


@pytest.mark.parametrize("logit", [0.0, 1e-4, -1e-4, 0.7, -2.0, 30.0, -30.0])
def test_density_integrates_to_one(logit):
    total, _ = scipy.integrate.quad(density(logit), 0.0, 1.0, epsabs=1e-13, epsrel=1e-12)
    assert total == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("logit", [0.0, 1e-4, -1e-4, 0.3, 0.9999, 1.0001, -1.0001, 3.0, -6.0, 30.0])
def test_mean_matches_quadrature(logit):
    p = density(logit)
    expected, _ = scipy.integrate.quad(lambda y: y * p(y), 0.0, 1.0, epsabs=1e-13, epsrel=1e-12)
    got = ContinuousBernoulli(max_logit=None).mean(torch.tensor([logit], dtype=torch.float64)).item()
    assert got == pytest.approx(expected, abs=1e-10)


def test_mean_matches_torch_distributions_away_from_zero():
    # (not beyond |l| ~ 30: there torch's 2 artanh(1 - 2 lambda) rounds to inf and its mean to lambda)
    logits = torch.tensor([-12.0, -5.0, -1.5, -0.5, 0.5, 1.2, 4.0, 12.0], dtype=torch.float64)
    expected = td.ContinuousBernoulli(logits=logits).mean
    torch.testing.assert_close(ContinuousBernoulli(max_logit=None).mean(logits), expected, rtol=1e-12, atol=0)


def test_mean_in_float32_near_zero_and_far_from_it():
    logits = torch.tensor(NEAR_AND_FAR + [0.9999, 1.0001, -0.9999, 300.0, -300.0], dtype=torch.float32)
    got = continuous_bernoulli_mean(logits)
    l64 = logits.double()
    # the float64 closed form, trusted away from 0, and its Taylor series 1/2 + l/12 - l^3/720 below 1e-2
    closed = -1 / torch.expm1(-l64) - 1 / l64
    series = 0.5 + l64 / 12 - l64**3 / 720
    expected = torch.where(l64.abs() < 1e-2, series, closed)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=3e-7, atol=0)
    # continuous across the switch to the series, in float64
    one = torch.tensor([1.0, -1.0], dtype=torch.float64)
    below = continuous_bernoulli_mean(torch.nextafter(one, torch.zeros_like(one)))  # the series
    torch.testing.assert_close(below, continuous_bernoulli_mean(one), rtol=4e-16, atol=0)


def test_the_series_use_the_exact_bernoulli_numbers():
    """B_2, B_4, ..., B_12 = 1/6, -1/30, 1/42, -1/30, 5/66, -691/2730, as exact rationals, as many as asked for."""
    from fractions import Fraction

    from cvae.likelihoods import _even_bernoulli_numbers
    known = [Fraction(1, 6), Fraction(-1, 30), Fraction(1, 42), Fraction(-1, 30), Fraction(5, 66), Fraction(-691, 2730)]
    assert _even_bernoulli_numbers(6) == known
    assert _even_bernoulli_numbers(1) == known[:1]


def decimal_mean(logit: float) -> float:
    """E[y] = 1 / (1 - e^-l) - 1 / l in 50-digit decimal arithmetic (no cancellation at this precision)."""
    from decimal import Decimal, localcontext
    with localcontext() as context:
        context.prec = 50
        l = Decimal(logit)  # noqa: E741
        return float(1 / (1 - (-l).exp()) - 1 / l)


def decimal_log_normalizer(logit: float) -> float:
    """log C(l) = log(|l| / tanh(|l| / 2)) in 50-digit decimal arithmetic, tanh(a / 2) = (1 - e^-a) / (1 + e^-a)."""
    from decimal import Decimal, localcontext
    with localcontext() as context:
        context.prec = 50
        a = abs(Decimal(logit))
        return float((a * (1 + (-a).exp()) / (1 - (-a).exp())).ln())


def test_the_log_normalizer_is_exact_to_rounding_on_both_sides_of_the_switch_to_its_series():
    """In float64 log C is within a few units of rounding of the exact value for every |l| in [1e-8, 80]: the
    series to l^10 (below |l| = 0.1) as well as the closed form (above)."""
    magnitudes = torch.cat([torch.logspace(-8, math.log10(80), 300, dtype=torch.float64),
                            torch.linspace(0.05, 0.15, 101, dtype=torch.float64)])
    logits = torch.cat([magnitudes, -magnitudes])
    expected = torch.tensor([decimal_log_normalizer(v) for v in logits.tolist()], dtype=torch.float64)
    torch.testing.assert_close(continuous_bernoulli_log_normalizer(logits), expected, rtol=1.5e-15, atol=0)


def test_the_mean_is_exact_to_rounding_on_both_sides_of_the_switch_to_its_series():
    """In float64 the mean is within a few units of rounding of the exact value for every |l| in [1e-8, 30]: the
    series (below |l| = 1) as well as the closed form (above)."""
    magnitudes = torch.cat([torch.logspace(-8, math.log10(30), 300, dtype=torch.float64),
                            torch.linspace(0.9, 2.5, 161, dtype=torch.float64)])
    logits = torch.cat([magnitudes, -magnitudes])
    expected = torch.tensor([decimal_mean(v) for v in logits.tolist()], dtype=torch.float64)
    torch.testing.assert_close(continuous_bernoulli_mean(logits), expected, rtol=4e-15, atol=0)


SAMPLE_LOGITS = [0.0, 1e-5, -0.7, 2.5, -8.0]


def test_samples_have_the_right_mean_and_distribution():
    n = 20_000
    logits = torch.tensor(SAMPLE_LOGITS, dtype=torch.float64).expand(n, -1)
    likelihood = ContinuousBernoulli(max_logit=None)
    samples = likelihood.sample(logits, generator=gen(7))
    assert samples.shape == (n, len(SAMPLE_LOGITS)) and samples.dtype == torch.float64
    assert ((samples >= 0) & (samples <= 1)).all()
    means = likelihood.mean(logits[0])
    for j, logit in enumerate(SAMPLE_LOGITS):
        column = samples[:, j]
        assert abs(column.mean() - means[j]) < 4 * column.std() / math.sqrt(n), logit
        assert scipy.stats.kstest(column.numpy(), continuous_bernoulli_cdf(logit)).pvalue > 1e-3, logit


@pytest.mark.parametrize("likelihood", EVERY, ids=repr)
def test_samples_are_reproducible_and_use_only_the_generator(likelihood):
    params = torch.randn(100, 3 * likelihood.num_params, generator=gen(0))
    global_state = torch.get_rng_state()
    first = likelihood.sample(params, generator=gen(3))
    assert first.shape == (100, 3)
    torch.testing.assert_close(likelihood.sample(params, generator=gen(3)), first)
    assert not torch.equal(likelihood.sample(params, generator=gen(4)), first)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global generator was not drawn from


@pytest.mark.parametrize("dtype", DTYPES)
def test_samples_stay_in_the_support_at_extreme_logits(dtype):
    logits = torch.tensor([0.0, 1e-30, -1e-30, 1e-7, 100.0, -100.0, 1e4, -1e4], dtype=dtype).expand(5000, -1)
    samples = ContinuousBernoulli(max_logit=None).sample(logits, generator=gen(5))
    assert torch.isfinite(samples).all() and ((samples >= 0) & (samples <= 1)).all()
    # at |l| = 1e4 the mass is within about 1e-4 * log(1/u) of the end
    assert samples[:, 6].min() > 0.99 and samples[:, 7].max() < 0.01
    # F^-1(0) = 0 at every l, also where u = 0 meets expm1(-l) = -1 in log1p
    ends = continuous_bernoulli_icdf(logits[0], torch.zeros_like(logits[0]))
    assert torch.equal(ends, torch.zeros_like(ends))


def test_icdf_inverts_the_cdf():
    u = torch.tensor([0.0, 0.1, 0.5, 0.9, 1 - 2**-40], dtype=torch.float64)
    for logit in [-20.0, -1.0, -1e-8, 1e-8, 0.4, 15.0]:
        y = continuous_bernoulli_icdf(torch.full_like(u, logit), u)
        cdf = torch.from_numpy(continuous_bernoulli_cdf(logit)(y.numpy()))
        torch.testing.assert_close(cdf, u, rtol=1e-9, atol=1e-12)
    # below |l| = 1e-12, u + l u (1 - u) / 2: within float64 rounding of the exact log1p(u expm1(l)) / l
    for logit in [-1e-13, 1e-13]:
        y = continuous_bernoulli_icdf(torch.full_like(u, logit), u)
        torch.testing.assert_close(y, torch.log1p(u * math.expm1(logit)) / logit, rtol=1e-15, atol=1e-16)


# ---------------------------------------------------------------------------------------------------------
# Means and samples of Bernoulli and Gaussian
# ---------------------------------------------------------------------------------------------------------


def test_bernoulli_mean_and_samples():
    logits = torch.tensor([-2.0, 0.0, 1.0, 4.0]).expand(20_000, -1)
    likelihood = Bernoulli()
    torch.testing.assert_close(likelihood.mean(logits[0]), torch.sigmoid(logits[0]))
    samples = likelihood.sample(logits, generator=gen(0))
    assert samples.shape == logits.shape
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(logits[0])
    frequency = samples.mean(0)
    assert (frequency - p).abs().max() < 4 * (p * (1 - p) / 20_000).sqrt().max()


@pytest.mark.parametrize("likelihood", [Gaussian(), Gaussian(scale=0.3)], ids=repr)
def test_gaussian_mean_and_samples(likelihood):
    n = 20_000
    loc = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)
    if likelihood.scale is None:
        scale = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)
        raw = torch.log(torch.expm1(scale - 1e-4))  # softplus^-1(scale - MIN_SCALE)
        params = torch.cat([loc, raw]).expand(n, -1)
    else:
        scale = torch.full_like(loc, 0.3)
        params = loc.expand(n, -1)
    torch.testing.assert_close(likelihood.mean(params[0]), loc)
    samples = likelihood.sample(params, generator=gen(2))
    assert samples.shape == (n, 3)
    assert ((samples.mean(0) - loc).abs() < 4 * scale / math.sqrt(n)).all()
    torch.testing.assert_close(samples.std(0), scale, rtol=0.03, atol=0)


@pytest.mark.parametrize("scale", [0, 0.0, -1.0, float("nan"), float("inf"), "0.1", True, [0.1]])
def test_gaussian_rejects_bad_scales(scale):
    with pytest.raises(ValueError, match="scale must be a positive finite float"):
        Gaussian(scale=scale)


def test_gaussian_accepts_an_int_scale_as_a_float():
    assert Gaussian(scale=2).scale == 2.0 and isinstance(Gaussian(scale=2).scale, float)


# ---------------------------------------------------------------------------------------------------------
# check_support
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", [Bernoulli(), ContinuousBernoulli()], ids=repr)
@pytest.mark.parametrize("value", [1.5, -0.1])
def test_check_support_rejects_values_outside_the_unit_interval(likelihood, value):
    y = torch.tensor([[0.2, value, 0.7]])
    with pytest.raises(ValueError, match=rf"targets has a value {value} outside \[0, 1\], the support of the "
                                         rf"{type(likelihood).__name__} likelihood"):
        likelihood.check_support(y, name="targets")


@pytest.mark.parametrize("likelihood", ALL, ids=repr)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_check_support_rejects_non_finite_values(likelihood, value):
    y = torch.tensor([0.5, value])
    with pytest.raises(ValueError, match=rf"y has a value {value}, which is not finite"):
        likelihood.check_support(y)


def test_check_support_accepts_values_in_the_support():
    Bernoulli().check_support(torch.tensor([0.0, 0.3, 1.0]))  # grayscale targets are allowed
    ContinuousBernoulli().check_support(torch.tensor([0.0, 0.3, 1.0]))
    Gaussian().check_support(torch.tensor([-5.0, 0.0, 1e6]))
    Gaussian(scale=1.0).check_support(torch.tensor([-5.0]))
    Bernoulli().check_support(torch.tensor([True, False]))


# ---------------------------------------------------------------------------------------------------------
# config, by_name, repr
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", EVERY, ids=repr)
def test_config_round_trip_through_json(likelihood):
    config = json.loads(json.dumps(likelihood.config()))
    rebuilt = from_config(config)
    assert rebuilt == likelihood and type(rebuilt) is type(likelihood)
    assert rebuilt.num_params == likelihood.num_params and repr(rebuilt) == repr(likelihood)


def test_configs_and_reprs():
    assert Gaussian().config() == {"name": "gaussian", "scale": None}
    assert Gaussian(scale=0.1).config() == {"name": "gaussian", "scale": 0.1}
    assert Bernoulli().config() == {"name": "bernoulli"}
    assert ContinuousBernoulli().config() == {"name": "continuous-bernoulli", "max_logit": 20.0}
    assert repr(Gaussian(scale=0.1)) == "Gaussian(scale=0.1)"
    assert repr(Gaussian()) == "Gaussian(scale=None)"
    assert repr(Bernoulli()) == "Bernoulli()" and repr(ContinuousBernoulli()) == "ContinuousBernoulli(max_logit=20.0)"
    assert Gaussian(scale=0.1) != Gaussian() and Bernoulli() != ContinuousBernoulli()


def test_by_name():
    assert by_name("bernoulli") == Bernoulli()
    assert by_name("gaussian") == Gaussian()
    assert by_name("gaussian", scale=0.5) == Gaussian(scale=0.5)
    assert by_name("continuous-bernoulli") == ContinuousBernoulli()
    assert by_name("laplace") == Laplace() and by_name("laplace", scale=0.5) == Laplace(scale=0.5)
    assert by_name("categorical", num_classes=3) == Categorical(3)


def test_the_configs_and_reprs_of_laplace_and_categorical():
    assert Laplace().config() == {"name": "laplace", "scale": None}
    assert Laplace(scale=0.1).config() == {"name": "laplace", "scale": 0.1}
    assert Categorical(5).config() == {"name": "categorical", "num_classes": 5}
    assert repr(Laplace()) == "Laplace(scale=None)" and repr(Laplace(scale=0.1)) == "Laplace(scale=0.1)"
    assert repr(Categorical(5)) == "Categorical(num_classes=5)"
    assert Laplace(scale=0.1) != Laplace() and Laplace() != Gaussian() and Categorical(3) != Categorical(4)
    assert Categorical(np.int64(3)) == Categorical(3) and type(Categorical(np.int64(3)).num_classes) is int
    assert Laplace().num_params == 2 and Laplace(scale=1.0).num_params == 1 and Categorical(7).num_params == 7
    assert Categorical(3).discrete and not any(likelihood.discrete for likelihood in ALL)


def test_unknown_names_and_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'; the choices are 'bernoulli', 'gaussian', "
                                         "'continuous-bernoulli', 'laplace', 'categorical'"):
        by_name("poisson")
    with pytest.raises(ValueError, match="unknown likelihood"):
        from_config({"name": "student-t"})
    with pytest.raises(ValueError, match="bad options.*num_classes"):
        by_name("categorical")  # num_classes has no default
    with pytest.raises(ValueError, match="num_classes must be"):
        from_config({"name": "categorical", "num_classes": 1})
    with pytest.raises(ValueError, match="scale must be"):
        from_config({"name": "laplace", "scale": 0})
    with pytest.raises(ValueError, match="a dict with a 'name'"):
        from_config({"scale": 0.1})
    with pytest.raises(ValueError, match="bad options"):
        from_config({"name": "bernoulli", "scale": 0.1})
    with pytest.raises(ValueError, match="scale must be"):
        from_config({"name": "gaussian", "scale": -1})


# ---------------------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", EVERY, ids=repr)
def test_log_prob_gradients_flow_to_params(likelihood):
    k = likelihood.num_params
    params = torch.randn(2, 2, k * 3, generator=gen(0), dtype=torch.float64) * 2
    if isinstance(likelihood, ContinuousBernoulli):
        params[0, 0] = torch.tensor([0.03, -0.5, 25.0], dtype=torch.float64)  # series, closed form, large
    params.requires_grad_(True)
    if isinstance(likelihood, (Gaussian, Laplace)):
        y = torch.randn(2, 3, generator=gen(1), dtype=torch.float64)
    elif isinstance(likelihood, Categorical):
        y = torch.randint(0, likelihood.num_classes, (2, 3), generator=gen(1))
    elif isinstance(likelihood, Bernoulli):
        y = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    else:
        y = torch.rand(2, 3, generator=gen(1), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: likelihood.log_prob(p, y), (params,))
    assert not likelihood.sample(params, generator=gen(2)).requires_grad


def test_the_continuous_bernoullis_bound_maps_params_to_logits_within_it_and_keeps_the_density_normalized():
    bounded, free = ContinuousBernoulli(max_logit=20.0), ContinuousBernoulli(max_logit=None)
    params = torch.tensor([-1e6, -300.0, -20.0, -1.0, 0.0, 0.5, 40.0, 1e6], dtype=torch.float64)
    logits = 20.0 * torch.tanh(params / 20.0)
    y = torch.linspace(0, 1, 8, dtype=torch.float64)
    for a, b in ((bounded.log_prob(params[:, None], y[:, None]), free.log_prob(logits[:, None], y[:, None])),
                 (bounded.mean(params), free.mean(logits))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert (logits.abs() < 20.0 + 1e-12).all()
    # data at 0: the bounded density tops out at C(-20) (1 - sigmoid(-20)), about 20; without the bound it grows
    at_zero = torch.zeros(1, 1, dtype=torch.float64)
    top = bounded.log_prob(torch.tensor([[-1e9]], dtype=torch.float64), at_zero).item()
    assert abs(top - math.log(20.0 / math.tanh(10.0))) < 1e-6
    assert free.log_prob(torch.tensor([[-1e4]], dtype=torch.float64), at_zero).item() > top + 6  # ~log 1e4
    density = lambda t: math.exp(bounded.log_prob(torch.tensor([[300.0]], dtype=torch.float64),  # noqa: E731
                                                  torch.tensor([[t]], dtype=torch.float64)).item())
    assert abs(scipy.integrate.quad(density, 0, 1, points=[0.9, 0.99])[0] - 1) < 1e-8
    for bad in (0, -1.0, float("inf"), "20", True):
        with pytest.raises(ValueError, match="max_logit"):
            ContinuousBernoulli(max_logit=bad)


# ---------------------------------------------------------------------------------------------------------
# Laplace: log p = -log(2 b) - |y - mu| / b per dimension, inverse-CDF sampling
# ---------------------------------------------------------------------------------------------------------


def softplus_inverse(scale: torch.Tensor) -> torch.Tensor:
    """raw with softplus(raw) + MIN_SCALE = scale."""
    return torch.log(torch.expm1(scale - 1e-4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_laplace_learned_scale_log_prob_matches_torch_distributions(dtype):
    likelihood = Laplace()
    assert likelihood.num_params == 2
    params = random_params(2, dtype)
    y = torch.randn(N, D, generator=gen(1), dtype=dtype) * 3
    loc, raw = params.double()[..., :D], params.double()[..., D:]
    expected = td.Laplace(loc, F.softplus(raw) + 1e-4).log_prob(y.double()).sum(-1)
    got = likelihood.log_prob(params, y)
    assert got.shape == (S, N) and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, **tolerances(dtype))
    loc_out, scale_out = likelihood.loc_scale(params)
    torch.testing.assert_close(loc_out, params[..., :D])
    torch.testing.assert_close(scale_out, F.softplus(params[..., D:]) + 1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_laplace_fixed_scale_log_prob_matches_torch_distributions(dtype):
    likelihood = Laplace(scale=0.3)
    assert likelihood.num_params == 1
    loc = random_params(1, dtype)
    y = torch.randn(N, D, generator=gen(1), dtype=dtype)
    expected = td.Laplace(loc.double(), 0.3).log_prob(y.double()).sum(-1)
    got = likelihood.log_prob(loc, y)
    assert got.shape == (S, N) and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, **tolerances(dtype))


def test_laplace_min_scale_and_shapes():
    params = torch.tensor([[0.0, -200.0]], dtype=torch.float64)  # a very negative raw scale: b = MIN_SCALE
    assert Laplace().loc_scale(params)[1].item() == pytest.approx(1e-4)
    assert torch.isfinite(Laplace().log_prob(params, torch.tensor([[1e-3]], dtype=torch.float64))).all()
    with pytest.raises(ValueError, match=r"Laplace\(scale=None\) needs 2 parameters per dimension of y"):
        Laplace().log_prob(torch.zeros(N, D + 1), torch.zeros(N, D))
    with pytest.raises(ValueError, match="multiple of 2"):
        Laplace().mean(torch.zeros(N, 3))


@pytest.mark.parametrize("logit", [-3.0, 0.0, 2.0])
def test_laplace_density_integrates_to_one_and_its_mean_is_loc(logit):
    params = torch.tensor([[logit, 0.5]], dtype=torch.float64)  # loc, raw scale
    likelihood = Laplace()
    density = lambda t: math.exp(likelihood.log_prob(params, torch.tensor([[t]], dtype=torch.float64)))  # noqa: E731
    total = scipy.integrate.quad(density, -math.inf, logit)[0] + scipy.integrate.quad(density, logit, math.inf)[0]
    assert total == pytest.approx(1.0, abs=1e-10)
    first = (scipy.integrate.quad(lambda t: t * density(t), -math.inf, logit)[0]
             + scipy.integrate.quad(lambda t: t * density(t), logit, math.inf)[0])
    assert first == pytest.approx(likelihood.mean(params).item(), abs=1e-9)


@pytest.mark.parametrize("likelihood", [Laplace(), Laplace(scale=0.3)], ids=repr)
def test_laplace_mean_and_samples(likelihood):
    n = 20_000
    loc = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)
    if likelihood.scale is None:
        scale = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)
        params = torch.cat([loc, softplus_inverse(scale)]).expand(n, -1)
    else:
        scale = torch.full_like(loc, 0.3)
        params = loc.expand(n, -1)
    torch.testing.assert_close(likelihood.mean(params[0]), loc)
    samples = likelihood.sample(params, generator=gen(2))
    assert samples.shape == (n, 3) and samples.dtype == torch.float64
    std = math.sqrt(2) * scale  # the variance is 2 b^2
    assert ((samples.mean(0) - loc).abs() < 4 * std / math.sqrt(n)).all()
    torch.testing.assert_close(samples.std(0), std, rtol=0.04, atol=0)
    for j in range(3):
        cdf = scipy.stats.laplace(loc=loc[j].item(), scale=scale[j].item()).cdf
        assert scipy.stats.kstest(samples[:, j].numpy(), cdf).pvalue > 1e-3, j


@pytest.mark.parametrize("dtype", DTYPES)
def test_laplace_samples_are_torch_distributions_inverse_cdf_of_the_generators_uniforms(dtype):
    """sample draws u = torch.rand(loc.shape, generator) and returns F^-1(u): the same as torch's Laplace.icdf."""
    params = random_params(2, dtype)
    loc, scale = Laplace().loc_scale(params)
    u = torch.rand(loc.shape, generator=gen(9), dtype=dtype)
    expected = td.Laplace(loc.double(), scale.double()).icdf(u.double())
    got = Laplace().sample(params, generator=gen(9))
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_laplace_samples_at_the_extreme_uniforms_end_at_the_same_distance_from_loc_on_both_sides(dtype, monkeypatch):
    """torch.rand gives 0 and 1 - eps/2 at most (eps/2 = 2^-24 in float32, 2^-53 in float64, its smallest positive
    value on the CPU): F^-1 of them (u = 0 raised to eps/2) is mu + b log(eps) and mu - b log(eps), and F^-1(1/2) is
    mu, the median."""
    eps = torch.finfo(dtype).eps
    u = torch.tensor([0.0, eps / 2, 0.5, 1 - eps / 2], dtype=dtype)
    assert u[-1] < 1
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: u.clone())
    got = Laplace(scale=2.0).sample(torch.full((4,), 1.0, dtype=dtype))
    tail = 2.0 * math.log(eps)
    torch.testing.assert_close(got.double(), torch.tensor([1 + tail, 1 + tail, 1.0, 1 - tail], dtype=torch.float64),
                               **tolerances(dtype))


@pytest.mark.parametrize("scale", [0, 0.0, -1.0, float("nan"), float("inf"), "0.1", True, [0.1], 1e-50, 1e39])
def test_laplace_rejects_bad_scales(scale):
    # 1e-50 and 1e39 are positive finite floats, but 0 and inf in float32
    with pytest.raises(ValueError, match="scale must be a positive finite float"):
        Laplace(scale=scale)


def test_laplace_accepts_an_int_scale_as_a_float():
    assert Laplace(scale=2).scale == 2.0 and isinstance(Laplace(scale=2).scale, float)


# ---------------------------------------------------------------------------------------------------------
# Categorical: params (..., K D) read as (..., D, K) logits, y integer class indices (..., D)
# ---------------------------------------------------------------------------------------------------------

K = 4


def random_classes(shape: tuple[int, ...], k: int = K, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, k, shape, generator=gen(seed))


@pytest.mark.parametrize("dtype", DTYPES)
def test_categorical_log_prob_matches_torch_distributions(dtype):
    likelihood = Categorical(K)
    params = random_params(K, dtype)  # (S, N, K D)
    y = random_classes((N, D))
    logits = params.double().unflatten(-1, (D, K))  # dimension i's logits are params[..., i K:(i + 1) K]
    expected = td.Categorical(logits=logits).log_prob(y).sum(-1)
    got = likelihood.log_prob(params, y)
    assert got.shape == (S, N) and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, **tolerances(dtype))
    # the same from the one-hot view of y
    one_hot = td.OneHotCategorical(logits=logits).log_prob(F.one_hot(y, K).double()).sum(-1)
    torch.testing.assert_close(got.double(), one_hot, **tolerances(dtype))
    # any integer dtype holds the classes
    torch.testing.assert_close(likelihood.log_prob(params, y.to(torch.int32)), got, rtol=0, atol=0)
    torch.testing.assert_close(likelihood.log_prob(params, y.to(torch.uint8)), got, rtol=0, atol=0)


def test_categorical_layout_puts_the_classes_of_each_dimension_together():
    # D = 2, K = 3: dimension 0 has logits (0, 5, 0), dimension 1 has (0, 0, 5)
    params = torch.tensor([[0.0, 5.0, 0.0, 0.0, 0.0, 5.0]], dtype=torch.float64)
    likelihood = Categorical(3)
    probabilities = likelihood.mean(params)
    assert probabilities.shape == (1, 2, 3)
    assert probabilities[0, 0].argmax() == 1 and probabilities[0, 1].argmax() == 2
    best = likelihood.log_prob(params, torch.tensor([[1, 2]]))
    assert best.item() == pytest.approx(2 * (5 - math.log(math.exp(5) + 2)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_categorical_mean_is_the_one_hot_mean(dtype):
    params = random_params(K, dtype)
    got = Categorical(K).mean(params)
    assert got.shape == (S, N, D, K) and got.dtype == dtype
    expected = td.OneHotCategorical(logits=params.double().unflatten(-1, (D, K))).mean
    torch.testing.assert_close(got.double(), expected, **tolerances(dtype))
    torch.testing.assert_close(got.sum(-1).double(), torch.ones(S, N, D, dtype=torch.float64), **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_categorical_samples_have_the_class_frequencies(dtype):
    n = 20_000
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0], [3.0, -math.inf, 0.0, 0.0], [-20.0, 0.0, 0.0, -2.0]], dtype=dtype)
    likelihood = Categorical(K)
    params = logits.flatten().expand(n, -1)  # (n, K D) with D = 3
    samples = likelihood.sample(params, generator=gen(3))
    assert samples.shape == (n, 3) and samples.dtype == torch.int64
    assert ((samples >= 0) & (samples < K)).all()
    assert not (samples[:, 1] == 1).any()  # a class of logit -inf is never drawn
    probabilities = td.Categorical(logits=logits.double()).probs  # (D, K)
    for i in range(3):
        counts = torch.bincount(samples[:, i], minlength=K).double()
        frequency = counts / n
        se = (probabilities[i] * (1 - probabilities[i]) / n).sqrt()
        assert ((frequency - probabilities[i]).abs() <= 4 * se + 1e-12).all(), (i, frequency, probabilities[i])
        possible = probabilities[i] > 1e-6
        expected = probabilities[i][possible] * n
        chi2 = scipy.stats.chisquare(counts[possible].numpy(), expected.numpy() * counts[possible].sum().item() / n)
        assert chi2.pvalue > 1e-3, (i, counts)


def test_categorical_samples_at_extreme_logits():
    params = torch.tensor([[1e4, 0.0, -1e4, -1e4, 1e4, 0.0]]).expand(1000, -1)  # D = 2, K = 3
    samples = Categorical(3).sample(params, generator=gen(4))
    assert (samples[:, 0] == 0).all() and (samples[:, 1] == 1).all()


def test_categorical_features_are_one_hot_and_flattened_probabilities():
    likelihood = Categorical(3)
    y = torch.tensor([[0, 2], [1, 1]])
    features = likelihood.features(y)
    assert features.shape == (2, 6) and likelihood.feature_dim(2) == 6
    assert features.tolist() == [[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 1, 0]]
    params = torch.randn(2, 6, generator=gen(0))
    probabilities = likelihood.mean(params)
    torch.testing.assert_close(likelihood.features(probabilities), probabilities.reshape(2, 6))
    with pytest.raises(ValueError, match="class probabilities of shape"):
        likelihood.features(torch.zeros(2, 2))
    assert Gaussian().features(torch.ones(2, 2)).shape == (2, 2) and Gaussian().feature_dim(2) == 2


@pytest.mark.parametrize("value, position", [(-1, (1, 0)), (K, (0, 2))])
def test_categorical_check_support_names_the_argument_the_value_and_its_position(value, position):
    y = torch.tensor([[0, 1, 2], [3, 0, 1]])
    y[position] = value
    with pytest.raises(ValueError, match=rf"targets has a value {value} at position \({position[0]}, {position[1]}\) "
                                         rf"outside the class indices \{{0, \.\.\., {K - 1}\}}, the support of the "
                                         rf"Categorical\(num_classes={K}\) likelihood"):
        Categorical(K).check_support(y, name="targets")


@pytest.mark.parametrize("y", [torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, float("nan")]]),
                               torch.tensor([[True, False]]), torch.tensor([[0.0, 1.0]], dtype=torch.float64)],
                         ids=["float32", "nan", "bool", "float64"])
def test_categorical_check_support_rejects_y_that_is_not_an_integer_tensor(y):
    with pytest.raises(ValueError, match=rf"targets must be an integer tensor of class indices .* got dtype "
                                         rf"{re.escape(str(y.dtype))}; convert it with targets.long\(\)"):
        Categorical(K).check_support(y, name="targets")
    with pytest.raises(ValueError, match="y must be an integer tensor of class indices"):
        Categorical(K).log_prob(torch.zeros(1, 2 * K), y)


def test_categorical_check_support_accepts_class_indices_of_any_integer_dtype():
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        Categorical(K).check_support(torch.tensor([[0, K - 1], [1, 2]], dtype=dtype))


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, "3", True, None, [3]])
def test_categorical_rejects_bad_numbers_of_classes(num_classes):
    expected = rf"num_classes must be an integer of at least 2, not {re.escape(repr(num_classes))}"
    with pytest.raises(ValueError, match=expected):
        Categorical(num_classes)


def test_categorical_rejects_params_that_are_not_k_per_dimension():
    with pytest.raises(ValueError, match="multiple of 4"):
        Categorical(K).log_prob(torch.zeros(N, K * D + 1), random_classes((N, D)))
    with pytest.raises(ValueError, match=r"Categorical\(num_classes=4\) needs 4 parameters per dimension of y, so y's "
                                         r"last dimension must be 5"):
        Categorical(K).log_prob(torch.zeros(N, K * D), random_classes((N, D + 1)))


# ---------------------------------------------------------------------------------------------------------
# A Categorical y through the library: fit, sample, the estimators, a baseline, save and load
# ---------------------------------------------------------------------------------------------------------

X_DIM, Y_DIM, CLASSES = 2, 2, 3


def class_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, 2) and y (n, 2) int64: y_0 of 3 classes with logits (x_0, -x_0, x_1), y_1 = [x_1 > 0] or, a time
    in four, class 2."""
    generator = gen(seed)
    x = torch.randn(n, X_DIM, generator=generator)
    logits = torch.stack([x[:, 0], -x[:, 0], x[:, 1]], dim=-1)
    first = (logits - torch.log(-torch.log(torch.rand(n, CLASSES, generator=generator)))).argmax(-1)
    second = torch.where(torch.rand(n, generator=generator) < 0.25, 2, (x[:, 1] > 0).long())
    return x, torch.stack([first, second], dim=-1)


def categorical_model(seed: int = 0, **kwargs) -> ConditionalVAE:
    torch.manual_seed(seed)
    return ConditionalVAE(X_DIM, Y_DIM, z_dim=2, hidden=(16,), likelihood=Categorical(CLASSES), **kwargs)


CLASS_TRAIN, CLASS_VAL = class_data(128, 0), class_data(64, 1)
QUIET = {"progress": False, "batch_size": 32, "lr": 0.01}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_categorical_conditional_vae_fits_samples_and_is_estimated(dtype):
    model = categorical_model().to(dtype)
    history = fit(model, CLASS_TRAIN, CLASS_VAL, epochs=2, **QUIET)
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in history)
    x, y = CLASS_VAL[0].to(dtype), CLASS_VAL[1]  # y stays int64 whatever the model's dtype
    draws = model.sample(x, 5, generator=gen(2))
    assert draws.shape == (5, 64, Y_DIM) and draws.dtype == torch.int64
    assert ((draws >= 0) & (draws < CLASSES)).all()
    torch.testing.assert_close(model.sample(x, 5, generator=gen(2)), draws, rtol=0, atol=0)
    means = model.sample(x, 5, mean=True)
    assert means.shape == (5, 64, Y_DIM, CLASSES) and means.dtype == dtype
    torch.testing.assert_close(means.sum(-1), torch.ones(5, 64, Y_DIM, dtype=dtype))
    estimates = {f.__name__: f(model, x, y, 50, generator=gen(3), progress=False)
                 for f in (estimators.cll_importance, estimators.cll_monte_carlo, estimators.negative_elbo)}
    for name, estimate in estimates.items():
        assert estimate.shape == (64,) and estimate.dtype == dtype and torch.isfinite(estimate).all(), name
        assert (estimate > 0).all(), name  # -log p of a discrete y is positive
    # importance sampling is the tightest bound: below -ELBO (per example, up to its noise), and all three close
    assert estimates["cll_importance"].mean() <= estimates["negative_elbo"].mean() + 1e-6
    assert (estimates["cll_importance"] - estimates["cll_monte_carlo"]).abs().mean() < 0.2
    # the uniform guess is log 3 nats per dimension; after 2 epochs the model is in that range, not far off it
    assert estimates["cll_importance"].mean() < 2 * Y_DIM * math.log(CLASSES)


@pytest.mark.usefixtures("one_thread")
def test_a_categorical_conditional_vae_sees_y_one_hot_and_scores_it_with_the_likelihood():
    model = categorical_model().double()
    x, y = CLASS_VAL[0][:6].double(), CLASS_VAL[1][:6]
    assert model.recognition_net[0].in_features == X_DIM + Y_DIM * CLASSES
    with torch.no_grad():
        posterior = model.posterior(x, y)
        reference = model.recognition_net(torch.cat([x, F.one_hot(y, CLASSES).flatten(-2).double()], dim=-1))
        torch.testing.assert_close(posterior.loc, reference[:, :2], rtol=0, atol=0)
        z = torch.randn(3, 6, 2, generator=gen(4), dtype=torch.float64)
        params = model.params(x, z)
        assert params.shape == (3, 6, Y_DIM * CLASSES)
        expected = td.Categorical(logits=params.unflatten(-1, (Y_DIM, CLASSES))).log_prob(y).sum(-1)
        torch.testing.assert_close(model.log_likelihood(x, y, z), expected, rtol=0, atol=1e-12)


@pytest.mark.usefixtures("one_thread")
def test_categorical_targets_are_checked_by_fit_the_estimators_and_the_model():
    model = categorical_model()
    x, y = CLASS_TRAIN
    with pytest.raises(ValueError, match=r"train\[1\] \(y\) must be an integer tensor of class indices .* got dtype "
                                         r"torch.float32. Convert it with train\[1\] \(y\).long\(\)"):
        fit(model, (x, y.float()), CLASS_VAL, epochs=1, **QUIET)
    bad = CLASS_VAL[1].clone()
    bad[5, 1] = CLASSES
    with pytest.raises(ValueError, match=rf"val\[1\] \(y\) has a value {CLASSES} at position \(5, 1\) outside the "
                                         r"class indices \{0, ..., 2\}"):
        fit(model, CLASS_TRAIN, (CLASS_VAL[0], bad), epochs=1, **QUIET)
    with pytest.raises(ValueError, match=r"y has a value -1 at position \(0, 0\)"):
        estimators.cll_importance(model, x[:2], torch.tensor([[-1, 0], [0, 0]]), 2, progress=False)
    with pytest.raises(ValueError, match=r"y must have shape \(N, y_dim=2\), got \(128, 3\)"):
        estimators.negative_elbo(model, x, torch.zeros(128, 3, dtype=torch.long), 2, progress=False)
    # a model of real-valued y still refuses integer y
    gaussian = ConditionalVAE(X_DIM, Y_DIM, z_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match=r"train\[1\] \(y\) must be a floating-point tensor, got dtype torch.int64"):
        fit(gaussian, CLASS_TRAIN, CLASS_VAL, epochs=1, **QUIET)


@pytest.mark.usefixtures("one_thread")
def test_a_categorical_regressor_baseline_feeds_its_class_probabilities_and_the_model_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    baseline = Regressor(X_DIM, Y_DIM, hidden=(8,), likelihood=Categorical(CLASSES))
    fit(baseline, CLASS_TRAIN, CLASS_VAL, epochs=2, **QUIET)
    x, y = CLASS_VAL
    assert baseline(x).shape == (64, Y_DIM, CLASSES)
    assert torch.isfinite(baseline.log_likelihood(x, y)).all()
    model = categorical_model(baseline=baseline)
    assert model.prior_net[0].in_features == X_DIM + Y_DIM * CLASSES  # c = [x, the probabilities flattened]
    fit(model, CLASS_TRAIN, CLASS_VAL, epochs=1, **QUIET)
    with torch.no_grad():
        condition = model.context(x).condition
    torch.testing.assert_close(condition, torch.cat([x, baseline(x).flatten(-2)], dim=-1))
    assert torch.isfinite(estimators.cll_importance(model, x, y, 20, generator=gen(0), progress=False)).all()
    model.save(tmp_path / "model.pt")
    loaded = ConditionalVAE.load(tmp_path / "model.pt")
    assert loaded.likelihood == Categorical(CLASSES) and loaded.baseline.likelihood == Categorical(CLASSES)
    assert torch.equal(loaded.sample(x, 3, generator=gen(5)), model.sample(x, 3, generator=gen(5)))


def test_mismatched_baselines_and_autoregression_are_refused_under_a_categorical_likelihood():
    for baseline_likelihood, likelihood in ((Gaussian(), Categorical(3)), (Categorical(4), Categorical(3)),
                                            (Categorical(3), Gaussian())):
        baseline = Regressor(X_DIM, Y_DIM, hidden=(4,), likelihood=baseline_likelihood)
        expected = rf"baseline= is a Regressor with the {re.escape(repr(baseline_likelihood))} likelihood, which"
        with pytest.raises(ValueError, match=expected):
            ConditionalVAE(X_DIM, Y_DIM, hidden=(4,), likelihood=likelihood, baseline=baseline)
    ConditionalVAE(X_DIM, Y_DIM, hidden=(4,), likelihood=Laplace(),  # real-valued both: as before
                   baseline=Regressor(X_DIM, Y_DIM, hidden=(4,), likelihood=Gaussian()))
    term = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match=r"autoregression= works with the likelihoods of real-valued y only, not "
                                         r"Categorical\(num_classes=3\)"):
        ConditionalVAE(X_DIM, Y_DIM, hidden=(4,), likelihood=Categorical(3), autoregression=term)
    with pytest.raises(ValueError, match="autoregression= works with the likelihoods of real-valued y only"):
        Regressor(X_DIM, Y_DIM, hidden=(4,), likelihood=Categorical(3), autoregression=term)


@pytest.mark.usefixtures("one_thread")
def test_a_laplace_conditional_vae_fits_and_samples():
    model = ConditionalVAE(X_DIM, 1, z_dim=2, hidden=(8,), likelihood=Laplace())
    x = CLASS_TRAIN[0]
    y = x[:, :1] + 0.3 * torch.randn(128, 1, generator=gen(6))
    fit(model, (x, y), (x[:32], y[:32]), epochs=2, **QUIET)
    draws = model.sample(x[:4], 3, generator=gen(7))
    assert draws.shape == (3, 4, 1) and draws.dtype == torch.float32 and torch.isfinite(draws).all()
    assert torch.isfinite(estimators.cll_importance(model, x[:8], y[:8], 10, progress=False)).all()
