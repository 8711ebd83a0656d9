"""The networks: shapes of the public API, the recurrent connection, the split generation layer."""

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
    assert model.sample(x, 4).shape == (4, 6, 784)


def test_baseline_log_likelihood_counts_output_pixels_only():
    k = 3
    baseline = BaselineNet(k, hidden=(8,))
    x, y = data(k)
    changed = y.clone()
    changed[:, QuadrantTask(k).input_mask] = 0.123  # pixels that are not part of y
    assert torch.equal(baseline.log_likelihood(x, y), baseline.log_likelihood(x, changed))
    expected = bernoulli_log_likelihood(baseline(x), y[:, QuadrantTask(k).output_mask])
    torch.testing.assert_close(baseline.log_likelihood(x, y), expected)


def test_fill_keeps_the_input_pixels_and_predicts_the_others():
    baseline = BaselineNet(1, hidden=(8,))
    x, _ = data(1)
    filled = baseline.fill(x)
    mask = QuadrantTask(1).input_mask
    assert torch.equal(filled[:, mask], x[:, mask])
    assert ((filled[:, ~mask] > 0) & (filled[:, ~mask] < 1)).all()


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
    filled = model.baseline.fill(x)
    z = torch.randn(6, 3)
    net = model.generation_net
    joint = nn.Linear(3 + 784, 16)
    with torch.no_grad():
        joint.weight.copy_(torch.cat([net.from_z.weight, net.from_x.weight], dim=1))
        joint.bias.copy_(net.from_x.bias)
    expected = net.rest(joint(torch.cat([z, filled], dim=1)))
    torch.testing.assert_close(model.logits(x, z), expected)


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


def test_precomputed_fill_gives_the_same_elbo():
    model = small()
    x, y = data()
    filled = model.baseline.fill(x)
    a = elbo(model, x, y, 4, torch.Generator().manual_seed(1))
    b = elbo(model, x, y, 4, torch.Generator().manual_seed(1), filled)
    torch.testing.assert_close(a, b)
