"""The expected log-likelihood of stochastic binarizations, E_{b ~ Bernoulli(t)} log p(b|x), against known answers:
the gray score for a factorized decoder, exact enumeration over all 2^D binary b for an autoregressive one, and
enumeration times a numerical integral over a 1-d z for a ConditionalVAE."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from cvae.conditional_vae import ConditionalVAE
from cvae.likelihoods import Bernoulli
from cvae.paper.evaluation import BLOCK, mean_and_sem
from cvae.paper.true_likelihood import binarizations, cvae_expected_nll, nn_expected_nll
from cvae.regressor import Regressor

pytestmark = pytest.mark.usefixtures("one_thread")


class LowerTriangular(nn.Module):
    """a_i = sum_{j < i} W_ij y_j: an autoregressive term that depends on earlier dimensions of y only."""

    def __init__(self, dim: int, scale: float = 3.0):
        super().__init__()
        self.weight = nn.Parameter(scale * torch.randn(dim, dim, dtype=torch.float64))
        self.register_buffer("mask", torch.ones(dim, dim, dtype=torch.float64).tril(-1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y @ (self.weight * self.mask).T


def regressor(y_dim: int, autoregression: nn.Module | None = None) -> Regressor:
    torch.manual_seed(0)
    model = Regressor(2, y_dim, (8,), Bernoulli(), autoregression=autoregression).double()
    with torch.no_grad():
        model.net[-1].weight.mul_(4.0)  # logits of a few nats, so that binarization matters
    return model


def all_binary(dim: int) -> torch.Tensor:
    """The 2^dim binary vectors, (2^dim, dim)."""
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=dim)), dtype=torch.float64)


def binarization_weights(b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """P(b | t) = prod_i t_i^b_i (1 - t_i)^(1 - b_i): b (B, D), t (N, D) -> (B, N)."""
    return torch.where(b[:, None].bool(), t, 1 - t).prod(-1)


def test_binarizations_are_bernoulli_draws_that_depend_on_the_image_only():
    y = torch.rand(700, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    draws = binarizations(y, 3, seed=5)
    assert draws.shape == (3, 700, 4) and draws.dtype == y.dtype
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(draws, binarizations(y, 3, seed=5))
    assert not torch.equal(draws, binarizations(y, 3, seed=6))
    # image n's draws do not depend on which images follow it (the last block is partial here) nor on num_draws
    assert BLOCK < 700
    assert torch.equal(binarizations(y[:600], 3, seed=5), draws[:, :600])
    assert torch.equal(binarizations(y[:10], 3, seed=5), draws[:, :10])
    assert torch.equal(binarizations(y, 5, seed=5)[:3], draws)
    # P(b = 1) = t: 0 and 1 are exact, 0.3 within 5 binomial standard errors over 80 000 draws
    constant = torch.tensor([0.0, 1.0, 0.3, 0.3]).repeat(500, 1)
    frequency = binarizations(constant, 40, seed=0).mean((0, 1))
    assert frequency[0] == 0 and frequency[1] == 1
    assert (frequency[2:] - 0.3).abs().max() < 5 * math.sqrt(0.3 * 0.7 / 20_000)


def test_factorized_decoder_expectation_is_the_gray_score():
    """E_b [sum_i b_i l_i - softplus(l_i)] = sum_i t_i l_i - softplus(l_i): linear in b."""
    model = regressor(6)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3000, 2, generator=generator, dtype=torch.float64)
    with torch.no_grad():  # gray targets near the model's own predictions, as after training
        t = torch.sigmoid(0.5 * model.params(x) + 0.5 * torch.randn(3000, 6, generator=generator,
                                                                    dtype=torch.float64))
        gray = -model.log_likelihood(x, t)
        thresholded = -model.log_likelihood(x, (t > 0.5).double())
    estimate = nn_expected_nll(model, x, t, num_draws=4, seed=0)
    assert estimate.shape == (3000,)
    difference = mean_and_sem(estimate - gray)
    assert abs(difference["mean"]) < 4 * difference["sem"]
    # thresholding at 0.5 (a fixed binarization) is far from it on the same yardstick
    assert abs((thresholded - gray).mean().item()) > 20 * difference["sem"]


def test_binary_targets_give_the_exact_likelihood_for_any_draws():
    model = regressor(3, LowerTriangular(3))
    x = torch.randn(50, 2, dtype=torch.float64)
    y = torch.randint(0, 2, (50, 3)).double()
    with torch.no_grad():
        exact = -model.log_likelihood(x, y)
    torch.testing.assert_close(nn_expected_nll(model, x, y, num_draws=2, seed=3), exact)


def test_autoregressive_decoder_matches_enumeration_over_all_binary_images():
    dim = 3
    model = regressor(dim, LowerTriangular(dim))
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(3000, 2, generator=generator, dtype=torch.float64)
    t = torch.rand(3000, dim, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    b = all_binary(dim)
    with torch.no_grad():
        log_p = torch.stack([model.log_likelihood(x, row.expand(3000, dim)) for row in b])  # (8, N)
        gray = -model.log_likelihood(x, t)
    torch.testing.assert_close(log_p.exp().sum(0), torch.ones(3000, dtype=torch.float64))  # normalized
    exact = -(binarization_weights(b, t) * log_p).sum(0)
    estimate = nn_expected_nll(model, x, t, num_draws=8, seed=0)
    difference = mean_and_sem(estimate - exact)
    assert abs(difference["mean"]) < 4 * difference["sem"]
    # with the autoregressive term the gray score is not the expectation
    assert abs((gray - exact).mean().item()) > 20 * difference["sem"]


def tiny_cvae() -> ConditionalVAE:
    torch.manual_seed(0)
    model = ConditionalVAE(1, 3, z_dim=1, hidden=(8,), likelihood=Bernoulli(), prior_components=1).double()
    with torch.no_grad():
        model.generation_net.from_z.weight.mul_(4.0)  # p(y|x,z) that varies with z
        model.generation_net.rest[-1][-1].weight.mul_(3.0)
    return model


def integrated_log_likelihood(model: ConditionalVAE, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log p(b|x) = log integral p(b|x,z) p(z|x) dz on a grid of 8001 points over the prior's loc +- 12 scale
    (trapezoid rule): x (N, 1), b (N, 3) -> (N,)."""
    with torch.no_grad():
        prior = model.prior(x)
        u = torch.linspace(-12, 12, 8001, dtype=torch.float64)
        z = prior.loc + prior.scale * u[:, None, None]  # (G, N, 1)
        integrand = (model.log_likelihood(x, b, z) + prior.log_prob(z)).exp()  # (G, N)
        return torch.trapezoid(integrand, z[..., 0], dim=0).log()


