"""The quadrant experiment's networks: shapes of the public API, the recurrent connection, the split generation
layer, the autoregressive term."""

import torch
from torch import nn

from cvae import CVAE, BaselineNet, QuadrantTask
from cvae.distributions import bernoulli_log_likelihood
from cvae.objectives import elbo, training_loss


def data(k: int = 2, n: int = 6):
    return QuadrantTask(k).split(torch.rand(n, 784, generator=torch.Generator().manual_seed(0)))


def small(k: int = 2, z_dim: int = 3) -> CVAE:
    torch.manual_seed(0)
    return CVAE(BaselineNet(k, hidden=(16, 16)), z_dim=z_dim, hidden=(16, 16))


def test_public_api_shapes():
    model = small(z_dim=3)
    x, y = data(n=6)
    prior, posterior = model.prior(x), model.posterior(x, y)
    assert prior.loc.shape == prior.scale.shape == (6, 3)
    assert posterior.loc.shape == posterior.scale.shape == (6, 3)
    assert (prior.scale > 0).all() and (posterior.scale > 0).all()
    assert model.log_likelihood(x, y, torch.randn(6, 3)).shape == (6,)
    assert model.log_likelihood(x, y, torch.randn(5, 6, 3)).shape == (5, 6)
    assert model.log_likelihood(x, y, torch.randn(2, 5, 6, 3)).shape == (2, 5, 6)
    assert model.sample(x, 4).shape == model.sample(x, 4, mean=True).shape == (4, 6, 392)


def test_baseline_log_likelihood_is_the_bernoulli_of_the_output_pixels_and_its_prediction_their_mean():
    k = 3
    baseline = BaselineNet(k, hidden=(8,))
    x, y = data(k)
    assert y.shape == (6, 196)
    logits = baseline.net(x)
    reference = torch.distributions.Bernoulli(logits=logits).log_prob((y > 0.5).float()).sum(-1)
    torch.testing.assert_close(baseline.log_likelihood(x, (y > 0.5).float()), reference)
    assert torch.equal(baseline(x), torch.sigmoid(logits))


def test_the_filled_image_keeps_the_input_pixels_and_holds_the_prediction_elsewhere():
    model = small(k=1)
    x, _ = data(1)
    filled = model.context(x).condition
    mask = QuadrantTask(1).input_mask
    assert torch.equal(filled[:, mask], x[:, mask])
    assert torch.equal(filled[:, ~mask], model.baseline(x))


def test_the_prior_sees_the_baselines_prediction():
    """The recurrent connection: changing the baseline changes p(z|x) (and nothing else does)."""
    model = small()
    x, y = data()
    before = model.prior(x).loc.detach().clone()
    with torch.no_grad():
        model.baseline.net[-1].bias.add_(1.0)
    assert not torch.allclose(model.prior(x).loc, before)


def test_the_generation_net_sees_x_as_well_as_z():
    model = small()
    x, y = data()
    z = torch.randn(6, 3)
    other_x, _ = data(n=6)
    other_x = other_x.flip(0)
    assert not torch.allclose(model.log_likelihood(x, y, z), model.log_likelihood(other_x, y, z))


def test_split_first_layer_equals_one_layer_on_the_concatenation():
    model = small(z_dim=3)
    x, _ = data()
    filled = model.combine(x, model.baseline(x))
    z = torch.randn(6, 3)
    net = model.generation_net
    joint = nn.Linear(3 + 784, 16)
    with torch.no_grad():
        joint.weight.copy_(torch.cat([net.from_z.weight, net.from_x.weight], dim=1))
        joint.bias.copy_(net.from_x.bias)
    expected = net.rest(joint(torch.cat([z, filled], dim=1)))
    torch.testing.assert_close(model.params(x, z), expected)


def test_the_posterior_sees_y():
    model = small()
    x, y = data()
    assert not torch.allclose(model.posterior(x, y).loc, model.posterior(x, y.flip(0)).loc)


