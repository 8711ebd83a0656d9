"""The quadrant experiment's networks: shapes of the public API, the recurrent connection, the split generation
layer, the autoregressive term."""

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

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


def per_example(n: int, pattern: torch.Tensor) -> torch.Tensor:
    """The zero pattern of a Jacobian (n, rows, n, cols) whose example m depends on example m only, through
    pattern (rows, cols): True where an output may (and must) depend on an input."""
    return torch.eye(n, dtype=torch.bool)[:, None, :, None] & pattern[None, :, None, :]


def depends_on(function, inputs: torch.Tensor) -> torch.Tensor:
    """Where function(inputs) depends on inputs: the exact nonzero pattern of its Jacobian (float64)."""
    return jacobian(function, inputs, vectorize=True) != 0


def float64_model(k: int = 2, z_dim: int = 3) -> CVAE:
    return small(k, z_dim).double()


def float64_data(k: int = 2, n: int = 3):
    x, y = data(k, n)
    return x.double(), y.double()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_prior_sees_x_s_pixels_and_the_baselines_prediction_and_nothing_else(k):
    """The recurrent connection: p(z|x) is a function of the filled image, x's input pixels and y_hat in place of
    the -1 placeholders. Its loc and scale depend on every input pixel and every pixel of y_hat of their own example,
    and on nothing else: not on the placeholders, not on another example."""
    model, (x, _) = float64_model(k), float64_data(k)
    task, n = model.task, x.shape[0]
    y_hat = model.baseline(x)

    def prior(x_=x, y_hat_=y_hat):  # (N, 6): loc and scale
        gaussian = model.prior(x_, model.context(x_, y_hat=y_hat_))
        return torch.cat([gaussian.loc, gaussian.scale], dim=-1)

    assert torch.equal(depends_on(lambda x_: prior(x_=x_), x), per_example(n, task.input_mask.expand(6, -1)))
    assert torch.equal(depends_on(lambda y_hat_: prior(y_hat_=y_hat_), y_hat),
                       per_example(n, torch.ones(6, task.num_output_pixels, dtype=torch.bool)))
    default = model.prior(x)  # its y_hat is the baseline's prediction
    assert torch.equal(torch.cat([default.loc, default.scale], dim=-1), prior())
    with torch.no_grad():
        model.baseline.net[-1].bias.add_(1.0)  # another baseline: every number of p(z|x) moves
    after = model.prior(x)
    assert (after.loc != default.loc).all() and (after.scale != default.scale).all()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_generation_net_sees_z_x_s_pixels_and_the_baselines_prediction_of_its_own_sample_and_example(k):
    """g(z, x_filled) through the split first layer: params[s, n] depends on every coordinate of z[s, n], every
    input pixel of x[n] and every pixel of y_hat[n], and on nothing else (not on the -1 placeholders of x, not on
    another sample's z nor on another example)."""
    model, (x, _) = float64_model(k), float64_data(k)
    task, n, samples, outputs = model.task, x.shape[0], 2, model.task.num_output_pixels
    y_hat = model.baseline(x)
    z = torch.randn(samples, n, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def params(x_=x, z_=z, y_hat_=y_hat):
        return model.params(x_, z_, model.context(x_, y_hat=y_hat_))

    assert torch.equal(params(), model.params(x, z))
    everything = torch.ones(outputs, 3, dtype=torch.bool)
    pattern_z = (torch.eye(samples * n, dtype=torch.bool).reshape(samples, n, 1, samples, n, 1)
                 & everything[None, None, :, None, None, :])
    assert torch.equal(depends_on(lambda z_: params(z_=z_), z), pattern_z)
    for_each_sample = lambda pattern: per_example(n, pattern).expand(samples, -1, -1, -1, -1)  # noqa: E731
    assert torch.equal(depends_on(lambda x_: params(x_=x_), x), for_each_sample(task.input_mask.expand(outputs, -1)))
    assert torch.equal(depends_on(lambda y_hat_: params(y_hat_=y_hat_), y_hat),
                       for_each_sample(torch.ones(outputs, outputs, dtype=torch.bool)))


@pytest.mark.parametrize("targets", ["binary", "grayscale"])
@pytest.mark.parametrize("autoregressive", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_log_likelihood_is_the_bernoulli_of_exactly_the_output_pixels(k, autoregressive, targets):
    """log p(y|x,z) = sum over the 4 - k output quadrants' pixels of log Bernoulli(pixel; logit), the logits the
    generation net's (plus, in the strong preset, a_i = sum_j W_ij image_j over the earlier pixels j), scored with
    torch.distributions at the pixels' places in the whole image. Not over the input pixels, not over all 784."""
    torch.manual_seed(k)
    model = CVAE(BaselineNet(k, hidden=(8,)), z_dim=3, hidden=(8,), autoregressive=autoregressive).double()
    task = model.task
    images = torch.rand(4, 784, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    images = (images > 0.5).double() if targets == "binary" else images
    logits = torch.zeros(2, 4, 784, dtype=torch.float64)  # per pixel of the whole image; only y's are filled in
    z = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x, y = task.split(images)
    with torch.no_grad():
        model.generation_net.rest[-1][-1].weight.mul_(10.0)  # logits of several units: every pixel's term counts
    logits[..., task.output_mask] = model.params(x, z)
    if autoregressive:
        nn.init.normal_(model.autoregression.weight, std=0.1)
        with torch.no_grad():
            weights = torch.zeros(784, 784, dtype=torch.float64)  # W_ij for output pixel i, earlier pixel j
            weights[task.output_mask] = model.autoregression.weight * autoregressive_pattern(task)
            logits += images @ weights.T
    per_pixel = torch.distributions.Bernoulli(logits=logits, validate_args=targets == "binary").log_prob(images)
    expected = per_pixel[..., task.output_mask].sum(-1)
    got = model.log_likelihood(x, y, z)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)
    # a sum over all 784 pixels is far from it: k x 196 more terms, each -log 2 at logit 0
    assert ((per_pixel.sum(-1) - got).abs() > 100).all()


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


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_recognition_net_sees_x_s_pixels_and_y_and_nothing_else(k):
    """q(z|x,y) is a function of the whole image: its loc and scale depend on every input pixel of x and every
    pixel of y of their own example, not on x's -1 placeholders (y's pixels replace them), not on another example."""
    model, (x, y) = float64_model(k), float64_data(k)
    task, n = model.task, x.shape[0]

    def posterior(x_=x, y_=y):  # (N, 6): loc and scale
        gaussian = model.posterior(x_, y_)
        return torch.cat([gaussian.loc, gaussian.scale], dim=-1)

    assert torch.equal(depends_on(lambda x_: posterior(x_=x_), x), per_example(n, task.input_mask.expand(6, -1)))
    assert torch.equal(depends_on(lambda y_: posterior(y_=y_), y),
                       per_example(n, torch.ones(6, task.num_output_pixels, dtype=torch.bool)))


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


def autoregressive_pattern(task: QuadrantTask, window: int = 0) -> torch.Tensor:
    """(num_output_pixels, 784): True where output pixel i's term a_i must depend on image pixel j: j lies before i
    in raster order (an earlier row, or the same row and an earlier column) and, with a window, within the
    window x window square centred on i. Written from the rows and columns, not from the pixels' indices."""
    rows, cols = torch.arange(784) // 28, torch.arange(784) % 28
    out_rows, out_cols = rows[task.output_mask][:, None], cols[task.output_mask][:, None]
    before = (rows < out_rows) | ((rows == out_rows) & (cols < out_cols))
    if window:
        before &= ((rows - out_rows).abs() <= window // 2) & ((cols - out_cols).abs() <= window // 2)
    return before


@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_autoregressive_term_of_each_pixel_sees_exactly_the_earlier_pixels(k, window):
    """a_i depends on every pixel before output pixel i in raster order (x's input pixels and y's, within the
    window when there is one) and on nothing else: not on itself, a later pixel, x's -1 placeholders (y's pixels
    replace them) or another example."""
    torch.manual_seed(1)
    model = CVAE(BaselineNet(k, hidden=(8,)), z_dim=3, hidden=(8,), autoregressive=True, ar_window=window).double()
    nn.init.normal_(model.autoregression.weight, std=0.1)  # starts at zero: make the term non-trivial
    x, y = float64_data(k)
    task, n = model.task, x.shape[0]
    pattern = autoregressive_pattern(task, window)
    assert torch.equal(depends_on(lambda x_: model.autoregression(x_, y), x), per_example(n, pattern & task.input_mask))
    assert torch.equal(depends_on(lambda y_: model.autoregression(x, y_), y),
                       per_example(n, pattern[:, task.output_mask]))
    if window == 5 and k == 1:  # a pixel well inside the output quadrants: the 12 pixels before it in its 5x5 square
        assert int(pattern[300].sum()) == 12


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
    assert (cached != bernoulli_log_likelihood(model.params(x, z), y)).all()  # the term moves every one


def test_autoregressive_samples_are_each_pixels_mean_given_the_earlier_ones():
    model = autoregressive_model()
    x, _ = data(n=3)
    samples = model.sample(x, 2, generator=torch.Generator().manual_seed(0), mean=True)
    assert samples.shape == (2, 3, 392)
    z = model.prior(x).rsample((2,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # teacher-forced on its own output, the model reproduces it: a fixed point
        a = model.autoregression(x, samples)
        torch.testing.assert_close(torch.sigmoid(model.params(x, z) + a), samples)
