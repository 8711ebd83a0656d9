"""Sample metrics against known answers: best-of-K error, the classifier's plausibility, diversity and distinct
labels, the KL term per image, and Burda et al.'s active units."""

from __future__ import annotations

import math

import pytest
import torch

from cvae.conditional_vae import ConditionalVAE
from cvae.distributions import DiagonalGaussian, GaussianMixture, kl_divergence
from cvae.likelihoods import Bernoulli
from cvae.paper.sample_metrics import active_units, best_of_k_error, classifier_scores, latent_kl, latent_statistics

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
    kl, means = latent_statistics(model, x, y)
    assert kl.shape == (5,) and means.shape == (5, 2)
    posterior = model.posterior(x, y)
    torch.testing.assert_close(means, posterior.loc.detach())
    torch.testing.assert_close(kl, kl_divergence(posterior, model.prior(x)).detach())


@pytest.mark.parametrize("call, needle", [
    (lambda: best_of_k_error(torch.zeros(2, 3), torch.zeros(2, 3)), "samples must be"),
    (lambda: best_of_k_error(torch.zeros(0, 2, 3), torch.zeros(2, 3)), "samples must be"),
    (lambda: best_of_k_error(torch.zeros(1, 2, 3), torch.zeros(3, 3)), "must agree"),
    (lambda: best_of_k_error(torch.zeros(1, 2, 3), torch.zeros(6)), "truth must be"),
    (lambda: classifier_scores(torch.zeros(2, 10)), "probs must be"),
    (lambda: classifier_scores(torch.zeros(0, 2, 10)), "probs must be"),
    (lambda: classifier_scores(torch.randn(2, 3, 10)), "probs must hold probabilities"),
    (lambda: active_units(torch.zeros(1, 3)), "at least 2"),
    (lambda: active_units(torch.zeros(5)), "posterior_means must be"),
    (lambda: latent_kl(DiagonalGaussian(torch.zeros(1, 1), torch.ones(1, 1)),
                       DiagonalGaussian(torch.zeros(1, 1), torch.ones(1, 1)), num_samples=0), "num_samples"),
])
def test_bad_input_is_a_value_error_naming_the_argument(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()
