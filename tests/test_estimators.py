"""The CLL estimators and the training objectives against integrals computed by numerical quadrature
over z, on CVAEs whose latent space is small enough (1 and 2 dimensions) to integrate on a grid."""

import math

import pytest
import torch
from torch import distributions as D

from cvae import CVAE, BaselineNet, ConditionalVAE, QuadrantTask, Regressor, likelihoods
from cvae.estimators import cll_importance, cll_monte_carlo, mean_and_sem, negative_elbo
from cvae.objectives import elbo, gsnn_objective, hybrid_objective, importance_weighted_bound, training_loss

NUM_IMAGES = 4


def small_cvae(z_dim: int, seed: int = 0) -> CVAE:
    """A CVAE in float64 with tiny networks, whose likelihood varies over a few nats across z."""
    torch.manual_seed(seed)
    model = CVAE(BaselineNet(3, hidden=(8,)), z_dim=z_dim, hidden=(8,)).double().eval()
    with torch.no_grad():
        model.generation_net.from_z.weight.mul_(3.0)
        model.recognition_net[-1].bias[z_dim:].add_(1.0)  # q(z|x,y) wider than p(z|x,y): covers it
    return model


def images(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.rand(NUM_IMAGES, 784, generator=torch.Generator().manual_seed(seed))
    return QuadrantTask(3).split(pixels.double())


def grid_axis(model: CVAE, x, y, points: int, width: float = 10.0) -> torch.Tensor:
    """A 1-D grid covering both the prior and the posterior of every image, +- width std."""
    with torch.no_grad():
        prior, posterior = model.prior(x), model.posterior(x, y)
    lo = torch.minimum(prior.loc - width * prior.scale, posterior.loc - width * posterior.scale).min()
    hi = torch.maximum(prior.loc + width * prior.scale, posterior.loc + width * posterior.scale).max()
    return torch.linspace(lo.item(), hi.item(), points, dtype=torch.float64)


@torch.no_grad()
def on_grid(model: CVAE, x, y, points: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """log p(y|x,z) and log p(z|x) at every point z of a dense grid: (G, N) each, and the cell volume."""
    axis = grid_axis(model, x, y, points)
    volume = (axis[1] - axis[0]).item() ** model.z_dim
    grid = torch.cartesian_prod(*[axis] * model.z_dim).reshape(-1, model.z_dim)
    prior = model.prior(x)
    log_likelihood, log_prior = [], []
    for chunk in grid.split(20_000):
        z = chunk[:, None, :].expand(-1, x.shape[0], -1)
        log_likelihood.append(model.log_likelihood(x, y, z))
        log_prior.append(prior.log_prob(z))
    return torch.cat(log_likelihood), torch.cat(log_prior), volume


def quadrature_cll(model: CVAE, x, y, points: int) -> torch.Tensor:
    """-log p(y|x) = -log integral p(y|x,z) p(z|x) dz by the midpoint rule: (N,)."""
    log_likelihood, log_prior, volume = on_grid(model, x, y, points)
    return -(torch.logsumexp(log_likelihood + log_prior, dim=0) + math.log(volume))


def quadrature_expected_log_likelihood(model: CVAE, x, y, points: int) -> torch.Tensor:
    """E_{p(z|x)}[log p(y|x,z)] = integral p(z|x) log p(y|x,z) dz by the midpoint rule: (N,)."""
    log_likelihood, log_prior, volume = on_grid(model, x, y, points)
    return (log_prior.exp() * log_likelihood).sum(0) * volume


@pytest.fixture(scope="module", params=[1, 2], ids=["z1", "z2"])
def setup(request):
    z_dim = request.param
    model = small_cvae(z_dim)
    x, y = images()
    exact = quadrature_cll(model, x, y, points=10_001 if z_dim == 1 else 601)
    return model, x, y, exact


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_quadrature_is_converged(setup):
    model, x, y, exact = setup
    coarse = quadrature_cll(model, x, y, points=2_001 if model.z_dim == 1 else 301)
    torch.testing.assert_close(coarse, exact, atol=5e-3, rtol=0)


def test_negative_elbo_lies_above_the_true_cll(setup):
    model, x, y, exact = setup
    bound = negative_elbo(model, x, y, 20_000, gen())
    assert (bound > exact + 0.05).all(), (bound, exact)


def test_importance_sampling_converges_to_the_true_cll(setup):
    model, x, y, exact = setup
    estimate = cll_importance(model, x, y, 50_000, gen())
    torch.testing.assert_close(estimate, exact, atol=0.03, rtol=0)


def test_monte_carlo_converges_to_the_true_cll(setup):
    model, x, y, exact = setup
    estimate = cll_monte_carlo(model, x, y, 50_000, gen())
    torch.testing.assert_close(estimate, exact, atol=0.03, rtol=0)


def test_estimators_are_upper_bounds_that_tighten_as_samples_grow(setup):
    """Averaged over repeats, the error of a log-mean-exp estimate is positive and shrinks with S."""
    model, x, y, exact = setup
    for estimator in (cll_importance, cll_monte_carlo):
        errors = []
        for samples in (2, 20, 2000):
            repeats = torch.stack([estimator(model, x, y, samples, gen(seed)) for seed in range(30)])
            errors.append((repeats.mean(0) - exact).mean().item())
        assert errors[0] > errors[1] > errors[2] > -0.01, (estimator.__name__, errors)
        assert errors[0] > 0.01, (estimator.__name__, errors)


def test_negative_elbo_estimator_equals_the_training_objective_on_the_same_noise(setup, monkeypatch):
    import cvae.estimators as estimators
    model, x, y, _ = setup
    monkeypatch.setattr(estimators, "MAX_ROWS", 10**9)  # one chunk: the same draws as elbo()
    estimate = negative_elbo(model, x, y, 1000, gen(1))
    with torch.no_grad():
        objective = -elbo(model, x, y, 1000, gen(1))
    torch.testing.assert_close(estimate, objective)


def test_estimates_are_right_when_images_and_samples_are_split_into_many_chunks(setup, monkeypatch):
    import cvae.estimators as estimators
    model, x, y, exact = setup
    monkeypatch.setattr(estimators, "MAX_ROWS", 1000)  # chunks of 333 and 1000 samples
    monkeypatch.setattr(estimators, "EXAMPLE_BLOCK", 3)  # blocks of 3 and 1 examples
    for estimator in (cll_importance, cll_monte_carlo):
        estimate = estimator(model, x, y, 50_000, gen(3))
        assert estimate.shape == (NUM_IMAGES,)
        torch.testing.assert_close(estimate, exact, atol=0.03, rtol=0)


def test_gsnn_objective_converges_to_the_expected_log_likelihood_under_the_prior(setup):
    model, x, y, exact_cll = setup
    expected = quadrature_expected_log_likelihood(model, x, y, 10_001 if model.z_dim == 1 else 601)
    with torch.no_grad():
        estimate = gsnn_objective(model, x, y, 50_000, gen(4))
        z = model.prior(x).rsample((50_000,), generator=gen(6))
        standard_error = model.log_likelihood(x, y, z).std(0) / math.sqrt(50_000)
    assert ((estimate - expected).abs() < 4 * standard_error).all(), (estimate, expected, standard_error)
    assert (-expected > exact_cll + 0.01).all()  # Jensen: below log p(y|x), so above the CLL


def test_hybrid_objective_is_the_alpha_mixture_of_elbo_and_gsnn(setup):
    model, x, y, _ = setup
    with torch.no_grad():
        noise = gen(5)
        cvae_part, gsnn_part = elbo(model, x, y, 1, noise), gsnn_objective(model, x, y, 1, noise)
        torch.testing.assert_close(hybrid_objective(model, x, y, 0.3, gen(5)),
                                   0.3 * cvae_part + 0.7 * gsnn_part)
        loss = training_loss(model, x, y, generator=gen(5), objective="hybrid", alpha=0.3)
        torch.testing.assert_close(loss, -(0.3 * cvae_part + 0.7 * gsnn_part).mean())
        with pytest.raises(ValueError, match="objective must be one of"):
            training_loss(model, x, y, objective="vae")


def test_importance_weighted_bound_is_the_log_of_the_importance_sampled_estimate(setup, monkeypatch):
    """The training objective "iwae" is, on the same draws, minus the IS estimator the evaluation reports."""
    import cvae.estimators as estimators
    model, x, y, _ = setup
    monkeypatch.setattr(estimators, "MAX_ROWS", 10**9)  # one chunk: the same draws as the bound
    with torch.no_grad():
        bound = importance_weighted_bound(model, x, y, 7, gen(8))
        torch.testing.assert_close(-bound, cll_importance(model, x, y, 7, gen(8)))
        loss = training_loss(model, x, y, generator=gen(8), objective="iwae", iw_samples=7)
    torch.testing.assert_close(loss, -bound.mean())


def test_importance_weighted_bound_rises_from_the_elbo_to_the_log_likelihood(setup):
    """E[L_1] = ELBO <= E[L_10] <= E[L_1000] <= log p(y|x) (Burda et al. 2016, theorem 1), with the ELBO's
    KL in closed form and log p(y|x) by quadrature."""
    model, x, y, exact = setup

    def draws(k: int, repeats: int, seed: int) -> torch.Tensor:  # (repeats, images) independent L_k
        with torch.no_grad():
            bound = importance_weighted_bound(model, x.repeat(repeats, 1), y.repeat(repeats, 1), k, gen(seed))
        return bound.view(repeats, NUM_IMAGES)

    single, ten, thousand = draws(1, 20_000, 9), draws(10, 2000, 10), draws(1000, 20, 11)
    with torch.no_grad():
        expected_elbo = elbo(model, x, y, 50_000, gen(12))
    standard_error = single.std(0) / math.sqrt(single.shape[0])
    assert ((single.mean(0) - expected_elbo).abs() < 4 * standard_error + 1e-3).all()
    means = [expected_elbo, ten.mean(0), thousand.mean(0)]
    assert (means[0] < means[1] - 0.01).all() and (means[1] < means[2]).all(), means
    gaps = [-m - exact for m in means]  # each above 0 up to noise, shrinking towards it
    assert (gaps[2] > -0.02).all() and (gaps[2] < 0.1).all() and (gaps[2] < gaps[1]).all(), gaps


def test_importance_weighted_bound_trains_all_three_networks():
    model = small_cvae(2)
    x, y = images()
    training_loss(model, x, y, generator=gen(11), objective="iwae", iw_samples=3).backward()
    for net in (model.recognition_net, model.prior_net, model.generation_net):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters()), net
    assert all(p.grad is None for p in model.baseline.parameters())  # frozen


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_a_non_positive_number_of_samples_is_rejected(bad):
    model = small_cvae(1)
    x, y = images()
    with pytest.raises(ValueError, match="positive integer"):
        cll_importance(model, x, y, bad)


# ----------------------------------------------------------------------- the GSNN under a mixture prior, in closed form
class FixedMixture(torch.nn.Module):
    """p(z|x) = sum_k w_k N(loc_k, diag(scale_k^2)) for every x, as a prior net's output (N, K + 2 K z_dim): the K
    logits, then each component's loc and raw scale (scale = softplus(raw) + 1e-4)."""

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, raw_scale: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)
        self.loc = torch.nn.Parameter(loc)
        self.raw_scale = torch.nn.Parameter(raw_scale)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.logits, torch.cat([self.loc, self.raw_scale], -1).flatten()])
        return out.expand(condition.shape[0], -1)