@pytest.mark.parametrize("estimator", ["importance", "monte_carlo"])
def test_cvae_estimate_matches_enumeration_and_integration_over_z(estimator):
    model = tiny_cvae()
    generator = torch.Generator().manual_seed(5)
    unique_x = torch.randn(4, 1, generator=generator, dtype=torch.float64)
    unique_t = torch.rand(4, 3, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    b = all_binary(3)
    log_p = torch.stack([integrated_log_likelihood(model, unique_x, row.expand(4, 3)) for row in b])  # (8, 4)
    torch.testing.assert_close(log_p.exp().sum(0), torch.ones(4, dtype=torch.float64))  # the integral is right
    exact = -(binarization_weights(b, unique_t) * log_p).sum(0)  # (4,)
    repeats = 400
    x, t = unique_x.repeat_interleave(repeats, 0), unique_t.repeat_interleave(repeats, 0)
    estimate = cvae_expected_nll(model, x, t, num_draws=2, num_samples=300, estimator=estimator, seed=0)
    assert estimate.shape == (4 * repeats,)
    for i in range(4):
        values = mean_and_sem(estimate[i * repeats:(i + 1) * repeats] - exact[i])
        # the estimators' O(1/S) upward bias is far below the tolerance for a 1-d z and S = 300
        assert abs(values["mean"]) < 4 * values["sem"] + 2e-3, (i, values)


def test_the_same_draws_reach_every_model():
    """Two models scored with the same y and seed see the same binarizations: with one draw, the difference of
    their estimates per image is that of their exact log-likelihoods on the same b."""
    first, second = regressor(4), regressor(4)
    with torch.no_grad():
        second.net[-1].bias.add_(1.0)
    x = torch.randn(20, 2, dtype=torch.float64)
    t = torch.rand(20, 4, dtype=torch.float64)
    b = binarizations(t, 1, seed=7)[0]
    with torch.no_grad():
        expected = second.log_likelihood(x, b) - first.log_likelihood(x, b)
    got = nn_expected_nll(first, x, t, 1, seed=7) - nn_expected_nll(second, x, t, 1, seed=7)
    torch.testing.assert_close(got, expected)


def test_a_share_of_the_blocks_gets_the_values_of_the_whole():
    """Under torchrun a process scores the images from block first_block on: the values of those images when all
    of them are scored at once (the draws of b and of z belong to the block)."""
    x = torch.randn(2 * BLOCK + 30, 2, dtype=torch.float64)
    t = torch.rand(2 * BLOCK + 30, 3, dtype=torch.float64)
    whole_nn = nn_expected_nll(regressor(3), x, t, 2, seed=4)
    torch.testing.assert_close(nn_expected_nll(regressor(3), x[BLOCK:], t[BLOCK:], 2, seed=4, first_block=1),
                               whole_nn[BLOCK:])
    assert not torch.equal(nn_expected_nll(regressor(3), x[BLOCK:], t[BLOCK:], 2, seed=4), whole_nn[BLOCK:])
    x = x[:, :1]
    model = tiny_cvae()
    whole = cvae_expected_nll(model, x, t, 1, 5, seed=4)
    torch.testing.assert_close(cvae_expected_nll(model, x[2 * BLOCK:], t[2 * BLOCK:], 1, 5, seed=4, first_block=2),
                               whole[2 * BLOCK:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_pixel_of_gray_level_0_is_never_on_and_one_of_1_always_on(dtype, monkeypatch):
    """P(b = 1) = t exactly: b = [u < t] with u in [0, 1), so t = 0 gives 0 even for u = 0, t = 1 gives 1 even for u's
    largest value 1 - eps/2, and t = 1/2 splits [0, 1) in two halves."""
    t = torch.tensor([[0.0, 1.0, 0.5]], dtype=dtype)
    largest = 1 - torch.finfo(dtype).eps / 2
    for u, expected in ((0.0, [0.0, 1.0, 1.0]), (largest, [0.0, 1.0, 0.0])):
        monkeypatch.setattr(torch, "rand", lambda *size, u=u, **kwargs: torch.full(size, u, dtype=dtype))
        assert binarizations(t, 1)[0].tolist() == [expected]


def test_every_block_every_seed_and_the_noise_of_z_draw_from_streams_of_their_own(monkeypatch):
    """The binarizations and the noise of z are independent across blocks, across seeds a few apart (0, 1, 2) and of
    each other: with t = 1/2 everywhere the draws of b of 3 blocks under 3 seeds are 9 different blocks of bits, and
    the first uniforms of the z estimator's generator of each block, read the same way, 9 more."""
    import cvae.paper.true_likelihood as true_likelihood
    t = torch.full((3 * BLOCK, 3), 0.5, dtype=torch.float64)
    x = torch.zeros(3 * BLOCK, 1, dtype=torch.float64)
    blocks = []

    def estimator(model, xb, b, num_samples, generator, progress):
        blocks.append(torch.rand(BLOCK, 3, generator=generator, dtype=torch.float64) < 0.5)
        return torch.zeros(xb.shape[0], dtype=torch.float64)

    monkeypatch.setitem(true_likelihood.CVAE_ESTIMATORS, "importance", estimator)
    model = tiny_cvae()
    for seed in range(3):
        blocks += list(binarizations(t, 1, seed)[0].bool().split(BLOCK))
        cvae_expected_nll(model, x, t, 1, 1, seed=seed)
    assert len(blocks) == 18
    assert all(not torch.equal(a, b) for i, a in enumerate(blocks) for b in blocks[i + 1:])


def test_the_seed_is_0_by_default():
    x, t = torch.randn(6, 1, dtype=torch.float64), torch.rand(6, 3, dtype=torch.float64)
    assert torch.equal(binarizations(t, 2), binarizations(t, 2, seed=0))
    inputs = torch.randn(6, 2, dtype=torch.float64)
    assert torch.equal(nn_expected_nll(regressor(3), inputs, t, 2), nn_expected_nll(regressor(3), inputs, t, 2, seed=0))
    assert torch.equal(cvae_expected_nll(tiny_cvae(), x, t, 2, 3), cvae_expected_nll(tiny_cvae(), x, t, 2, 3, seed=0))


@pytest.mark.parametrize("change, needle", [
    (dict(num_draws=0), "num_draws"),
    (dict(num_draws=True), "num_draws"),
    (dict(y=torch.full((5, 4), 1.5, dtype=torch.float64)), "y must lie in [0, 1]"),
    (dict(y=torch.rand(5, dtype=torch.float64)), "y must be"),
    (dict(x=torch.randn(4, 2, dtype=torch.float64)), "x must be"),
])
def test_bad_input_is_a_value_error_naming_the_argument(change, needle):
    model = regressor(4)
    arguments = dict(x=torch.randn(5, 2, dtype=torch.float64), y=torch.rand(5, 4, dtype=torch.float64),
                     num_draws=2) | change
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        nn_expected_nll(model, arguments["x"], arguments["y"], arguments["num_draws"])


def test_unknown_cvae_estimator_is_refused():
    model = tiny_cvae()
    with pytest.raises(ValueError, match="estimator must be one of"):
        cvae_expected_nll(model, torch.zeros(2, 1, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64),
                          1, 10, estimator="elbo")
    with pytest.raises(ValueError, match="num_draws"):
        binarizations(torch.rand(2, 3), 0)
