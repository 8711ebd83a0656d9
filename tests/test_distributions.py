"""The hand-written probability math against independent references: torch.distributions, scipy,
and Monte Carlo."""

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import distributions as td

from cvae.distributions import (
    DiagonalGaussian,
    GaussianMixture,
    bernoulli_log_likelihood,
    kl_divergence,
    kl_divergence_per_dimension,
)


def random_gaussian(*shape: int, seed: int = 0) -> DiagonalGaussian:
    generator = torch.Generator().manual_seed(seed)
    loc = torch.randn(*shape, generator=generator, dtype=torch.float64) * 2
    scale = torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 + 0.1
    return DiagonalGaussian(loc, scale)


def test_log_prob_matches_torch_distributions_normal():
    q = random_gaussian(5, 3)
    value = torch.randn(4, 5, 3, dtype=torch.float64)
    expected = td.Normal(q.loc, q.scale).log_prob(value).sum(-1)
    torch.testing.assert_close(q.log_prob(value), expected)


def test_log_prob_matches_scipy_norm():
    q = random_gaussian(6, 4, seed=1)
    value = torch.randn(6, 4, dtype=torch.float64)
    expected = scipy.stats.norm.logpdf(value.numpy(), q.loc.numpy(), q.scale.numpy()).sum(-1)
    torch.testing.assert_close(q.log_prob(value), torch.from_numpy(expected))


def test_kl_matches_torch_distributions_closed_form():
    q, p = random_gaussian(7, 5, seed=2), random_gaussian(7, 5, seed=3)
    expected = td.kl_divergence(td.Normal(q.loc, q.scale), td.Normal(p.loc, p.scale)).sum(-1)
    torch.testing.assert_close(kl_divergence(q, p), expected)


def test_kl_per_dimension_is_each_coordinates_kl_and_sums_to_the_kl():
    q, p = random_gaussian(7, 5, seed=2), random_gaussian(7, 5, seed=3)
    expected = td.kl_divergence(td.Normal(q.loc, q.scale), td.Normal(p.loc, p.scale))
    torch.testing.assert_close(kl_divergence_per_dimension(q, p), expected)
    torch.testing.assert_close(kl_divergence_per_dimension(q, p).sum(-1), kl_divergence(q, p))


def test_kl_matches_monte_carlo_estimate():
    q, p = random_gaussian(3, 2, seed=4), random_gaussian(3, 2, seed=5)
    z = q.rsample((400_000,), generator=torch.Generator().manual_seed(0))
    estimate = (q.log_prob(z) - p.log_prob(z)).mean(0)
    torch.testing.assert_close(kl_divergence(q, p), estimate, atol=0.05, rtol=0.01)


def test_kl_of_a_distribution_with_itself_is_zero_and_otherwise_positive():
    q, p = random_gaussian(4, 3, seed=6), random_gaussian(4, 3, seed=7)
    torch.testing.assert_close(kl_divergence(q, q), torch.zeros(4, dtype=torch.float64))
    assert (kl_divergence(q, p) > 0).all()


def test_rsample_has_the_right_moments_and_shape():
    q = random_gaussian(2, 3, seed=8)
    z = q.rsample((200_000,), generator=torch.Generator().manual_seed(1))
    assert z.shape == (200_000, 2, 3)
    torch.testing.assert_close(z.mean(0), q.loc, atol=0.03, rtol=0.01)
    torch.testing.assert_close(z.std(0), q.scale, atol=0.03, rtol=0.01)


def test_gradients_flow_through_rsample_to_loc_and_scale():
    loc = torch.tensor([0.5, -1.0], requires_grad=True)
    scale = torch.tensor([1.5, 0.3], requires_grad=True)
    generator = torch.Generator().manual_seed(2)
    z = DiagonalGaussian(loc, scale).rsample((10,), generator=generator)
    z.square().sum().backward()
    eps = torch.randn(10, 2, generator=torch.Generator().manual_seed(2))
    # d/dloc sum (loc + scale eps)^2 = 2 sum z ;  d/dscale = 2 sum z eps
    torch.testing.assert_close(loc.grad, 2 * z.detach().sum(0))
    torch.testing.assert_close(scale.grad, 2 * (z.detach() * eps).sum(0))


def test_rsample_is_reproducible_with_a_seeded_generator():
    q = random_gaussian(3, 2, seed=9)
    a = q.rsample((5,), generator=torch.Generator().manual_seed(3))
    b = q.rsample((5,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_mismatched_loc_and_scale_are_rejected():
    with pytest.raises(ValueError, match="differ in shape"):
        DiagonalGaussian(torch.zeros(3), torch.ones(4))


def test_bernoulli_log_likelihood_matches_torch_distributions_on_binary_targets():
    logits = torch.randn(6, 20, dtype=torch.float64) * 4
    targets = (torch.rand(6, 20) > 0.5).double()
    expected = td.Bernoulli(logits=logits).log_prob(targets).sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, targets), expected)


def test_bernoulli_log_likelihood_is_negative_cross_entropy_on_grayscale_targets():
    logits = torch.randn(6, 20, dtype=torch.float64) * 4
    targets = torch.rand(6, 20, dtype=torch.float64)
    expected = -F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, targets), expected)