def linear_gaussian_mixture_cvae() -> tuple[ConditionalVAE, torch.Tensor, torch.Tensor, float]:
    """A float64 CVAE with p(z|x) a fixed mixture of K = 3 Gaussians over z (z_dim 2), and y|x,z ~ N(A z + B x + b,
    s^2 I) (a linear generation net, a fixed scale s): E_{N(z; m, diag v)} log p(y|x,z) is in closed form."""
    torch.manual_seed(0)
    prior = FixedMixture(torch.tensor([0.3, -0.5, 0.1]), torch.tensor([[-2.0, 0.5], [0.0, -1.0], [1.5, 1.0]]),
                         torch.tensor([[-0.5, 0.2], [0.3, -1.0], [0.0, 0.5]]))
    model = ConditionalVAE(2, 3, z_dim=2, hidden=(8,), likelihood=likelihoods.Gaussian(scale=0.7), prior=prior,
                           generation=torch.nn.Linear(2 + 2, 3), prior_components=3).double()
    x = torch.randn(4, 2, generator=gen(1), dtype=torch.float64)
    y = torch.randn(4, 3, generator=gen(2), dtype=torch.float64)
    return model, x, y, 0.7


def closed_form_expected_log_likelihood(model: ConditionalVAE, x, y, s: float) -> torch.Tensor:
    """sum_k w_k E_{z ~ N(loc_k, diag scale_k^2)} log N(y; A z + B x + b, s^2 I)
    = sum_k w_k [ log N(y; A loc_k + B x + b, s^2 I) - sum_{i,d} A_id^2 scale_kd^2 / (2 s^2) ]: (N,), differentiable in
    the prior's parameters (torch.distributions for the Gaussian density)."""
    prior = model.prior(x)
    weights = torch.softmax(prior.log_weights, -1)  # (N, K)
    linear = model.generation_net.net
    a, bx = linear.weight[:, :2], linear.weight[:, 2:]
    mean = prior.components.loc @ a.T + (x @ bx.T + linear.bias).unsqueeze(1)  # (N, K, y_dim)
    at_mean = D.Normal(mean, s).log_prob(y.unsqueeze(1)).sum(-1)
    spread = (prior.components.scale.square() @ a.square().T).sum(-1) / (2 * s**2)
    return (weights * (at_mean - spread)).sum(-1)


