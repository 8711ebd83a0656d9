"""Examples of any shape: x_dim and y_dim take an int or a shape, x (N, *x_shape) and y (N, *y_shape). The default
MLPs flatten (a shaped model computes what the flat one computes), log p(y|x,z) sums over all of y's dimensions, the
user's modules get the shaped tensors, and networks="conv" builds convolutional networks for images (C, H, W)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from cvae import ConditionalVAE, Regressor, fit, likelihoods
from cvae.estimators import cll_importance, cll_monte_carlo, negative_elbo
from cvae.records import load

pytestmark = pytest.mark.usefixtures("one_thread")
ESTIMATORS = (cll_importance, cll_monte_carlo, negative_elbo)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """The source's parameters into the target's, in order (their names may differ: a Flatten shifts them)."""
    with torch.no_grad():
        pairs = list(zip(source.parameters(), target.parameters(), strict=True))
        for a, b in pairs:
            b.copy_(a)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[key], sb[key]) for key in sa)


@pytest.mark.parametrize("likelihood", [likelihoods.Gaussian(), likelihoods.Bernoulli()], ids=repr)
@pytest.mark.parametrize("prior_components", [1, 3])
def test_a_shaped_model_computes_what_the_flat_model_computes(likelihood, prior_components):
    torch.manual_seed(0)
    flat = ConditionalVAE(6, 4, z_dim=2, hidden=(8,), likelihood=likelihood, prior_components=prior_components)
    shaped = ConditionalVAE((2, 3), (2, 2), z_dim=2, hidden=(8,), likelihood=likelihood,
                            prior_components=prior_components)
    copy_weights(flat, shaped)
    x = torch.randn(5, 2, 3, generator=gen(1))
    y = torch.rand(5, 2, 2, generator=gen(2))
    xf, yf = x.flatten(1), y.flatten(1)
    z = torch.randn(3, 5, 2, generator=gen(3))
    with torch.no_grad():
        assert torch.equal(shaped.log_likelihood(x, y, z), flat.log_likelihood(xf, yf, z))
        assert torch.equal(shaped.posterior(x, y).loc, flat.posterior(xf, yf).loc)
    for estimator in ESTIMATORS:
        assert torch.equal(estimator(shaped, x, y, num_samples=7, generator=gen(4)),
                           estimator(flat, xf, yf, num_samples=7, generator=gen(4)))
    samples = shaped.sample(x, 4, generator=gen(5))
    assert samples.shape == (4, 5, 2, 2)
    assert torch.equal(samples.flatten(2), flat.sample(xf, 4, generator=gen(5)))
    assert torch.equal(shaped.sample(x, 2, mean=True, generator=gen(6)).flatten(2),
                       flat.sample(xf, 2, mean=True, generator=gen(6)))


def test_the_likelihood_sums_over_every_dimension_of_y():
    torch.manual_seed(0)
    model = ConditionalVAE((3,), (2, 3, 4), z_dim=2, hidden=(8,), likelihood=likelihoods.Gaussian())
    x, y = torch.randn(5, 3, generator=gen(1)), torch.randn(5, 2, 3, 4, generator=gen(2))
    z = torch.randn(6, 5, 2, generator=gen(3))
    with torch.no_grad():
        params = model.params(x, z)  # (6, 5, 2 * 24): the locs of y.flatten(1), then their raw scales
        loc, raw = params.unflatten(-1, (2, 2, 3, 4)).unbind(-4)
        reference = D.Normal(loc, F.softplus(raw) + 1e-4).log_prob(y).sum((-3, -2, -1))
        torch.testing.assert_close(model.log_likelihood(x, y, z), reference)
    regressor = Regressor((3,), (2, 3, 4), hidden=(8,), likelihood=likelihoods.Bernoulli())
    targets = (y > 0).float()
    with torch.no_grad():
        logits = regressor.net(x).unflatten(-1, (2, 3, 4))
        torch.testing.assert_close(regressor.log_likelihood(x, targets),
                                   D.Bernoulli(logits=logits).log_prob(targets).sum((-3, -2, -1)))
        assert regressor(x).shape == (5, 2, 3, 4)


class Seen(nn.Module):
    """A module of the user's own that records the shapes it is called with, then applies ``then``."""

    def __init__(self, then):
        super().__init__()
        self.then, self.calls = then, []

    def forward(self, *inputs):
        self.calls.append(tuple(tuple(t.shape) for t in inputs))
        return self.then(*inputs)