def test_bernoulli_log_likelihood_is_stable_for_extreme_logits():
    logits = torch.tensor([[100.0, -100.0]])
    value = bernoulli_log_likelihood(logits, torch.tensor([[1.0, 0.0]]))
    assert torch.isfinite(value).all() and value.abs().item() < 1e-30


def random_mixture(seed: int = 0) -> tuple[GaussianMixture, td.MixtureSameFamily]:
    """A mixture of K = 3 diagonal Gaussians over D = 2, for N = 4, and the same with torch.distributions."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 3, generator=generator, dtype=torch.float64) * 2
    loc = torch.randn(4, 3, 2, generator=generator, dtype=torch.float64) * 2
    scale = torch.rand(4, 3, 2, generator=generator, dtype=torch.float64) + 0.2
    reference = td.MixtureSameFamily(td.Categorical(logits=logits), td.Independent(td.Normal(loc, scale), 1))
    return GaussianMixture(logits, loc, scale), reference


def test_moments_match_torch_distributions():
    """E[z] and the standard deviation of each coordinate, of one Gaussian and of a mixture (the law of total
    variance), against torch.distributions."""
    q = random_gaussian(5, 3)
    torch.testing.assert_close(q.mean, td.Normal(q.loc, q.scale).mean)
    torch.testing.assert_close(q.stddev, td.Normal(q.loc, q.scale).stddev)
    mixture, reference = random_mixture()
    torch.testing.assert_close(mixture.weights, reference.mixture_distribution.probs)
    torch.testing.assert_close(mixture.mean, reference.mean)
    torch.testing.assert_close(mixture.stddev, reference.variance.sqrt())


def test_mixture_log_prob_and_draws_match_torch_distributions():
    """log sum_k w_k N(z; loc_k, scale_k^2) against torch.distributions; draws with the mixture's mean and variance."""
    mixture, reference = random_mixture(1)
    z = torch.randn(7, 4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    torch.testing.assert_close(mixture.log_prob(z), reference.log_prob(z))
    draws = mixture.rsample((100_000,), generator=torch.Generator().manual_seed(3))
    assert draws.shape == (100_000, 4, 2)
    standard_error = reference.variance.sqrt() / 100_000**0.5
    assert ((draws.mean(0) - reference.mean).abs() < 4 * standard_error).all()
    torch.testing.assert_close(draws.var(0), reference.variance, rtol=0.03, atol=0)


def test_leading_dimensions_of_any_number_are_the_batch_and_the_last_one_the_event():
    """A (2, 3) batch of Gaussians and of mixtures of K = 5 over D = 4 against torch.distributions: densities of
    values with fewer, as many and more dimensions than the batch (broadcast), the KL, the moments, and draws of
    every sample shape, each image's draws from its own distribution."""
    generator = torch.Generator().manual_seed(10)
    q, p = random_gaussian(2, 3, 4, seed=10), random_gaussian(2, 3, 4, seed=11)
    reference_q, reference_p = (td.Independent(td.Normal(d.loc, d.scale), 1) for d in (q, p))
    logits = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)
    loc = torch.randn(2, 3, 5, 4, generator=generator, dtype=torch.float64) * 3
    scale = torch.rand(2, 3, 5, 4, generator=generator, dtype=torch.float64) * 0.5 + 0.1
    mixture = GaussianMixture(logits, loc, scale)
    reference = td.MixtureSameFamily(td.Categorical(logits=logits), td.Independent(td.Normal(loc, scale), 1))
    assert q.event_dim == mixture.event_dim == 4
    for shape in ((3, 4), (2, 3, 4), (6, 2, 3, 4)):
        value = torch.randn(*shape, generator=generator, dtype=torch.float64) * 2
        torch.testing.assert_close(q.log_prob(value), reference_q.log_prob(value))
        torch.testing.assert_close(mixture.log_prob(value), reference.log_prob(value))
    torch.testing.assert_close(kl_divergence(q, p), td.kl_divergence(reference_q, reference_p))
    torch.testing.assert_close(mixture.mean, reference.mean)
    torch.testing.assert_close(mixture.stddev, reference.variance.sqrt())
    for sample_shape in ((), (3,), (2, 2)):
        for d in (q, mixture):
            assert d.rsample(sample_shape, generator=generator).shape == (*sample_shape, 2, 3, 4)
    for d, ref in ((q, reference_q), (mixture, reference)):
        draws = d.rsample((20_000,), generator=generator)
        standard_error = ref.variance.sqrt() / 20_000**0.5
        assert ((draws.mean(0) - ref.mean).abs() < 5 * standard_error).all()
        assert ((draws.std(0) / ref.variance.sqrt() - 1).abs() < 0.05).all()
    # a draw without a sample shape comes from each image's own mixture: all near one of that image's components
    single = torch.stack([mixture.rsample(generator=generator) for _ in range(200)])  # (200, 2, 3, 4)
    distance = ((single.unsqueeze(-2) - loc) / scale).square().sum(-1).min(-1).values  # (200, 2, 3)
    assert (distance < 40).all()