def test_gsnn_objective_under_a_mixture_prior_is_its_closed_form_and_trains_the_weights():
    """E_{p(z|x)} log p(y|x,z) of a mixture prior: the objective converges to its closed form, and so does its
    gradient for every parameter of the prior, the mixture's logits included (which a sampled component leaves
    without a gradient)."""
    model, x, y, s = linear_gaussian_mixture_cvae()
    prior = model.prior_net
    parameters = [prior.logits, prior.loc, prior.raw_scale]
    exact = closed_form_expected_log_likelihood(model, x, y, s)
    exact_gradients = torch.autograd.grad(exact.sum(), parameters)
    estimate = gsnn_objective(model, x, y, 40_000, gen(3))
    gradients = torch.autograd.grad(estimate.sum(), parameters, allow_unused=True)
    torch.testing.assert_close(estimate, exact, atol=0.01, rtol=0)
    assert exact_gradients[0].abs().min() > 0.1  # the weights matter here
    for gradient, expected in zip(gradients, exact_gradients):
        assert gradient is not None
        torch.testing.assert_close(gradient, expected, atol=0.01, rtol=0)


def test_the_gsnn_training_loss_gives_the_mixture_weights_a_gradient():
    """One sample of z per component: minus the logits' gradient of -sum_k w_k log p(y|x,z_k) is w_j (log p(y|x,z_j)
    - sum_k w_k log p(y|x,z_k)) per example, on the same draws z_k (the softmax's Jacobian)."""
    model, x, y, _ = linear_gaussian_mixture_cvae()
    loss = training_loss(model, x, y, generator=gen(4), objective="gsnn")
    (gradient,) = torch.autograd.grad(loss, [model.prior_net.logits])
    with torch.no_grad():
        prior = model.prior(x)
        z = prior.components.rsample((1,), generator=gen(4))[0].transpose(0, 1)  # (K, N, z_dim), the same draws
        log_likelihood = model.log_likelihood(x, y, z)  # (K, N)
        w = torch.softmax(prior.log_weights, -1).T  # (K, N)
        expected = -(w * (log_likelihood - (w * log_likelihood).sum(0))).mean(1)  # d loss / d logits, mean over N
    assert gradient.abs().min() > 0
    torch.testing.assert_close(gradient, expected)


