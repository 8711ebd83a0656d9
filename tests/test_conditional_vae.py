"""The general ConditionalVAE (any x, y): the estimators against quadrature over a 1-d latent for each likelihood
(and with a Regressor baseline, the recurrent connection, for a real-valued and a categorical y), save/load,
user-supplied modules (a convolutional generation net), input checks, ``fit`` (objectives, best weights, frozen
baseline, seeds, resumption) and ``sample``."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from cvae import ConditionalVAE, Regressor, fit, likelihoods
from cvae import training as training_module
from cvae.distributions import kl_divergence
from cvae.estimators import cll_importance, cll_monte_carlo, negative_elbo
from cvae.objectives import elbo, training_loss
from cvae.settings import TrainingSettings
from cvae.training import validation_loss

ESTIMATORS = (cll_importance, cll_monte_carlo, negative_elbo)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is faster than a busy machine's two


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def binary(n: int, d: int, seed: int) -> torch.Tensor:
    return (torch.rand(n, d, generator=gen(seed)) < 0.5).float()


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """The same keys, dtypes and values, bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def changed(module: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [key for key, value in module.state_dict().items() if not torch.equal(value, before[key])]


# ----------------------------------------------------------------------------------------------------------
# Quadrature over a 1-d latent: log p(y|x) = log integral p(y|x,z) p(z|x) dz on a dense grid
# ----------------------------------------------------------------------------------------------------------

N, X_DIM, Y_DIM = 4, 2, 3
GRID_POINTS = 40_001
NUM_SAMPLES = 200_000

# The tests that need one Gaussian p(z|x) (closed-form KL, tuned trajectories) ask for it; the default is a mixture.
GAUSSIAN_PRIOR = {"prior_components": 1}
MIXTURE = 3  # components of the mixture-prior quadrature case
CLASSES_Y = 3  # classes of each dimension of y in the categorical quadrature cases
PLAIN_FIT = {"kl_warmup": 0, "lr_halving": 0}  # the fit tests pin the paper's plain training

# likelihood, with a Regressor baseline, components of p(z|x), factor on the generation net's weights of z (so
# that log p(y|x,z) varies by a few nats over z, but not so fast that the widened q reaches regions where it is
# -100s of nats)
QUADRATURE_CASES = {
    "bernoulli": (likelihoods.Bernoulli, False, 1, 8.0),
    "gaussian": (likelihoods.Gaussian, False, 1, 1.5),
    "continuous-bernoulli": (lambda: likelihoods.ContinuousBernoulli(max_logit=None), False, 1, 8.0),
    "gaussian-with-regressor-baseline": (likelihoods.Gaussian, True, 1, 3.0),
    "bernoulli-with-mixture-prior": (likelihoods.Bernoulli, False, MIXTURE, 4.0),
    "laplace": (likelihoods.Laplace, False, 1, 1.5),
    "laplace-fixed-scale": (lambda: likelihoods.Laplace(scale=0.7), False, 1, 1.5),
    "categorical": (lambda: likelihoods.Categorical(CLASSES_Y), False, 1, 12.0),
    "categorical-with-regressor-baseline": (lambda: likelihoods.Categorical(CLASSES_Y), True, 1, 3.0),
}


def quadrature_model(likelihood: likelihoods.Likelihood, with_baseline: bool, components: int,
                     z_weight: float) -> ConditionalVAE:
    """A float64 CVAE with z_dim 1 and tiny nets whose log p(y|x,z) varies by a few nats over z, and whose
    recognition net is widened so that q(z|x,y) covers the true posterior."""
    torch.manual_seed(0)
    baseline_likelihood = likelihood if likelihood.discrete else likelihoods.Gaussian()  # predicts y in y's form
    baseline = Regressor(X_DIM, Y_DIM, hidden=(8,), likelihood=baseline_likelihood) if with_baseline else None
    prior = GAUSSIAN_PRIOR if components == 1 else {"prior_components": components}
    model = ConditionalVAE(X_DIM, Y_DIM, z_dim=1, hidden=(8,), likelihood=likelihood, baseline=baseline, **prior)
    model = model.double().eval()
    with torch.no_grad():
        model.generation_net.from_z.weight.mul_(z_weight)
        if isinstance(likelihood, (likelihoods.Gaussian, likelihoods.Laplace)) and likelihood.scale is None:
            model.generation_net.rest[-1][-1].weight[Y_DIM:].mul_(0.2)  # a scale that varies little with z
        model.recognition_net[-1].bias[1:].add_(1.0)
        if with_baseline:
            model.baseline.net[-1].weight.mul_(3.0)  # a prediction y_hat that varies with x
        if components > 1:  # components apart: [logits (K), then (loc, raw scale) of each component]
            model.prior_net[-1].bias[components::2].add_(torch.linspace(-2.0, 2.0, components, dtype=torch.float64))
            model.recognition_net[-1].bias[1:].add_(0.5)
    return model


def quadrature_data(likelihood: likelihoods.Likelihood) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(N, X_DIM, generator=gen(1), dtype=torch.float64)
    if isinstance(likelihood, likelihoods.Bernoulli):
        y = binary(N, Y_DIM, 2).double()
    elif isinstance(likelihood, likelihoods.ContinuousBernoulli):
        y = torch.rand(N, Y_DIM, generator=gen(2), dtype=torch.float64) * 0.98 + 0.01  # in (0, 1)
    elif isinstance(likelihood, likelihoods.Categorical):
        y = torch.randint(0, likelihood.num_classes, (N, Y_DIM), generator=gen(2))  # int64, whatever the model's
    else:
        y = torch.randn(N, Y_DIM, generator=gen(2), dtype=torch.float64)
    return x, y


def normal_head(output: torch.Tensor) -> D.Normal:
    """The library's Gaussian head, written with torch.distributions: loc, softplus(raw) + 1e-4."""
    loc, raw = output.chunk(2, dim=-1)
    return D.Normal(loc, F.softplus(raw) + 1e-4)


def components_of(model: ConditionalVAE) -> int:
    return model.prior_components


def reference_prior(model: ConditionalVAE, condition: torch.Tensor) -> tuple[D.Distribution, D.Normal]:
    """p(z|x) from the prior net's output, with torch.distributions (event: z), and its Gaussian component(s)
    (loc, scale (N, z_dim), or (N, K, z_dim) for a mixture of K: the output is K logits, then loc and raw
    scale of each component)."""
    output = model.prior_net(condition)
    k = components_of(model)
    if k == 1:
        gaussian = normal_head(output)
        return D.Independent(gaussian, 1), gaussian
    gaussians = normal_head(output[:, k:].unflatten(-1, (k, 2 * model.z_dim)))
    return D.MixtureSameFamily(D.Categorical(logits=output[:, :k]), D.Independent(gaussians, 1)), gaussians


def reference_condition(model: ConditionalVAE, x: torch.Tensor) -> torch.Tensor:
    """c: x, or [x, y_hat] with y_hat the baseline Regressor's E[y|x]: the loc half of its Gaussian output, or
    under a Categorical likelihood the class probabilities of each dimension of y, flattened (E[one_hot(y)|x])."""
    if model.baseline is None:
        return x
    output = model.baseline.net(x)
    if isinstance(model.likelihood, likelihoods.Categorical):
        y_hat = D.Categorical(logits=output.unflatten(-1, (Y_DIM, model.likelihood.num_classes))).probs.flatten(-2)
    else:
        y_hat = output.chunk(2, dim=-1)[0]
    return torch.cat([x, y_hat], dim=-1)


def reference_recognition_input(model: ConditionalVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The rows [x, y] the recognition net sees: y one-hot under a Categorical likelihood."""
    if isinstance(model.likelihood, likelihoods.Categorical):
        y = F.one_hot(y, model.likelihood.num_classes).flatten(-2).to(x.dtype)
    return torch.cat([x, y], dim=-1)


def reference_params(model: ConditionalVAE, condition: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The generation net as one layer on the concatenation [z, c], then the rest: z (G, N, 1) -> (G, N, P)."""
    net = model.generation_net
    weight = torch.cat([net.from_z.weight, net.from_x.weight], dim=1)
    rows = torch.cat([z, condition.expand(*z.shape[:-1], condition.shape[-1])], dim=-1)
    return net.rest(F.linear(rows, weight, net.from_x.bias))


def reference_log_prob(likelihood: likelihoods.Likelihood, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if isinstance(likelihood, likelihoods.Bernoulli):
        return D.Bernoulli(logits=params).log_prob(y.expand_as(params)).sum(-1)
    if isinstance(likelihood, likelihoods.ContinuousBernoulli):
        return D.ContinuousBernoulli(logits=params).log_prob(y.expand_as(params)).sum(-1)
    if isinstance(likelihood, likelihoods.Categorical):
        return D.Categorical(logits=params.unflatten(-1, (Y_DIM, likelihood.num_classes))).log_prob(y).sum(-1)
    if isinstance(likelihood, likelihoods.Laplace):
        if likelihood.scale is not None:
            return D.Laplace(params, likelihood.scale).log_prob(y).sum(-1)
        loc, raw = params.chunk(2, dim=-1)
        return D.Laplace(loc, F.softplus(raw) + 1e-4).log_prob(y).sum(-1)
    loc, raw = params.chunk(2, dim=-1)
    return D.Normal(loc, F.softplus(raw) + 1e-4).log_prob(y).sum(-1)


@torch.no_grad()
def integrals(model: ConditionalVAE, x: torch.Tensor, y: torch.Tensor, points: int) -> dict[str, torch.Tensor]:
    """Everything the tests compare with, by the midpoint rule on a grid over z that covers p(z|x) (each
    component) and q(z|x,y) of every example to +-12 standard deviations, with torch.distributions as the reference
    densities: per example (N,), log p(y|x), E_q[log p(y|x,z)], KL(q || p(z|x)) and KL(q || p(z|x,y)), and the
    standard errors of the three estimators with NUM_SAMPLES samples (from the variances of their terms, also
    integrated on the grid)."""
    condition = reference_condition(model, x)
    prior, gaussians = reference_prior(model, condition)
    posterior = normal_head(model.recognition_net(reference_recognition_input(model, x, y)))
    lo = min((d.loc - 12 * d.scale).min().item() for d in (gaussians, posterior))
    hi = max((d.loc + 12 * d.scale).max().item() for d in (gaussians, posterior))
    step = (hi - lo) / points
    z = (lo + step * (torch.arange(points, dtype=torch.float64) + 0.5))[:, None, None].expand(-1, N, 1)  # (G, N, 1)
    log_lik = reference_log_prob(model.likelihood, reference_params(model, condition, z), y)  # (G, N)
    log_prior, log_q = prior.log_prob(z), posterior.log_prob(z).sum(-1)
    log_step = math.log(step)
    log_evidence = torch.logsumexp(log_lik + log_prior, 0) + log_step
    q = (log_q + log_step).exp()  # q's mass in each cell
    expected_log_lik = (q * log_lik).sum(0)
    kl_prior = (q * (log_q - log_prior)).sum(0)
    kl_true_posterior = (q * (log_q - (log_lik + log_prior - log_evidence))).sum(0)
    # relative variances of the importance weights: E[w^2] / E[w]^2 - 1, E[w] = p(y|x) for both estimators
    rel_var_is = (torch.logsumexp(2 * (log_lik + log_prior) - log_q, 0) + log_step - 2 * log_evidence).exp() - 1
    rel_var_mc = (torch.logsumexp(2 * log_lik + log_prior, 0) + log_step - 2 * log_evidence).exp() - 1
    # negative_elbo's term per draw: log p(y|x,z) - KL in closed form, or log p(y|x,z) + log p(z|x) - log q(z)
    elbo_term = log_lik if components_of(model) == 1 else log_lik + log_prior - log_q
    var_elbo = (q * (elbo_term - (q * elbo_term).sum(0)).square()).sum(0)
    # within 2 standard deviations of the prior (of one of its components): (G, N)
    near = ((z - gaussians.loc.reshape(N, -1)).abs() < 2 * gaussians.scale.reshape(N, -1)).any(-1)
    return {
        "log_evidence": log_evidence, "expected_log_lik": expected_log_lik, "kl_true_posterior": kl_true_posterior,
        "kl_prior": kl_prior, "q_mass": q.sum(0), "prior_mass": (log_prior + log_step).exp().sum(0),
        "se_is": (rel_var_is / NUM_SAMPLES).sqrt(), "se_mc": (rel_var_mc / NUM_SAMPLES).sqrt(),
        "se_elbo": (var_elbo / NUM_SAMPLES).sqrt(),
        "log_lik_range": log_lik.masked_fill(~near, -math.inf).amax(0) - log_lik.masked_fill(~near, math.inf).amin(0),
    }


@pytest.fixture(scope="module", params=list(QUADRATURE_CASES), ids=list(QUADRATURE_CASES))
def quadrature(request):
    family, with_baseline, components, z_weight = QUADRATURE_CASES[request.param]
    likelihood = family()
    model = quadrature_model(likelihood, with_baseline, components, z_weight)
    x, y = quadrature_data(likelihood)
    return model, x, y, integrals(model, x, y, GRID_POINTS)


def test_the_quadrature_is_converged_and_the_model_is_not_trivial(quadrature):
    model, x, y, exact = quadrature
    coarse = integrals(model, x, y, GRID_POINTS // 4)
    for key in ("log_evidence", "expected_log_lik", "kl_true_posterior", "kl_prior"):
        torch.testing.assert_close(coarse[key], exact[key], atol=1e-4, rtol=0)
    for mass in ("q_mass", "prior_mass"):
        torch.testing.assert_close(exact[mass], torch.ones(N, dtype=torch.float64), atol=1e-10, rtol=0)
    # p(y|x,z) depends on z: log p(y|x,z) varies by a nat or more within 2 standard deviations of the prior
    assert (exact["log_lik_range"] > 0.5).all() and exact["log_lik_range"].mean() > 1.0, exact["log_lik_range"]
    assert (exact["kl_true_posterior"] > 0.1).all(), exact["kl_true_posterior"]  # q is not the true posterior


def test_the_networks_and_the_likelihood_are_what_the_reference_computes(quadrature):
    """The prior sees c (= [x, y_hat] with a baseline), the generation net [z, c], the recognition net [x, y],
    and log_likelihood is the likelihood's log-density of the generation net's params."""
    model, x, y, _ = quadrature
    condition = reference_condition(model, x)
    y_width = model.likelihood.feature_dim(Y_DIM)  # Y_DIM, or Y_DIM K under a Categorical likelihood
    assert model.prior_net[0].in_features == (X_DIM + y_width if model.baseline is not None else X_DIM)
    assert model.recognition_net[0].in_features == X_DIM + y_width
    z = torch.randn(7, N, 1, generator=gen(3), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.prior(x).log_prob(z), reference_prior(model, condition)[0].log_prob(z),
                                   rtol=0, atol=1e-12)
        posterior = model.posterior(x, y)
        reference_posterior = normal_head(model.recognition_net(reference_recognition_input(model, x, y)))
        torch.testing.assert_close(posterior.loc, reference_posterior.loc, rtol=0, atol=1e-14)
        torch.testing.assert_close(posterior.scale, reference_posterior.scale, rtol=0, atol=1e-14)
        params = reference_params(model, condition, z)
        torch.testing.assert_close(model.params(x, z), params, rtol=0, atol=1e-12)
        torch.testing.assert_close(model.log_likelihood(x, y, z), reference_log_prob(model.likelihood, params, y),
                                   rtol=0, atol=1e-9)


def test_importance_sampling_converges_to_the_quadrature_value(quadrature):
    model, x, y, exact = quadrature
    estimate = cll_importance(model, x, y, num_samples=NUM_SAMPLES, generator=gen(4))
    assert estimate.shape == (N,) and estimate.dtype == torch.float64
    error = estimate - (-exact["log_evidence"])
    assert (error.abs() < 4 * exact["se_is"] + 1e-3).all(), (error, exact["se_is"])


def test_monte_carlo_converges_to_the_quadrature_value(quadrature):
    model, x, y, exact = quadrature
    estimate = cll_monte_carlo(model, x, y, num_samples=NUM_SAMPLES, generator=gen(5))
    assert estimate.shape == (N,)
    error = estimate - (-exact["log_evidence"])
    assert (error.abs() < 4 * exact["se_mc"] + 1e-3).all(), (error, exact["se_mc"])


def test_negative_elbo_is_the_quadrature_value_above_the_cll_by_the_kl_to_the_true_posterior(quadrature):
    """-ELBO = -log p(y|x) + KL(q(z|x,y) || p(z|x,y)), with the KL to the true posterior integrated on the grid."""
    model, x, y, exact = quadrature
    estimate = negative_elbo(model, x, y, num_samples=NUM_SAMPLES, generator=gen(6))
    expected = -exact["log_evidence"] + exact["kl_true_posterior"]
    error = estimate - expected
    assert (error.abs() < 4 * exact["se_elbo"] + 1e-6).all(), (error, exact["se_elbo"])
    assert (estimate > -exact["log_evidence"] + exact["kl_true_posterior"] / 2).all()


def test_the_elbo_objective_with_many_draws_is_the_quadrature_value(quadrature):
    """The training objective (1/L) sum_l [log p(y|x,z_l)] - KL (the KL in closed form, or for a mixture prior
    (1/L) sum_l [log q(z_l) - log p(z_l)] on the same draws) converges to log p(y|x) - KL(q || p(z|x,y))."""
    model, x, y, exact = quadrature
    samples = 20_000
    with torch.no_grad():
        estimate = elbo(model, x, y, samples, gen(7))
    error = estimate - (exact["log_evidence"] - exact["kl_true_posterior"])
    standard_error = exact["se_elbo"] * math.sqrt(NUM_SAMPLES / samples)
    assert (error.abs() < 4 * standard_error + 1e-6).all(), (error, standard_error)


def test_the_elbo_identity_with_the_models_closed_form_kl(quadrature):
    """E_q[log p(y|x,z)] - KL(q || p(z|x)) = log p(y|x) - KL(q || p(z|x,y)): the left side with the model's own
    closed-form KL between q and the Gaussian prior, the right side on the grid."""
    model, x, y, exact = quadrature
    if components_of(model) > 1:
        pytest.skip("no closed-form KL to a mixture")
    with torch.no_grad():
        kl = kl_divergence(model.posterior(x, y), model.prior(x))
    torch.testing.assert_close(kl, exact["kl_prior"], rtol=0, atol=1e-7)
    torch.testing.assert_close(exact["expected_log_lik"] - kl, exact["log_evidence"] - exact["kl_true_posterior"],
                               rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# Small models and data for the rest
# ----------------------------------------------------------------------------------------------------------


def perturbed(module: nn.Module, seed: int) -> nn.Module:
    """module with noise added to every parameter, so that its weights are not what any fresh build gives."""
    generator = gen(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return module


def regression_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, 3), y (n, 2): one output linear in x, one bimodal given x."""
    generator = gen(seed)
    x = torch.randn(n, 3, generator=generator)
    sign = torch.randint(0, 2, (n, 1), generator=generator) * 2 - 1
    noise = 0.3 * torch.randn(n, 2, generator=generator)
    return x, torch.cat([2 * x[:, :1], sign * x[:, 1:2].abs()], dim=1) + noise


TRAIN, VAL = regression_data(96, 0), regression_data(32, 1)


def small_model(seed: int = 0, **kwargs) -> ConditionalVAE:
    torch.manual_seed(seed)
    return ConditionalVAE(3, 2, z_dim=2, hidden=(16,), **(GAUSSIAN_PRIOR | kwargs))


def quick_fit(model: nn.Module, **kwargs) -> list[dict]:
    settings = dict(epochs=3, batch_size=32, lr=0.01, patience=10, seed=0, progress=False) | PLAIN_FIT | kwargs
    return fit(model, train=TRAIN, val=VAL, **settings)


# ----------------------------------------------------------------------------------------------------------
# User-supplied modules: a convolutional generation net for 8x8 images
# ----------------------------------------------------------------------------------------------------------

SIDE, CLASSES, Z_DIM = 8, 4, 2


class ConvGeneration(nn.Module):
    """Rows [z, x] (M, z_dim + x_dim) -> the Bernoulli logits of an 8x8 image, flattened (M, 64)."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, 8 * 2 * 2)
        self.up = nn.Sequential(
            nn.ReLU(), nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1),  # 2x2 -> 4x4
            nn.ReLU(), nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),  # 4x4 -> 8x8
            nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        assert rows.dim() == 2 and rows.shape[1] == Z_DIM + CLASSES, rows.shape  # the documented contract
        return self.up(self.linear(rows).view(-1, 8, 2, 2)).flatten(1)


def user_modules(seed: int) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    return {
        "recognition": nn.Sequential(nn.Linear(CLASSES + SIDE * SIDE, 32), nn.Tanh(), nn.Linear(32, 2 * Z_DIM)),
        "prior": nn.Sequential(nn.Linear(CLASSES, 16), nn.Tanh(), nn.Linear(16, 2 * Z_DIM)),
        "generation": ConvGeneration(Z_DIM + CLASSES),
    }


def image_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x: a one-hot class (n, 4); y: the class's 8x8 binary template with 10% of its pixels flipped (n, 64)."""
    templates = binary(CLASSES, SIDE * SIDE, 100)
    generator = gen(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    flips = (torch.rand(n, SIDE * SIDE, generator=generator) < 0.1).float()
    return F.one_hot(labels, CLASSES).float(), (templates[labels] - flips).abs()


def image_model(seed: int = 0) -> ConditionalVAE:
    return ConditionalVAE(CLASSES, SIDE * SIDE, z_dim=Z_DIM, likelihood=likelihoods.Bernoulli(), **user_modules(seed),
                          **GAUSSIAN_PRIOR)  # the prior module outputs one Gaussian's loc and raw scale


def test_a_convolutional_generation_net_is_trained_by_fit():
    model = image_model()
    user = {"recognition": model.recognition_net, "prior": model.prior_net, "generation": model.generation_net.net}
    assert isinstance(user["generation"], ConvGeneration)
    before = {name: snapshot(module) for name, module in user.items()}
    (x, y), val = image_data(256, 0), image_data(64, 1)
    history = fit(model, train=(x, y), val=val, epochs=5, batch_size=32, lr=2e-2, patience=10, seed=0,
                  progress=False)
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4, 5]
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 5, history  # nats per 64-pixel image
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 5, history
    for name, module in user.items():  # every parameter of every user module was trained
        assert changed(module, before[name]) == list(module.state_dict()), name

    # the generation module gets the rows [z, x] and its output is the likelihood's parameters
    z = torch.randn(3, 5, Z_DIM, generator=gen(1))
    with torch.no_grad():
        rows = torch.cat([z, x[:5].expand(3, -1, -1)], dim=-1).reshape(15, -1)
        torch.testing.assert_close(model.params(x[:5], z), user["generation"](rows).reshape(3, 5, 64))
        assert model.log_likelihood(x[:5], y[:5], z).shape == (3, 5)
    samples = model.sample(x[:5], num_samples=3, generator=gen(2))
    assert samples.shape == (3, 5, SIDE * SIDE)
    assert set(samples.unique().tolist()) == {0.0, 1.0}


# ----------------------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------------------


def assert_same_outputs(a: ConditionalVAE, b: ConditionalVAE, x: torch.Tensor, y: torch.Tensor) -> None:
    """log_likelihood, prior, posterior, the three estimators and sample agree bit for bit (same generators)."""
    z = torch.randn(3, x.shape[0], a.z_dim, generator=gen(7), dtype=x.dtype)
    with torch.no_grad():
        assert torch.equal(a.log_likelihood(x, y, z), b.log_likelihood(x, y, z))
        assert torch.equal(a.prior(x).log_prob(z), b.prior(x).log_prob(z))
        assert torch.equal(a.posterior(x, y).scale, b.posterior(x, y).scale)
    for estimator in ESTIMATORS:
        assert torch.equal(estimator(a, x, y, 50, gen(8)), estimator(b, x, y, 50, gen(8))), estimator.__name__
    assert torch.equal(a.sample(x, 4, generator=gen(9)), b.sample(x, 4, generator=gen(9)))


def test_a_default_model_round_trips_bit_identically_with_its_likelihood(tmp_path):
    model = perturbed(ConditionalVAE(3, 2, z_dim=2, hidden=(8, 8), likelihood=likelihoods.Gaussian(scale=0.1)), 0)
    path = tmp_path / "model.pt"
    model.save(path)

    raw = torch.load(path, weights_only=True)  # plain data: no pickled classes
    assert raw["model"] == model.record() == {
        "class": "cvae.conditional_vae.ConditionalVAE",
        "args": {"x_dim": 3, "y_dim": 2, "z_dim": 2, "hidden": [8, 8], "prior_components": 8,
                 "likelihood": {"likelihood": {"name": "gaussian", "scale": 0.1}}}}

    loaded = ConditionalVAE.load(path)
    assert type(loaded) is ConditionalVAE
    assert loaded.likelihood == likelihoods.Gaussian(scale=0.1) and loaded.likelihood.scale == 0.1
    assert loaded.likelihood.num_params == 1
    assert loaded.record() == model.record()
    assert_same_state(loaded, model)
    assert_same_outputs(model, loaded, *regression_data(5, 2))


def test_a_model_with_a_regressor_baseline_round_trips_with_the_baseline_rebuilt_from_its_config(tmp_path):
    baseline = perturbed(Regressor(3, 2, hidden=(8,), likelihood=likelihoods.Bernoulli()), 1)
    model = perturbed(ConditionalVAE(3, 2, z_dim=2, hidden=(8,), likelihood=likelihoods.ContinuousBernoulli(),
                                     baseline=baseline), 2)
    assert model.record()["args"]["baseline"] == {"model": baseline.record()} and "modules" not in model.record()
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = ConditionalVAE.load(path)  # no module passed: the Regressor is rebuilt from the file
    assert type(loaded.baseline) is Regressor and loaded.baseline is not baseline
    assert loaded.baseline.likelihood == likelihoods.Bernoulli()
    assert loaded.likelihood == likelihoods.ContinuousBernoulli()
    assert not any(p.requires_grad for p in loaded.baseline.parameters()) and not loaded.baseline.training
    assert_same_state(loaded.baseline, baseline)
    assert_same_state(loaded, model)
    x, _ = regression_data(5, 3)
    y = torch.rand(5, 2, generator=gen(3))
    assert_same_outputs(model, loaded, x, y)


def test_a_model_with_user_modules_loads_only_with_them_and_then_bit_identically(tmp_path):
    model = image_model(seed=0)
    assert model.record()["modules"] == ["generation", "prior", "recognition"]
    path = tmp_path / "model.pt"
    model.save(path)
    with pytest.raises(ValueError, match="pass generation=..., prior=..., recognition=..."):
        ConditionalVAE.load(path)
    partial = user_modules(seed=1)
    del partial["prior"]
    with pytest.raises(ValueError, match=r"pass prior=\.\.\. to ConditionalVAE.load"):
        ConditionalVAE.load(path, **partial)
    with pytest.raises(ValueError, match="decoder"):
        ConditionalVAE.load(path, **user_modules(seed=1), decoder=nn.Linear(2, 2))

    fresh = user_modules(seed=1)  # other initial weights: the file's must replace them
    assert not torch.equal(fresh["prior"][0].weight, model.prior_net[0].weight)
    loaded = ConditionalVAE.load(path, **fresh)
    assert loaded.generation_net.net is fresh["generation"] and loaded.prior_net is fresh["prior"]
    assert_same_state(loaded, model)
    assert_same_outputs(model, loaded, *image_data(5, 4))


def test_a_baseline_of_the_users_own_must_be_passed_again(tmp_path):
    def baseline() -> Regressor:
        return Regressor(3, 2, hidden=(8,), net=nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4)))

    model = perturbed(ConditionalVAE(3, 2, z_dim=2, hidden=(8,), baseline=baseline()), 4)
    assert model.record()["modules"] == ["baseline"] and "baseline" not in model.record()["args"]
    path = tmp_path / "model.pt"
    model.save(path)
    with pytest.raises(ValueError, match=r"pass baseline=\.\.\."):
        ConditionalVAE.load(path)
    loaded = ConditionalVAE.load(path, baseline=baseline())
    assert_same_state(loaded, model)
    assert_same_outputs(model, loaded, *regression_data(5, 5))


def test_a_float64_model_round_trips_in_float64(tmp_path):
    model = perturbed(ConditionalVAE(3, 2, z_dim=2, hidden=(8,)).double(), 5)
    model.save(tmp_path / "model.pt")
    loaded = ConditionalVAE.load(tmp_path / "model.pt")
    assert_same_state(loaded, model)


# ----------------------------------------------------------------------------------------------------------
# Bad inputs: a ValueError that names the argument and what is wrong
# ----------------------------------------------------------------------------------------------------------


def bernoulli_model() -> ConditionalVAE:
    torch.manual_seed(0)
    return ConditionalVAE(3, 2, z_dim=2, hidden=(8,), likelihood=likelihoods.Bernoulli())


def good_data() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(5, 3, generator=gen(0)), binary(5, 2, 1)


def with_value(tensor: torch.Tensor, value: float) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[1, 0] = value
    return tensor


# name: (x, y) -> the bad pair, the argument the message must name, a detail the message must give
BAD_DATA = {
    "x-too-narrow": (lambda x, y: (x[:, :2], y), "x", "got (5, 2)"),
    "x-1d": (lambda x, y: (x[:, 0], y), "x", "got (5,)"),
    "x-int": (lambda x, y: (x.long(), y), "x", "torch.int64"),
    "y-int": (lambda x, y: (x, y.long()), "y", "torch.int64"),
    "y-nan": (lambda x, y: (x, with_value(y, math.nan)), "y", "nan"),
    "x-inf": (lambda x, y: (with_value(x, math.inf), y), "x", "inf"),
    "y-outside-the-bernoulli-support": (lambda x, y: (x, with_value(y, 1.5)), "y", "1.5"),
    "y-too-wide": (lambda x, y: (x, torch.cat([y, y], 1)), "y", "got (5, 4)"),
    "rows-differ": (lambda x, y: (x, y[:4]), "x and y", "5 and 4"),
    "x-numpy-of-strings": (lambda x, y: (x.numpy().astype(str), y), "x", "ndarray"),  # numbers convert (test_data)
    "y-list": (lambda x, y: (x, y.tolist()), "y", "list"),
}


def _fit_train(model, x, y):
    fit(model, train=(x, y), val=good_data(), epochs=1, progress=False)


def _fit_val(model, x, y):
    fit(model, train=good_data(), val=(x, y), epochs=1, progress=False)


# name: (call, how it names x and y)
DATA_TAKERS = {
    "fit-train": (_fit_train, ("train[0] (x)", "train[1] (y)")),
    "fit-val": (_fit_val, ("val[0] (x)", "val[1] (y)")),
    **{estimator.__name__: (lambda model, x, y, estimator=estimator: estimator(model, x, y, num_samples=3),
                            ("x", "y")) for estimator in ESTIMATORS},
}


@pytest.mark.parametrize("taker", list(DATA_TAKERS))
@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_gets_a_value_error_naming_the_argument(case, taker):
    spoil, argument, detail = BAD_DATA[case]
    call, names = DATA_TAKERS[taker]
    model = bernoulli_model()
    before = snapshot(model)
    with pytest.raises(ValueError) as error:
        call(model, *spoil(*good_data()))
    message = str(error.value)
    expected_start = {"x": names[0], "y": names[1], "x and y": f"{names[0]} and {names[1]}"}[argument]
    assert message.startswith(expected_start), message
    assert detail in message, message
    assert changed(model, before) == []


@pytest.mark.parametrize("case", [case for case, (_, argument, _) in BAD_DATA.items() if argument == "x"])
def test_bad_x_for_sample_gets_a_value_error_naming_it(case):
    spoil, _, detail = BAD_DATA[case]
    x, _ = spoil(*good_data())
    with pytest.raises(ValueError) as error:
        bernoulli_model().sample(x, num_samples=2)
    assert str(error.value).startswith("x ") and detail in str(error.value), str(error.value)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_a_bad_number_of_samples_is_rejected_everywhere(bad):
    model, (x, y) = bernoulli_model(), good_data()
    for call in [lambda: model.sample(x, num_samples=bad)] + [
            lambda estimator=estimator: estimator(model, x, y, num_samples=bad) for estimator in ESTIMATORS]:
        with pytest.raises(ValueError, match=f"num_samples must be a positive integer, got {re.escape(repr(bad))}"):
            call()


@pytest.mark.parametrize("arguments, match", [
    (dict(z_dim=0), "z_dim must be a positive integer, got 0"),
    (dict(z_dim=True), "z_dim must be a positive integer, got True"),
    (dict(x_dim=2.5), "x_dim must be a positive integer, got 2.5"),
    (dict(y_dim=-1), "y_dim must be a positive integer, got -1"),
    (dict(hidden=()), r"hidden must be a non-empty sequence .* got \(\)"),
    (dict(hidden=(8, 0)), r"hidden must be .* got \(8, 0\)"),
    (dict(hidden="64"), "hidden must be .* got '64'"),
    (dict(likelihood="gaussian"), "likelihood must be one of .* got 'gaussian'"),
], ids=["z_dim=0", "z_dim=True", "x_dim=2.5", "y_dim=-1", "hidden=()", "hidden-0", "hidden-str", "likelihood-str"])
def test_bad_constructor_arguments_are_rejected(arguments, match):
    with pytest.raises(ValueError, match=match):
        ConditionalVAE(**(dict(x_dim=3, y_dim=2, z_dim=2, hidden=(8,)) | arguments))


@pytest.mark.parametrize("arguments, match", [
    (dict(epochs=0), "epochs must be an integer of at least 1 and at most 1000000, got 0"),
    (dict(lr=-1), r"lr must be a positive finite number that float32 holds .*, e.g. 1e-3, got -1"),
    (dict(lr=0.0), r"lr must be a positive finite number that float32 holds .*, e.g. 1e-3, got 0.0"),
    (dict(lr=math.nan), "lr must be a positive finite number that float32 holds .*, e.g. 1e-3, got nan"),
    (dict(lr=1e39), r"lr must be a positive finite number that float32 holds \(from 1.2e-38 to 3.4e38\), e.g. 1e-3, "
                    "got 1e"),
    (dict(objective="foo"), "objective must be one of 'elbo', 'gsnn', 'hybrid', 'iwae', got 'foo'"),
    (dict(batch_size=0), "batch_size must be an integer of at least 1, got 0"),
    (dict(patience=1.5), "patience must be an integer of at least 1 and at most 1000000, got 1.5"),
    (dict(seed=-1), "seed must be an integer of at least 0 and at most 4294967295, got -1"),
    (dict(alpha=1.5), r"alpha must be a number from 0 to 1, e.g. 0.5, got 1.5"),
    (dict(iw_samples=0), "iw_samples must be an integer of at least 1, got 0"),
    (dict(train=TRAIN[0]), "train must be a pair"),
    (dict(val=(VAL[0],)), "val must be a pair"),
], ids=["epochs=0", "lr=-1", "lr=0", "lr=nan", "lr=1e39", "objective=foo", "batch_size=0", "patience=1.5", "seed=-1",
        "alpha=1.5", "iw_samples=0", "train-not-a-pair", "val-not-a-pair"])
def test_bad_fit_arguments_are_rejected_before_training(arguments, match):
    model = small_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        fit(model, **(dict(train=TRAIN, val=VAL, progress=False) | arguments))
    assert changed(model, before) == []


def test_fit_rejects_a_model_of_another_kind():
    with pytest.raises(ValueError, match="model must be a ConditionalVAE or a Regressor, got a Linear"):
        fit(nn.Linear(3, 2), train=TRAIN, val=VAL, progress=False)


def test_data_of_another_float_dtype_than_the_model_is_named_by_the_estimators_and_converted_by_fit():
    model, (x, y) = bernoulli_model(), good_data()
    calls = [lambda x, y: cll_importance(model, x, y, 10, generator=gen(0)),
             lambda x, y: model.sample(x, 2, generator=gen(0))]
    for call in calls:
        with pytest.raises(ValueError, match=r"x is torch.float64 but the model is torch.float32"):
            call(x.double(), y.double())
    a, b = bernoulli_model(), bernoulli_model()
    fit(a, (x, y), (x, y), epochs=1, progress=False)
    fit(b, (x.double(), y.double()), (x.double(), y.double()), epochs=1, progress=False)
    assert_same_state(a, b)


# ----------------------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prior", ["gaussian", "default"])
@pytest.mark.parametrize("objective", ["elbo", "gsnn", "hybrid", "iwae"])
def test_every_objective_trains_and_returns_one_history_entry_per_epoch(objective, prior):
    if prior == "gaussian":
        model = small_model()
    else:  # whatever p(z|x) ConditionalVAE has by default
        torch.manual_seed(0)
        model = ConditionalVAE(3, 2, z_dim=2, hidden=(16,))
    before = {name: snapshot(getattr(model, name)) for name in ("recognition_net", "prior_net", "generation_net")}
    history = quick_fit(model, objective=objective)
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    for entry in history:
        assert set(entry) == {"epoch", "train_loss", "val_loss", "seconds"}
        assert all(math.isfinite(entry[key]) for key in ("train_loss", "val_loss")), entry
    assert history[-1]["train_loss"] < history[0]["train_loss"], history
    assert changed(model.prior_net, before["prior_net"]) and changed(model.generation_net, before["generation_net"])
    # the GSNN objective samples z from the prior: the recognition net gets no gradient and stays as it was
    recognition_changed = changed(model.recognition_net, before["recognition_net"])
    assert recognition_changed == ([] if objective == "gsnn" else list(before["recognition_net"]))


@torch.no_grad()
def recomputed_validation_loss(model: ConditionalVAE, objective: str, seed: int, batch_size: int) -> float:
    """The validation loss as fit computes it: the training loss in eval mode, with noise from a generator seeded
    with the fit's seed, over batches of batch_size, averaged over examples."""
    model.eval()
    x, y = VAL
    generator, total = gen(seed), torch.zeros(())
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        total += training_loss(model, xb, yb, generator=generator, objective=objective) * xb.shape[0]
    return total.item() / x.shape[0]


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_fit_leaves_the_model_with_the_weights_of_the_epoch_of_lowest_validation_loss(objective, monkeypatch):
    """With validation losses scripted to be lowest after epoch 2 of 4, the model ends with the weights that a fit
    of 2 epochs ends with (the first epochs of a fit do not depend on how many follow)."""
    real = training_module.validation_loss
    for epochs, scripted in ((4, [3.0, 1.0, 2.0, 1.5]), (2, [3.0, 1.0])):
        values = iter(scripted)

        def validation(model, data, settings, values=values):
            real(model, data, settings)  # what the real one does, including model.eval()
            return next(values)

        monkeypatch.setattr(training_module, "validation_loss", validation)
        model = small_model()
        history = quick_fit(model, objective=objective, epochs=epochs)
        assert [entry["val_loss"] for entry in history] == scripted
        if epochs == 4:
            after_4 = model
    assert_same_state(after_4, model)
    assert changed(after_4, snapshot(small_model()))


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_the_best_validation_loss_of_the_history_is_that_of_the_model_fit_returns(objective):
    model = small_model()
    history = quick_fit(model, objective=objective, epochs=6, lr=0.03, seed=0, batch_size=32)
    losses = [entry["val_loss"] for entry in history]
    recomputed = recomputed_validation_loss(model, objective, seed=0, batch_size=32)
    assert recomputed == min(losses), (recomputed, losses)
    settings = TrainingSettings(batch_size=32, seed=0, objective=objective)
    assert validation_loss(model, VAL, settings) == min(losses)


def test_early_stopping_ends_fit_after_patience_epochs_without_improvement():
    model = small_model()
    history = quick_fit(model, epochs=30, lr=0.1, patience=2)
    losses = [entry["val_loss"] for entry in history]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert len(losses) < 30 and len(losses) == best + 1 + 2, losses
    assert recomputed_validation_loss(model, "elbo", seed=0, batch_size=32) == losses[best]


def test_fit_does_not_change_a_frozen_regressor_baseline():
    torch.manual_seed(0)
    baseline = Regressor(3, 2, hidden=(8,))
    history = quick_fit(baseline)  # a fitted baseline, as the paper's recurrent connection uses
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    fitted = snapshot(baseline)
    model = small_model(baseline=baseline)
    before = snapshot(model)
    quick_fit(model)
    assert model.baseline is baseline and not baseline.training
    assert not any(p.requires_grad for p in baseline.parameters())
    assert changed(baseline, fitted) == []
    trained = changed(model, before)
    assert trained and not any(key.startswith("baseline.") for key in trained)
    assert set(trained) == {key for key in before if not key.startswith("baseline.")}


def test_the_same_seed_gives_bit_identical_weights_and_another_seed_does_not():
    runs = []
    for seed in (3, 3, 4):
        model = small_model(seed=0)
        history = quick_fit(model, objective="hybrid", seed=seed)
        runs.append((model, [(e["train_loss"], e["val_loss"]) for e in history]))
    assert_same_state(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert changed(runs[2][0], snapshot(runs[0][0]))  # the seed matters (order and noise)
    assert runs[2][1] != runs[0][1]


def test_fit_with_a_checkpoint_dir_writes_the_best_model_and_gives_the_same_weights_as_without(tmp_path):
    with_dir, without = small_model(), small_model()
    history = quick_fit(with_dir, checkpoint_dir=tmp_path / "run", epochs=4)
    assert [(e["train_loss"], e["val_loss"]) for e in history] == [
        (e["train_loss"], e["val_loss"]) for e in quick_fit(without, epochs=4)]
    assert_same_state(with_dir, without)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "state.pt"]
    assert_same_state(ConditionalVAE.load(tmp_path / "run" / "best.pt"), with_dir)


def test_an_interrupted_fit_resumes_from_its_checkpoint_dir_bit_identically(tmp_path, monkeypatch):
    straight = small_model()
    expected = quick_fit(straight, epochs=4, checkpoint_dir=tmp_path / "straight")

    real = training_module.validation_loss
    calls = []

    def interrupted_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # after epoch 3's steps, before its end-of-epoch state
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(training_module, "validation_loss", interrupted_in_epoch_3)
        with pytest.raises(KeyboardInterrupt):
            quick_fit(small_model(), epochs=4, checkpoint_dir=tmp_path / "resumed")
    resumed = small_model(seed=1)  # other initial weights: the state in the directory replaces them
    history = quick_fit(resumed, epochs=4, checkpoint_dir=tmp_path / "resumed")
    assert [(e["epoch"], e["train_loss"], e["val_loss"]) for e in history] == [
        (e["epoch"], e["train_loss"], e["val_loss"]) for e in expected]
    assert_same_state(resumed, straight)


def test_a_finished_fit_in_its_checkpoint_dir_trains_nothing_and_returns_its_history(tmp_path):
    model = small_model()
    history = quick_fit(model, epochs=2, checkpoint_dir=tmp_path)
    again = small_model(seed=1)  # other initial weights: the best weights in the directory replace them
    assert quick_fit(again, epochs=2, checkpoint_dir=tmp_path) == history
    assert_same_state(again, model)


# ----------------------------------------------------------------------------------------------------------
# sample
# ----------------------------------------------------------------------------------------------------------

SAMPLE_CASES = {
    "bernoulli": (likelihoods.Bernoulli(), False),
    "gaussian": (likelihoods.Gaussian(), False),
    "gaussian-fixed-scale": (likelihoods.Gaussian(scale=0.5), False),
    "continuous-bernoulli": (likelihoods.ContinuousBernoulli(), False),
    "bernoulli-with-regressor-baseline": (likelihoods.Bernoulli(), True),
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_sample_draws_z_from_the_prior_then_y_from_the_likelihood(case):
    likelihood, with_baseline = SAMPLE_CASES[case]
    torch.manual_seed(0)
    baseline = Regressor(3, 4, hidden=(8,), likelihood=likelihood) if with_baseline else None
    model = perturbed(ConditionalVAE(3, 4, z_dim=2, hidden=(8,), likelihood=likelihood, baseline=baseline), 0)
    x = torch.randn(5, 3, generator=gen(1))

    draws = model.sample(x, num_samples=6, generator=gen(2))
    means = model.sample(x, num_samples=6, generator=gen(2), mean=True)
    assert draws.shape == means.shape == (6, 5, 4) and draws.dtype == torch.float32
    assert not draws.requires_grad
    with torch.no_grad():  # the same z (drawn first, from the same generator), then y from the same generator
        generator = gen(2)
        z = model.prior(x).rsample((6,), generator=generator)
        params = model.params(x, z)
        assert torch.equal(draws, likelihood.sample(params, generator))
        assert torch.equal(means, likelihood.mean(params))
    if isinstance(likelihood, likelihoods.Bernoulli):
        assert set(draws.unique().tolist()) == {0.0, 1.0}
        assert ((means > 0) & (means < 1)).all()
    elif isinstance(likelihood, likelihoods.ContinuousBernoulli):
        assert ((draws >= 0) & (draws <= 1)).all() and draws.unique().numel() == draws.numel()

    # many draws: y - E[y|x,z] (same z) averages to zero, within 4 standard errors
    many, centres = model.sample(x, 4000, generator=gen(3)), model.sample(x, 4000, generator=gen(3), mean=True)
    residual = many - centres
    assert (residual.mean(0).abs() < 4 * residual.std(0) / math.sqrt(4000) + 1e-6).all()
    assert (residual.std(0) > 0.05).all()  # draws, not means
    assert model.sample(x[:1]).shape == (1, 1, 4)  # one draw by default
