"""The estimators' bookkeeping, checked exactly on known draws: samples taken in many chunks give what one chunk
gives (log-sum-exp over all S samples, not an average of per-chunk log-mean-exps), and the 1/S is log S."""

import math

import pytest
import torch

import cvae.estimators as estimators
from cvae import ConditionalVAE, likelihoods
from cvae.distributions import DiagonalGaussian, kl_divergence

N, S = 5, 40


def model_and_data() -> tuple[ConditionalVAE, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = ConditionalVAE(3, 4, z_dim=2, hidden=(8,), likelihood=likelihoods.Bernoulli(), prior_components=1)
    model = model.double().eval()
    with torch.no_grad():
        model.generation_net.from_z.weight.mul_(6.0)  # log p(y|x,z) varies by many nats over z
    x = torch.randn(N, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = (torch.rand(N, 4, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    return model, x, y


class Bank:
    """Gaussian draws of z taken in order from a fixed bank of standard normals, however they are chunked."""

    def __init__(self) -> None:
        self.eps = torch.randn(S, N, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        self.taken = 0

    def rsample(self, gaussian: DiagonalGaussian, sample_shape=(), generator=None) -> torch.Tensor:
        part = self.eps[self.taken:self.taken + sample_shape[0]]
        self.taken += sample_shape[0]
        return gaussian.loc + gaussian.scale * part


@pytest.fixture
def bank(monkeypatch: pytest.MonkeyPatch) -> Bank:
    bank = Bank()
    monkeypatch.setattr(DiagonalGaussian, "rsample", lambda self, *args, **kwargs: bank.rsample(self, *args, **kwargs))
    monkeypatch.setattr(estimators, "EXAMPLE_BLOCK", N)
    return bank


def by_hand(model: ConditionalVAE, x, y, eps: torch.Tensor, proposal: str) -> torch.Tensor:
    """-log (1/S) sum_s w_s over all the draws eps (S, N, z_dim) at once."""
    with torch.no_grad():
        prior, posterior = model.prior(x), model.posterior(x, y)
        source = prior if proposal == "prior" else posterior
        z = source.loc + source.scale * eps
        log_weights = model.log_likelihood(x, y, z)
        if proposal == "posterior":
            log_weights = log_weights + prior.log_prob(z) - posterior.log_prob(z)
    return -(torch.logsumexp(log_weights, dim=0) - math.log(eps.shape[0]))


@pytest.mark.parametrize("estimator, proposal", [(estimators.cll_importance, "posterior"),
                                                 (estimators.cll_monte_carlo, "prior")])
def test_samples_in_many_chunks_give_exactly_the_estimate_of_one_chunk(bank, monkeypatch, estimator, proposal):
    model, x, y = model_and_data()
    expected = by_hand(model, x, y, bank.eps, proposal)
    monkeypatch.setattr(estimators, "MAX_ROWS", 10**9)
    one_chunk = estimator(model, x, y, S)
    bank.taken = 0
    monkeypatch.setattr(estimators, "MAX_ROWS", 3 * N)  # chunks of 3 samples: 13 of 3 and one of 1
    many_chunks = estimator(model, x, y, S)
    torch.testing.assert_close(one_chunk, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(many_chunks, expected, rtol=1e-12, atol=1e-12)
    # the wrong combination, an average of the chunks' own estimates, is far from it on these draws
    per_chunk = torch.stack([by_hand(model, x, y, bank.eps[i:i + 3], proposal) for i in range(0, S, 3)]).mean(0)
    assert (per_chunk - expected).abs().max() > 0.05


def test_the_mean_over_samples_divides_by_s_not_by_the_chunk(bank, monkeypatch):
    model, x, y = model_and_data()
    with torch.no_grad():
        model.generation_net.from_z.weight.zero_()  # log p(y|x,z) no longer depends on z
        constant = model.log_likelihood(x, y, torch.zeros(N, 2, dtype=torch.float64))
        kl = kl_divergence(model.posterior(x, y), model.prior(x))
    monkeypatch.setattr(estimators, "MAX_ROWS", 3 * N)
    for num_samples in (1, 3, 7, S):  # whole chunks and a partial last chunk
        # every weight is p(y|x): -log (1/S) sum_s p(y|x) = -log p(y|x) exactly when the 1/S is log S
        bank.taken = 0
        torch.testing.assert_close(estimators.cll_monte_carlo(model, x, y, num_samples), -constant,
                                   rtol=1e-12, atol=1e-12)
        bank.taken = 0
        torch.testing.assert_close(estimators.negative_elbo(model, x, y, num_samples), kl - constant,
                                   rtol=1e-12, atol=1e-12)