# ------------------------------------------------------------------- the KL weight inside the importance-weighted bound
@pytest.mark.parametrize("kl_weight", [0.0, 0.3, 1.0])
def test_the_importance_weighted_bound_scales_the_log_density_ratio_by_the_kl_weight(kl_weight):
    """L_K^beta = log (1/K) sum_k p(y|x,z_k) (p(z_k|x) / q(z_k|x,y))^beta on the draws z_k ~ q (the same noise), with
    the densities of torch.distributions: beta = 1 is the bound, beta = 0 the log mean likelihood of the draws."""
    model = small_cvae(2)
    x, y = images()
    with torch.no_grad():
        bound = importance_weighted_bound(model, x, y, 5, gen(13), kl_weight=kl_weight)
        posterior, prior = model.posterior(x, y), model.prior(x)
        z = posterior.rsample((5,), generator=gen(13))
        log_ratio = D.Normal(prior.loc, prior.scale).log_prob(z) - D.Normal(posterior.loc, posterior.scale).log_prob(z)
        log_weights = model.log_likelihood(x, y, z) + kl_weight * log_ratio.sum(-1)
    torch.testing.assert_close(bound, torch.logsumexp(log_weights, 0) - math.log(5))
    assert kl_weight == 1.0 or not torch.allclose(bound, importance_weighted_bound(model, x, y, 5, gen(13)))


