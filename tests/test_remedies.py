"""The training options against posterior collapse (free bits, the auxiliary loss) and dynamic binarization of
the targets, each against what it must equal."""

import copy

import pytest
import torch

from cvae import CVAE, BaselineNet, ConditionalVAE, QuadrantTask
from cvae.distributions import kl_divergence_per_dimension
from cvae.objectives import elbo, hybrid_objective, training_loss
from cvae.settings import TrainingSettings
from cvae.training import batch_loss, binarized, validation_loss

Z_DIM = 4


def data(n: int = 32):
    return QuadrantTask(1).split(torch.rand(n, 784, generator=torch.Generator().manual_seed(0)))


def model(ar_weights: float = 0.0) -> CVAE:
    """A small CVAE with a 3x3 autoregressive term; its weights drawn at scale ar_weights (0: the term is 0)."""
    torch.manual_seed(0)
    cvae = CVAE(BaselineNet(1, hidden=(16, 16)), z_dim=Z_DIM, hidden=(16, 16), autoregressive=True, ar_window=3)
    if ar_weights:
        torch.nn.init.normal_(cvae.autoregression.weight, std=ar_weights)
    return cvae


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1)


def remedied_elbo_loss(cvae: CVAE, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                       **remedies: float) -> torch.Tensor:
    """The training loss of the one ELBO with its remedies: the batch mean, negated."""
    return -elbo(cvae, x, y, 1, generator, batch_mean=True, **remedies)


def test_with_both_remedies_off_the_loss_is_the_negative_elbo():
    cvae, (x, y) = model(0.3), data()
    torch.testing.assert_close(remedied_elbo_loss(cvae, x, y, gen()), -elbo(cvae, x, y, 1, gen()).mean())


def test_free_bits_charge_each_dimension_at_least_its_allowance():
    cvae, (x, y) = model(), data()
    allowance = 0.05
    loss = remedied_elbo_loss(cvae, x, y, gen(), free_bits=allowance)
    per_dimension = kl_divergence_per_dimension(cvae.posterior(x, y), cvae.prior(x)).mean(0)
    assert (per_dimension < allowance).any() and (per_dimension > allowance).any()  # the clamp matters here
    reconstruction = -elbo(cvae, x, y, 1, gen()).mean() - per_dimension.sum()
    torch.testing.assert_close(loss, reconstruction + per_dimension.clamp(min=allowance).sum())


def test_under_free_bits_no_gradient_pulls_the_posterior_to_the_prior():
    """Above every dimension's KL, the allowance is a constant: the prior net (which only the KL term uses) gets no
    gradient, and the loss is the reconstruction term plus z_dim x the allowance."""
    cvae, (x, y) = model(), data()
    for free_bits, prior_moves in ((0.0, True), (1e3, False)):
        cvae.zero_grad()
        loss = training_loss(cvae, x, y, generator=gen(), free_bits=free_bits)
        loss.backward()
        gradient = sum(p.grad.abs().sum() for p in cvae.prior_net.parameters())
        assert (gradient > 0) == prior_moves
    reconstruction = -elbo(cvae, x, y, 1, gen(), kl_weight=0.0).mean()
    torch.testing.assert_close(loss, reconstruction + Z_DIM * 1e3)


def test_the_auxiliary_loss_is_the_likelihood_without_the_autoregressive_term():
    cvae, (x, y) = model(0.3), data()
    without_term = copy.deepcopy(cvae)
    without_term.autoregression = None
    weight = 0.7
    extra = remedied_elbo_loss(cvae, x, y, gen(), aux_weight=weight) - remedied_elbo_loss(cvae, x, y, gen())
    z = cvae.posterior(x, y).rsample((1,), generator=gen())
    expected = -weight * without_term.log_likelihood(x, y, z).mean()
    torch.testing.assert_close(extra, expected)
    assert not torch.allclose(expected, -weight * cvae.log_likelihood(x, y, z).mean())  # the term is really left out


def test_remedies_are_refused_for_other_objectives():
    cvae, (x, y) = model(), data()
    with pytest.raises(ValueError, match="change the ELBO objective"):
        training_loss(cvae, x, y, generator=gen(), objective="iwae", free_bits=0.1)
    with pytest.raises(ValueError, match="change the ELBO objective"):
        TrainingSettings(objective="gsnn", aux_weight=1.0)


def test_binarized_targets_are_bernoulli_draws_of_the_gray_levels():
    y = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).repeat(40_000, 1)
    b = binarized(y, gen())
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert (b[:, 0] == 0).all() and (b[:, -1] == 1).all()
    standard_error = (y[0] * (1 - y[0]) / len(y)).sqrt()
    assert ((b.mean(0) - y[0]).abs() <= 4 * standard_error + 1e-12).all()