def test_the_users_modules_receive_the_shaped_tensors():
    torch.manual_seed(0)
    z_dim, image = 2, (1, 4, 4)
    recognition = Seen(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(48, 2 * z_dim)))
    prior = Seen(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(48, 2 * z_dim)))
    decoder = nn.Linear(z_dim + 32, 2 * 16)
    generation = Seen(lambda z, c: decoder(torch.cat([z, c.flatten(1)], 1)).view(-1, 2, *image))  # shaped output
    regressor_net = Seen(nn.Sequential(nn.Flatten(), nn.Linear(16, 32)))
    baseline = Regressor(image, image, net=regressor_net)
    model = ConditionalVAE(image, image, z_dim=z_dim, recognition=recognition, prior=prior, generation=generation,
                           baseline=baseline)
    model.decoder = decoder  # its weights trained and saved with the model's
    x, y = torch.randn(5, *image, generator=gen(1)), torch.randn(5, *image, generator=gen(2))
    value = cll_importance(model, x, y, num_samples=3, generator=gen(3))
    assert value.shape == (5,) and torch.isfinite(value).all()
    assert regressor_net.calls[0] == ((5, *image),)  # the baseline: x
    assert recognition.calls == [((5, 2, 4, 4),)]  # combine(x, y): the two images as channels
    assert prior.calls == [((5, 2, 4, 4),)]  # c = combine(x, y_hat)
    assert generation.calls == [((15, z_dim), (15, 2, 4, 4))]  # module(z, c), c repeated for each sample of z
    assert model.sample(x, 3, generator=gen(4)).shape == (3, 5, *image)
    history = fit(model, (x, y), (x, y), epochs=2, batch_size=4, kl_warmup=0, progress=False)
    assert len(history) == 2