def test_with_one_sample_the_weighted_bound_is_the_weighted_elbo_in_expectation():
    """E_q[L_1^beta] = E_q log p(y|x,z) - beta KL(q || p): the mean over 5,000 draws against the ELBO with the KL in
    closed form and weight beta = 0.4."""
    model = small_cvae(1)
    x, y = images()
    with torch.no_grad():
        draws = importance_weighted_bound(model, x.repeat(5000, 1), y.repeat(5000, 1), 1, gen(14), kl_weight=0.4)
        draws = draws.view(5000, NUM_IMAGES)
        expected = elbo(model, x, y, 20_000, gen(15), kl_weight=0.4)
    standard_error = draws.std(0) / math.sqrt(5000)
    assert ((draws.mean(0) - expected).abs() < 4 * standard_error + 1e-3).all()


def test_by_default_the_objectives_draw_one_z_per_example():
    model = small_cvae(1)
    x, y = images()
    with torch.no_grad():
        for objective in (elbo, gsnn_objective):
            assert torch.equal(objective(model, x, y, generator=gen(16)), objective(model, x, y, 1, gen(16)))


def test_the_training_loss_is_minus_the_batch_mean_of_each_objective_with_one_draw_per_example():
    """loss = -(1/N) sum_n objective(x_n, y_n), one z per example from the generator (the hybrid's weight alpha 1/2 by
    default); for a baseline Regressor -(1/N) sum_n log p(y_n|x_n), here a Gaussian's, by torch.distributions."""
    model = small_cvae(2)
    x, y = images()
    with torch.no_grad():
        expected = {"elbo": elbo(model, x, y, 1, gen(17)), "gsnn": gsnn_objective(model, x, y, 1, gen(17)),
                    "hybrid": hybrid_objective(model, x, y, 0.5, gen(17)),
                    "iwae": importance_weighted_bound(model, x, y, 5, gen(17))}
        for objective, values in expected.items():
            loss = training_loss(model, x, y, generator=gen(17), objective=objective)
            torch.testing.assert_close(loss, -values.sum() / NUM_IMAGES)
        regressor = Regressor(3, 2, hidden=(8,), likelihood=likelihoods.Gaussian()).double()
        inputs, targets = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
        loc, raw = regressor.net(inputs).chunk(2, -1)
        log_likelihood = D.Normal(loc, torch.nn.functional.softplus(raw) + 1e-4).log_prob(targets).sum(-1)
        torch.testing.assert_close(training_loss(regressor, inputs, targets), -log_likelihood.sum() / 6)


def test_the_standard_error_is_the_unbiased_standard_deviation_over_root_n():
    """sem = sqrt(sum_n (v_n - mean)^2 / (N - 1)) / sqrt(N): 1 for the values 0 and 2, sqrt(5/3) / 2 for 1, 2, 3, 4;
    none for one value."""
    assert mean_and_sem(torch.tensor([0.0, 2.0], dtype=torch.float64)) == {"mean": 1.0, "sem": 1.0}
    four = mean_and_sem(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    assert four["mean"] == 2.5 and four["sem"] == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-12)
    one = mean_and_sem(torch.tensor([3.0]))
    assert one["mean"] == 3.0 and math.isnan(one["sem"])