def test_sample_targets_trains_on_draws_from_the_noise_generator_and_validates_on_one_fixed_draw():
    cvae, (x, y) = model(0.3), data()
    settings = TrainingSettings(sample_targets=True, seed=5)
    noise = gen()
    loss = batch_loss(settings, cvae, x, y, generator=noise)
    replay = gen()
    b = binarized(y, replay)
    torch.testing.assert_close(loss, training_loss(cvae, x, b, generator=replay))
    assert not torch.allclose(loss, training_loss(cvae, x, y, generator=gen()))
    first, second = validation_loss(cvae, (x, y), settings), validation_loss(cvae, (x, y), settings)
    assert first == second  # the same draws b (and z) at every epoch


def test_free_bits_and_the_auxiliary_loss_are_quantities_of_a_batch():
    cvae, (x, y) = model(), data()
    for remedy in ({"free_bits": 0.1}, {"aux_weight": 0.5}):
        with pytest.raises(ValueError, match="batch_mean=True and num_samples=1"):
            elbo(cvae, x, y, 1, gen(), **remedy)
        with pytest.raises(ValueError, match="batch_mean=True and num_samples=1"):
            elbo(cvae, x, y, 2, gen(), batch_mean=True, **remedy)


def test_the_pieces_of_a_batch_are_computed_once_for_every_objective(monkeypatch):
    """The hybrid's ELBO and GSNN parts share the batch's context and prior: the baseline, the prior net and the
    recognition net run once each."""
    cvae, (x, y) = model(), data()
    calls = {"context": 0, "posterior": 0, "prior": 0}
    for name in calls:
        method = getattr(cvae, name)

        def counted(*args, _method=method, _name=name, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(cvae, name, counted)
    hybrid_objective(cvae, x, y, 0.5, gen())
    assert calls == {"context": 1, "posterior": 1, "prior": 1}


def per_dimension_kl(cvae: CVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KL(q(z_j|x,y) || p(z_j|x)) per example and latent dimension, (N, z_dim), with torch.distributions."""
    q, p = cvae.posterior(x, y), cvae.prior(x)
    return torch.distributions.kl_divergence(torch.distributions.Normal(q.loc, q.scale),
                                             torch.distributions.Normal(p.loc, p.scale))


@pytest.mark.parametrize("kl_weight", [0.0, 0.3])
def test_under_a_kl_warmup_the_remedied_loss_weights_its_kl_term(kl_weight):
    """loss = -mean_n log p(y_n|x_n,z_n) + beta * KL_fb - aux * mean_n log p_g(y_n|x_n,z_n), with KL_fb the free bits'
    sum_j max(allowance, mean_n KL_nj), or the KL itself without free bits: beta scales the KL term alone."""
    cvae, (x, y) = model(0.3), data()
    reconstruction = -elbo(cvae, x, y, 1, gen(), kl_weight=0.0).mean()
    kl = per_dimension_kl(cvae, x, y)
    auxiliary = remedied_elbo_loss(cvae, x, y, gen(), aux_weight=0.7) - remedied_elbo_loss(cvae, x, y, gen())
    for free_bits in (0.0, 0.05):
        charged = kl.mean(0).clamp(min=free_bits).sum()
        for aux_weight in (0.0, 0.7):
            loss = remedied_elbo_loss(cvae, x, y, gen(), kl_weight=kl_weight, free_bits=free_bits,
                                      aux_weight=aux_weight)
            expected = reconstruction + kl_weight * charged + (auxiliary if aux_weight else 0.0)
            torch.testing.assert_close(loss, expected)


def test_with_both_remedies_off_the_loss_is_the_negative_elbo_under_a_mixture_prior():
    """Free bits need the KL per dimension in closed form (one Gaussian prior); with both remedies off the loss is
    -ELBO under any prior, the KL of a mixture estimated on the same draw."""
    torch.manual_seed(0)
    cvae = ConditionalVAE(3, 2, z_dim=2, hidden=(8,), prior_components=3)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    torch.testing.assert_close(remedied_elbo_loss(cvae, x, y, gen()), -elbo(cvae, x, y, 1, gen()).mean())
    with pytest.raises(ValueError, match="free bits need a Gaussian prior"):
        remedied_elbo_loss(cvae, x, y, gen(), free_bits=0.1)


def test_the_auxiliary_loss_alone_works_under_a_mixture_prior_and_adds_its_weight_times_one_likelihood():
    """The auxiliary loss needs no KL per dimension: under a mixture prior the objective is the ELBO (its KL estimated
    on the draw) plus aux_weight times a log-likelihood, so it is linear in aux_weight for a fixed draw."""
    torch.manual_seed(0)
    cvae = ConditionalVAE(3, 2, z_dim=2, hidden=(8,), prior_components=3)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    values = [elbo(cvae, x, y, 1, gen(), batch_mean=True, aux_weight=w).item() for w in (0.25, 0.5, 1.0)]
    assert values[2] - values[1] == pytest.approx(2 * (values[1] - values[0]), rel=1e-4)
    assert values[2] != values[1]
