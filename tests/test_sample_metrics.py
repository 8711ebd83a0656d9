"""Sample metrics against known answers: best-of-K error, the classifier's plausibility, diversity and distinct
labels, the KL term per image, and the active units (Burda et al.'s, measured from a prior that moves with x)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as td
from torch import nn

from cvae.conditional_vae import ConditionalVAE
from cvae.distributions import DiagonalGaussian, GaussianMixture, kl_divergence
from cvae.likelihoods import Bernoulli
from cvae.paper.sample_metrics import (
    ACTIVE_THRESHOLD,
    active_units,
    best_of_k_error,
    classifier_scores,
    latent_kl,
    latent_statistics,
    prior_offsets,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_best_of_k_error_is_the_smallest_summed_squared_error():
    truth = torch.tensor([[0.0, 1.0, 0.5], [1.0, 1.0, 1.0]])
    samples = torch.stack([truth + 0.5, truth, truth - 0.1])  # (3, 2, 3)
    torch.testing.assert_close(best_of_k_error(samples, truth), torch.zeros(2))  # a sample equal to the truth
    samples = torch.stack([truth + 0.5, truth - 0.1, truth + torch.tensor([0.3, 0.0, 0.0])])
    # per image: sample 1 sums 3 x 0.01 = 0.03 (summed, not averaged, over pixels); sample 2 gives 0.09
    torch.testing.assert_close(best_of_k_error(samples, truth), torch.tensor([0.03, 0.03]))
    torch.testing.assert_close(best_of_k_error(samples[:1], truth), torch.tensor([0.75, 0.75]))


def one_hot_probs(labels: list[list[int]], classes: int = 10, top: float = 1.0) -> torch.Tensor:
    """probs (K, N, C) with probability ``top`` on labels[k][n] and the rest spread evenly."""
    labels = torch.tensor(labels)
    rest = (1 - top) / (classes - 1)
    probs = torch.full((*labels.shape, classes), rest, dtype=torch.float64)
    probs.scatter_(-1, labels[..., None], top)
    return probs


def test_identical_samples_have_no_diversity_and_one_label():
    scores = classifier_scores(one_hot_probs([[3, 7]] * 10, top=0.8))
    torch.testing.assert_close(scores["diversity"], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(scores["distinct"], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(scores["plausibility"], torch.full((2,), 0.8, dtype=torch.float64))


def test_k_different_labels_have_entropy_log_k():
    k = 6
    scores = classifier_scores(one_hot_probs([[c, (c + 1) % 10] for c in range(k)]))
    torch.testing.assert_close(scores["diversity"], torch.full((2,), math.log(k), dtype=torch.float64))
    torch.testing.assert_close(scores["distinct"], torch.full((2,), float(k), dtype=torch.float64))
    # labels 1, 1, 2, 2, 2, 5 of K = 6: entropy of (1/3, 1/2, 1/6)
    scores = classifier_scores(one_hot_probs([[1], [1], [2], [2], [2], [5]], top=0.5))
    expected = -(1 / 3 * math.log(1 / 3) + 1 / 2 * math.log(1 / 2) + 1 / 6 * math.log(1 / 6))
    assert scores["diversity"].item() == pytest.approx(expected)
    assert scores["distinct"].item() == 3
    assert scores["plausibility"].item() == pytest.approx(0.5)


def test_plausibility_is_the_mean_top_probability():
    probs = torch.tensor([[[0.7, 0.2, 0.1]], [[0.1, 0.5, 0.4]]])  # K = 2, N = 1, C = 3
    assert classifier_scores(probs)["plausibility"].item() == pytest.approx(0.6)


def test_collapsed_posterior_has_no_active_units_and_a_unit_of_variance_one_is_counted():
    assert active_units(torch.full((100, 5), 0.3)) == 0
    signs = torch.tensor([1.0, -1.0]).repeat(50)  # unbiased sample variance 100 / 99
    means = torch.zeros(100, 5)
    means[:, 2] = signs * math.sqrt(99 / 100)  # exactly 1
    means[:, 4] = signs * 0.05  # about 0.0025: below the threshold 0.01
    assert active_units(means) == 1
    assert active_units(means, threshold=0.002) == 2


def test_latent_kl_is_the_closed_form_for_a_gaussian_prior_and_its_estimate_for_a_mixture():
    q = DiagonalGaussian(torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([[1.0, 0.5], [1.0, 2.0]]))
    p = DiagonalGaussian(torch.zeros(2, 2), torch.ones(2, 2))
    torch.testing.assert_close(latent_kl(q, p), kl_divergence(q, p))
    # a mixture of two identical components is that Gaussian: the Monte Carlo estimate converges to the same KL
    mixture = GaussianMixture(torch.zeros(2, 2), torch.zeros(2, 2, 2), torch.ones(2, 2, 2))
    estimate = latent_kl(q, mixture, num_samples=20_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(estimate, kl_divergence(q, p), atol=0.05, rtol=0)


def test_latent_statistics_of_a_model():
    torch.manual_seed(0)
    model = ConditionalVAE(3, 4, z_dim=2, hidden=(8,), likelihood=Bernoulli(), prior_components=1)
    x, y = torch.randn(5, 3), torch.rand(5, 4)
    kl, offsets = latent_statistics(model, x, y)
    assert kl.shape == (5,) and offsets.shape == (5, 2)
    posterior, prior = model.posterior(x, y), model.prior(x)
    torch.testing.assert_close(offsets, ((posterior.loc - prior.loc) / prior.scale).detach())
    torch.testing.assert_close(kl, kl_divergence(posterior, prior).detach())


class Affine(nn.Module):
    """A Gaussian head's input (N, 2 z_dim) = [a + B x, raw scale c + D x], of the first x_dim columns of its input
    (so that a recognition net of [x, y] and a prior net of x can be the same function of x)."""

    def __init__(self, x_dim: int, z_dim: int):
        super().__init__()
        self.x_dim = x_dim
        self.linear = nn.Linear(x_dim, 2 * z_dim)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.linear(inputs[:, :self.x_dim])


def test_a_posterior_equal_to_a_prior_that_moves_with_x_has_no_active_units():
    """q(z|x,y) = p(z|x) exactly: z carries nothing about y (KL 0), so no unit is active, although the posterior
    means vary with x (Var_x E_q[z_u] > 0.01 for all 4 units: Burda et al.'s count under a fixed prior says 4)."""
    torch.manual_seed(0)
    net = Affine(3, 4)
    model = ConditionalVAE(3, 2, z_dim=4, likelihood=Bernoulli(), recognition=net, prior=net, prior_components=1)
    x, y = torch.randn(200, 3) * 2, torch.rand(200, 2)
    kl, offsets = latent_statistics(model, x, y)
    assert kl.abs().max() < 1e-6
    assert (model.posterior(x, y).loc.var(0) > 0.01).all()  # the means move with x
    assert active_units(offsets) == 0


def test_a_unit_whose_posterior_mean_moves_with_y_away_from_the_prior_is_active():
    """q(z|x,y) = N(E_p[z|x] + sd_p[z|x] * g(y), ...) with g(y) of variance 1 on unit 0 only: offsets g(y), one active
    unit, whatever the prior's mean and scale."""
    generator = torch.Generator().manual_seed(0)
    loc, scale = torch.randn(100, 3, generator=generator) * 5, torch.rand(100, 3, generator=generator) + 0.1
    prior = DiagonalGaussian(loc, scale)
    shift = torch.zeros(100, 3)
    shift[:, 0] = torch.tensor([1.0, -1.0]).repeat(50)  # y's part: variance 100 / 99
    posterior = DiagonalGaussian(prior.loc + prior.scale * shift, torch.ones(100, 3))
    torch.testing.assert_close(prior_offsets(posterior, prior), shift)
    assert active_units(prior_offsets(posterior, prior)) == 1


def test_offsets_are_burdas_posterior_means_under_a_standard_normal_prior_and_invariant_to_affine_maps_of_z():
    """delta = (E_q[z] - E_p[z]) / sd_p[z]: the posterior mean under N(0, I); unchanged when z -> a(x) + b(x) z maps
    q and p alike (b(x) > 0 per unit), the map a generation net that sees x can undo."""
    generator = torch.Generator().manual_seed(1)
    q = DiagonalGaussian(torch.randn(50, 3, generator=generator), torch.rand(50, 3, generator=generator) + 0.1)
    p = DiagonalGaussian(torch.randn(50, 3, generator=generator), torch.rand(50, 3, generator=generator) + 0.1)
    torch.testing.assert_close(prior_offsets(q, DiagonalGaussian(torch.zeros(50, 3), torch.ones(50, 3))), q.loc)
    a, b = torch.randn(50, 3, generator=generator) * 3, torch.rand(50, 3, generator=generator) * 4 + 0.1
    mapped_q, mapped_p = (DiagonalGaussian(a + b * d.loc, b * d.scale) for d in (q, p))
    torch.testing.assert_close(prior_offsets(mapped_q, mapped_p), prior_offsets(q, p))


def test_offsets_from_a_mixture_prior_use_its_mean_and_standard_deviation():
    generator = torch.Generator().manual_seed(2)
    logits, loc = torch.randn(6, 4, generator=generator), torch.randn(6, 4, 2, generator=generator) * 2
    scale = torch.rand(6, 4, 2, generator=generator) + 0.2
    q = DiagonalGaussian(torch.randn(6, 2, generator=generator), torch.ones(6, 2))
    reference = td.MixtureSameFamily(td.Categorical(logits=logits), td.Independent(td.Normal(loc, scale), 1))
    torch.testing.assert_close(prior_offsets(q, GaussianMixture(logits, loc, scale)),
                               (q.loc - reference.mean) / reference.variance.sqrt())


def test_the_threshold_is_on_the_unbiased_variance_strictly_and_is_burdas_001():
    """A_u = (1/(N-1)) sum_n (delta_nu - mean_u)^2 > 0.01: a unit of variance 0.0101 is active and one of 0.0099 is
    not (the biased variance of the first, 0.0101 x 99/100, is below 0.01); a unit that never moves is inactive
    even at threshold 0."""
    assert ACTIVE_THRESHOLD == 0.01
    signs = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(50)
    offsets = torch.zeros(100, 3, dtype=torch.float64)
    offsets[:, 0] = signs * math.sqrt(0.0101 * 99 / 100)
    offsets[:, 1] = signs * math.sqrt(0.0099 * 99 / 100)
    assert offsets[:, 0].var().item() == pytest.approx(0.0101) and offsets[:, 1].var().item() == pytest.approx(0.0099)
    assert active_units(offsets) == 1
    assert active_units(offsets, threshold=0.0) == 2  # the third, constant, is never active


@pytest.mark.parametrize("call, needle", [
    (lambda: best_of_k_error(torch.zeros(2, 3), torch.zeros(2, 3)), "samples must be"),
    (lambda: best_of_k_error(torch.zeros(0, 2, 3), torch.zeros(2, 3)), "samples must be"),
    (lambda: best_of_k_error(torch.zeros(1, 2, 3), torch.zeros(3, 3)), "must agree"),
    (lambda: best_of_k_error(torch.zeros(1, 2, 3), torch.zeros(6)), "truth must be"),
    (lambda: classifier_scores(torch.zeros(2, 10)), "probs must be"),
    (lambda: classifier_scores(torch.zeros(0, 2, 10)), "probs must be"),
    (lambda: classifier_scores(torch.randn(2, 3, 10)), "probs must hold probabilities"),
    (lambda: active_units(torch.zeros(1, 3)), "at least 2"),
    (lambda: active_units(torch.zeros(5)), "offsets must be"),
    (lambda: latent_kl(DiagonalGaussian(torch.zeros(1, 1), torch.ones(1, 1)),
                       DiagonalGaussian(torch.zeros(1, 1), torch.ones(1, 1)), num_samples=0), "num_samples"),
])
def test_bad_input_is_a_value_error_naming_the_argument(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()


def test_latent_statistics_are_the_same_in_blocks_and_their_mixture_kl_comes_from_the_generator(monkeypatch):
    """The values of an image do not depend on the block it is computed in; under a mixture prior the KL's draw of z
    comes from the generator alone (one draw by default), whatever the global random state."""
    import cvae.paper.sample_metrics as sample_metrics
    torch.manual_seed(0)
    model = ConditionalVAE(3, 4, z_dim=2, hidden=(8,), likelihood=Bernoulli(), prior_components=3)
    x, y = torch.randn(5, 3), torch.rand(5, 4)
    whole = latent_statistics(model, x, y, torch.Generator().manual_seed(1))
    torch.manual_seed(123)  # another global state: no draw may come from it
    again = latent_statistics(model, x, y, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(whole, again))
    with torch.no_grad():
        posterior, prior = model.posterior(x, y), model.prior(x)
        z = posterior.rsample((1,), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(whole[0], (posterior.log_prob(z) - prior.log_prob(z))[0])
        torch.testing.assert_close(latent_kl(posterior, prior, generator=torch.Generator().manual_seed(1)), whole[0])
    monkeypatch.setattr(sample_metrics, "BLOCK", 2)  # blocks of 2, 2 and 1 images
    _, offsets = latent_statistics(model, x, y, torch.Generator().manual_seed(1))
    torch.testing.assert_close(offsets, whole[1])