def image_data(n: int, seed: int, classes: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x: the top half of an 8x8 image of bars, y: its bottom half (both (1, 4, 8)), one of two patterns per image
    with noise; with classes, y of three classes per pixel (the bar's intensity levels)."""
    generator = gen(seed)
    kind = torch.randint(0, 2, (n, 1, 1, 1), generator=generator)
    rows = torch.arange(8).view(1, 1, 8, 1).expand(n, 1, 8, 8)
    images = torch.where(kind == 1, (rows % 2 == 0).float(), (torch.arange(8).view(1, 1, 1, 8) % 3 == 0).float())
    images = (images + 0.05 * torch.randn(n, 1, 8, 8, generator=generator)).clamp(0, 1)
    x, y = images[:, :, :4], images[:, :, 4:]
    return (x, (y * 2.99).long()) if classes else (x, y)


def test_conv_networks_train_on_images_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ConditionalVAE((1, 4, 8), (1, 4, 8), z_dim=2, hidden=(4, 8), networks="conv",
                           likelihood=likelihoods.ContinuousBernoulli(), prior_components=2)
    assert any(isinstance(m, nn.Conv2d) for m in model.recognition_net.modules())
    assert any(isinstance(m, nn.Conv2d) for m in model.prior_net.modules())
    assert any(isinstance(m, nn.Conv2d) for m in model.generation_net.modules())
    train, val = image_data(256, 0), image_data(64, 1)
    history = fit(model, train, val, epochs=4, batch_size=32, lr=1e-2, kl_warmup=0, progress=False)
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 5, history  # nats per 32-pixel half image
    assert model.sample(val[0][:3], 5).shape == (5, 3, 1, 4, 8)

    model.save(tmp_path / "model.pt")
    record = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    assert record["args"]["x_dim"] == [1, 4, 8] and record["args"]["networks"] == "conv"
    json.dumps(record)  # JSON values
    loaded = ConditionalVAE.load(tmp_path / "model.pt")
    assert loaded.x_dim == (1, 4, 8) and loaded.networks == "conv" and loaded.custom == []
    assert_same_state(loaded, model)
    x, y = val
    assert torch.equal(cll_importance(loaded, x, y, num_samples=5, generator=gen(2)),
                       cll_importance(model, x, y, num_samples=5, generator=gen(2)))
    flat = ConditionalVAE(3, 2)
    flat.save(tmp_path / "flat.pt")  # an int stays an int, and no networks key is added
    assert torch.load(tmp_path / "flat.pt", weights_only=True)["model"]["args"]["x_dim"] == 3
    assert "networks" not in torch.load(tmp_path / "flat.pt", weights_only=True)["model"]["args"]


def test_conv_networks_with_a_flat_x_categorical_pixels_and_a_convolutional_regressor_baseline(tmp_path):
    x, y = image_data(128, 0, classes=True)
    labels = F.one_hot((x.mean((1, 2, 3)) > x.mean()).long(), 2).float()  # a flat x: (N, 2)
    torch.manual_seed(0)
    baseline = Regressor(2, (1, 4, 8), hidden=(4,), likelihood=likelihoods.Categorical(3), networks="conv")
    fit(baseline, (labels, y), (labels, y), epochs=2, batch_size=32, progress=False)
    assert baseline(labels).shape == (128, 1, 4, 8, 3)
    model = ConditionalVAE(2, (1, 4, 8), z_dim=2, hidden=(4, 8), likelihood=likelihoods.Categorical(3),
                           networks="conv", baseline=baseline)
    assert model.combine.out_shape == (2 + 3, 4, 8)  # x's values repeated over the pixels, y one-hot as channels
    history = fit(model, (labels, y), (labels, y), epochs=2, batch_size=32, kl_warmup=0, progress=False)
    assert len(history) == 2
    samples = model.sample(labels[:4], 6, generator=gen(1))
    assert samples.shape == (6, 4, 1, 4, 8) and samples.dtype == torch.int64 and samples.max() <= 2
    assert model.sample(labels[:4], 2, mean=True).shape == (2, 4, 1, 4, 8, 3)
    model.save(tmp_path / "model.pt")
    assert_same_state(load(tmp_path / "model.pt"), model)
    regressor = Regressor((1, 4, 8), (1, 4, 8), hidden=(4, 8), networks="conv")
    assert regressor(x.float()).shape == (128, 1, 4, 8)


@pytest.mark.parametrize("arguments, match", [
    (dict(x_dim=(1, 0)), r"x_dim must be a positive integer, got \(1, 0\); or a shape"),
    (dict(y_dim=()), r"y_dim must be a positive integer, got \(\); or a shape"),
    (dict(y_dim=(2, 2.5)), r"y_dim must be a positive integer, got \(2, 2.5\)"),
    (dict(networks="cnn"), "networks must be one of 'mlp', 'conv', got 'cnn'"),
    (dict(networks="conv"), r"networks='conv' builds convolutional networks for y of shape \(C, H, W\) .* got "
                            r"y_dim=4"),
    (dict(y_dim=(4, 4), networks="conv"), r"got y_dim=\(4, 4\)"),
    (dict(y_dim=(2, 2), autoregression=nn.Identity()), r"autoregression= works with flat y only"),
], ids=["x-zero", "y-empty", "y-float", "networks-unknown", "conv-flat-y", "conv-2d-y", "autoregression-shaped"])
def test_bad_shapes_are_refused_with_a_value_error(arguments, match):
    with pytest.raises(ValueError, match=match):
        ConditionalVAE(**(dict(x_dim=3, y_dim=4, z_dim=2, hidden=(8,)) | arguments))


def test_data_of_the_wrong_shape_is_named_with_the_shape_expected():
    torch.manual_seed(0)
    model = ConditionalVAE((1, 4, 4), (2,), z_dim=2, hidden=(8,))
    x, y = torch.randn(5, 1, 4, 4), torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"^x must have shape \(N, 1, 4, 4\) \(x_dim=\(1, 4, 4\)\), got \(5, 16\)"):
        cll_importance(model, x.flatten(1), y, num_samples=2)
    x[1, 0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"^train\[0\] \(x\) holds a non-finite value, nan at example 1, position "
                                         r"\(0, 2, 3\)"):
        fit(model, (x, y), (x, y), epochs=1, progress=False)