def test_training_updates_cvae_networks_but_never_the_frozen_baseline():
    model = small()
    x, y = data()
    baseline_before = {k: v.clone() for k, v in model.baseline.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    for _ in range(3):
        loss = training_loss(model, x, y, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in model.baseline.state_dict().items():
        assert torch.equal(value, baseline_before[key])
    assert all(p.grad is not None for p in trainable)
    assert not model.baseline.training  # stays in eval mode even under model.train()
    model.train()
    assert not model.baseline.training


def test_a_precomputed_prediction_gives_the_same_elbo():
    model = small()
    x, y = data()
    a = elbo(model, x, y, 4, torch.Generator().manual_seed(1))
    b = elbo(model, x, y, 4, torch.Generator().manual_seed(1), model.baseline(x))
    torch.testing.assert_close(a, b)


def autoregressive_model(k: int = 2) -> CVAE:
    torch.manual_seed(1)
    model = CVAE(BaselineNet(k, hidden=(16, 16)), z_dim=3, hidden=(16, 16), autoregressive=True)
    nn.init.normal_(model.autoregression.weight, std=0.1)  # starts at zero: make the term non-trivial
    return model.eval()


def test_autoregressive_term_sees_only_earlier_pixels_of_y():
    model = autoregressive_model()
    x, y = data()
    before = model.autoregression(x, y)
    j = 100  # an output pixel in the middle of y, raster order
    changed = y.clone()
    changed[:, j] += 0.5
    after = model.autoregression(x, changed)
    assert torch.equal(after[:, :j + 1], before[:, :j + 1])  # itself and every earlier pixel: unchanged
    assert (after[:, j + 1:] != before[:, j + 1:]).all()  # every later pixel sees it


def test_autoregressive_likelihood_is_normalized_over_the_last_pixels():
    """Sum over the 2^3 binary values of y's last three pixels of p(those | everything before) = 1."""
    model = autoregressive_model()
    x, y = data(n=2)
    y = (y > 0.5).double()  # binary targets
    model = model.double()
    x, z = x.double(), torch.randn(2, 3, dtype=torch.float64)
    last = torch.arange(y.shape[1] - 3, y.shape[1])
    total = torch.zeros(2, dtype=torch.float64)
    for bits in range(8):
        candidate = y.clone()
        candidate[:, last] = torch.tensor([(bits >> b) & 1 for b in range(3)], dtype=torch.float64)
        total += (model.log_likelihood(x, candidate, z) - model.log_likelihood(x, candidate.index_fill(1, last, 0), z)
                  + _log_prob_of_zeros(model, x, candidate, z, last)).exp()
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64))


def _log_prob_of_zeros(model: CVAE, x, y, z, last) -> torch.Tensor:
    """log p(y's last pixels = 0 | earlier pixels of y): the factors of those pixels with all three set to 0."""
    zeros = y.index_fill(1, last, 0)
    context = model.context(x, y=zeros)
    logits = model.params(x, z, context) + context.autoregressive
    return -nn.functional.softplus(logits[:, -3:]).sum(-1)


def test_autoregressive_term_starts_at_zero_and_is_cached_per_image():
    torch.manual_seed(0)
    model = CVAE(BaselineNet(2, hidden=(16, 16)), z_dim=3, hidden=(16, 16), autoregressive=True)
    x, y = data()
    z = torch.randn(5, 6, 3)
    plain = bernoulli_log_likelihood(model.params(x, z), y)
    torch.testing.assert_close(model.log_likelihood(x, y, z), plain)  # a fresh term adds nothing
    model = autoregressive_model()
    cached = model.log_likelihood(x, y, z, model.context(x, y=y))
    torch.testing.assert_close(model.log_likelihood(x, y, z, model.context(x)), cached)  # computed on the fly
    assert not torch.allclose(cached, bernoulli_log_likelihood(model.params(x, z), y))


def test_autoregressive_samples_are_each_pixels_mean_given_the_earlier_ones():
    model = autoregressive_model()
    x, _ = data(n=3)
    samples = model.sample(x, 2, generator=torch.Generator().manual_seed(0), mean=True)
    assert samples.shape == (2, 3, 392)
    z = model.prior(x).rsample((2,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # teacher-forced on its own output, the model reproduces it: a fixed point
        a = model.autoregression(x, samples)
        torch.testing.assert_close(torch.sigmoid(model.params(x, z) + a), samples)


def test_a_windowed_autoregressive_term_sees_only_earlier_pixels_nearby():
    torch.manual_seed(2)
    model = CVAE(BaselineNet(1, hidden=(16,)), z_dim=3, hidden=(16,), autoregressive=True, ar_window=5)
    nn.init.normal_(model.autoregression.weight, std=0.1)
    x, y = data(k=1)
    outputs = model.task.output_mask.nonzero()[:, 0]
    j = 300
    changed = y.clone()
    changed[:, j] += 0.5
    moved = (model.autoregression(x, changed) != model.autoregression(x, y)).any(0)
    row, col = outputs[j] // 28, outputs[j] % 28
    near = ((outputs // 28 - row).abs() <= 2) & ((outputs % 28 - col).abs() <= 2) & (outputs > outputs[j])
    assert torch.equal(moved, near) and near.sum() == 12  # the later pixels of its 5x5 square, no others
