"""The networks: the deterministic baseline and the CVAE with the paper's recurrent connection.

Sohn, Lee, Yan (2015), section 4 and figure 1(d): the baseline network predicts y_hat from x; the
conditional prior network p(z|x) and the generation network p(y|x,z) both receive x with its unknown
pixels filled by y_hat (the "recurrent connection"); the recognition network q(z|x,y) sees the whole
image. All networks are MLPs with ReLU hidden layers (default 500-500, z of 200).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .distributions import DiagonalGaussian, bernoulli_log_likelihood
from .quadrants import IMAGE_SIDE, NUM_PIXELS, QuadrantTask

MIN_SCALE = 1e-4  # keeps every Gaussian scale strictly positive


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


class Autoregression(nn.Module):
    """An autoregressive term added to the generation net's logits, for the strong preset:

        p(y|x,z) = prod_i Bernoulli(y_i; sigmoid(g_i(z, x) + a_i)),   a_i = sum_{j < i} W_ij image_j,

    with i over y's pixels and j over the pixels before i in raster order, of the whole image (x's pixels and
    y's; with a window, only those in the window x window square centred on i): a masked linear layer, as in
    the fully visible sigmoid belief net (Frey 1998) and NADE / MADE (Larochelle & Murray 2011, Germain et
    al. 2015). Each factor is a Bernoulli given earlier pixels, so the
    product is still a normalized distribution of y; with W = 0 (its initial value) it is the paper's
    factorized decoder. a does not depend on z, so it is computed once per image for all samples of z.
    """

    def __init__(self, task: QuadrantTask, window: int = 0):
        super().__init__()
        self.window = int(window)
        outputs = task.output_mask.nonzero()[:, 0]
        self.weight = nn.Parameter(torch.zeros(len(outputs), NUM_PIXELS))
        # mask[i, j] = 1 where pixel j comes before output pixel i in raster order (and, with a window, lies in
        # the window x window square centred on it)
        pixels = torch.arange(NUM_PIXELS)
        mask = pixels < outputs[:, None]
        if self.window:
            near = lambda a, b: (a[:, None] - b[None, :]).abs() <= self.window // 2  # noqa: E731
            mask &= near(outputs // IMAGE_SIDE, pixels // IMAGE_SIDE) & near(outputs % IMAGE_SIDE, pixels % IMAGE_SIDE)
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: the whole image (N, 784), x's and y's pixels -> a (N, num_output_pixels)."""
        return F.linear(image, self.weight * self.mask)


def autoregression_options(model: nn.Module) -> dict:
    """The constructor options that rebuild a model's autoregressive term: {"autoregressive", "ar_window"}."""
    term = model.autoregression
    return {"autoregressive": term is not None, "ar_window": term.window if term is not None else 0}


class BaselineNet(nn.Module):
    """The deterministic baseline: an MLP from x (N, 784) to the logits of the output pixels.

    p(y|x) = prod_i Bernoulli(y_i; sigmoid(f(x)_i)) over the output pixels i only. With autoregressive (only
    the control of the strong preset, autoregressive_baseline.py) the logits get an Autoregression term a_i,
    and the likelihood is still exact.
    """

    def __init__(self, num_quadrants: int, hidden: Sequence[int] = (500, 500), autoregressive: bool = False,
                 ar_window: int = 0):
        super().__init__()
        self.task = QuadrantTask(num_quadrants)
        self.hidden = tuple(int(h) for h in hidden)
        self.net = mlp([NUM_PIXELS, *self.hidden, self.task.num_output_pixels])
        self.autoregression = Autoregression(self.task, ar_window) if autoregressive else None
        self.register_buffer("output_mask", self.task.output_mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 784) -> logits of the output pixels (N, num_output_pixels)."""
        return self.net(x)

    def fill(self, x: torch.Tensor) -> torch.Tensor:
        """x with its unknown pixels replaced by the prediction y_hat = sigmoid(f(x)): (N, 784)."""
        filled = x.clone()
        filled[:, self.output_mask] = torch.sigmoid(self(x)).to(x.dtype)
        return filled

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Exact log p(y|x) summed over the output pixels: x, y (N, 784) -> (N,)."""
        logits = self(x)
        if self.autoregression is not None:
            logits = logits + self.autoregression(torch.where(self.output_mask, y, x))
        return bernoulli_log_likelihood(logits, y[:, self.output_mask])


class GenerationNet(nn.Module):
    """p(y|x,z): an MLP on the concatenation [z, x_filled], with its first layer split in two.

    W [z; x_filled] + b = W_z z + (W_x x_filled + b): the x part is computed once per image and reused
    for every sample of z, which is the same function at a fraction of the cost for many samples.
    """

    def __init__(self, z_dim: int, hidden: Sequence[int], num_outputs: int):
        super().__init__()
        self.from_z = nn.Linear(z_dim, hidden[0], bias=False)
        self.from_x = nn.Linear(NUM_PIXELS, hidden[0])
        self.rest = nn.Sequential(nn.ReLU(), mlp([*hidden, num_outputs]))

    def forward(self, z: torch.Tensor, x_part: torch.Tensor) -> torch.Tensor:
        """z: (..., N, z_dim), x_part = from_x(x_filled): (N, hidden[0]) -> logits (..., N, outputs)."""
        return self.rest(self.from_z(z) + x_part)


class Context(NamedTuple):
    """What the CVAE computes once per batch of images and reuses for every sample of z."""

    filled: torch.Tensor  # (N, 784): x with the baseline's y_hat in the unknown pixels
    generation_input: torch.Tensor  # (N, hidden[0]): the x part of the generation net's first layer
    autoregressive: torch.Tensor | None = None  # (N, outputs): the Autoregression term, when y is known


def gaussian_head(params: torch.Tensor) -> DiagonalGaussian:
    """Split a network's output (..., 2D) into loc and scale = softplus(.) + MIN_SCALE."""
    loc, raw_scale = params.chunk(2, dim=-1)
    return DiagonalGaussian(loc, F.softplus(raw_scale) + MIN_SCALE)


class CVAE(nn.Module):
    """The conditional VAE of Sohn et al. (2015) with the baseline-fed prior (the recurrent connection).

    recognition q(z|x,y): MLP on the whole image (x with y's pixels) -> Gaussian (loc, scale)
    prior       p(z|x):   MLP on x_filled -> Gaussian (loc, scale)
    generation  p(y|x,z): MLP on [z, x_filled] -> Bernoulli logits of the output pixels
    The baseline is frozen: it is trained first and only supplies y_hat. With autoregressive (the strong
    preset; the paper's model has none) the logits get an Autoregression term.
    """

    def __init__(self, baseline: BaselineNet, z_dim: int = 200, hidden: Sequence[int] = (500, 500),
                 autoregressive: bool = False, ar_window: int = 0):
        super().__init__()
        self.baseline = baseline.requires_grad_(False).eval()
        self.task = baseline.task
        self.z_dim = int(z_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.recognition_net = mlp([NUM_PIXELS, *self.hidden, 2 * self.z_dim])
        self.prior_net = mlp([NUM_PIXELS, *self.hidden, 2 * self.z_dim])
        self.generation_net = GenerationNet(self.z_dim, self.hidden, self.task.num_output_pixels)
        self.autoregression = Autoregression(self.task, ar_window) if autoregressive else None
        self.register_buffer("output_mask", self.task.output_mask, persistent=False)

    def train(self, mode: bool = True) -> CVAE:
        super().train(mode)
        self.baseline.eval()  # frozen, whatever the mode of the rest
        return self

    def context(self, x: torch.Tensor, filled: torch.Tensor | None = None, y: torch.Tensor | None = None) -> Context:
        """Per-image work shared by the prior and every sample of the generation net. x: (N, 784).

        filled: the baseline's x_filled when the caller has it already (the baseline is frozen, so
        training computes it once per image instead of once per step). y: the targets, when known, for the
        autoregressive term of log_likelihood (computed there otherwise).
        """
        if filled is None:
            with torch.no_grad():
                filled = self.baseline.fill(x)
        autoregressive = None if y is None else self._autoregressive(x, y)
        return Context(filled, self.generation_net.from_x(filled), autoregressive)

    def _autoregressive(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """The Autoregression term of the output pixels given the whole image: (N, outputs), or None."""
        if self.autoregression is None:
            return None
        return self.autoregression(torch.where(self.output_mask, y, x))

    def prior(self, x: torch.Tensor, context: Context | None = None) -> DiagonalGaussian:
        """p(z|x): loc, scale of shape (N, z_dim)."""
        context = context if context is not None else self.context(x)
        return gaussian_head(self.prior_net(context.filled))

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> DiagonalGaussian:
        """q(z|x,y): x, y (N, 784) with -1 outside their pixels -> loc, scale of shape (N, z_dim)."""
        whole = torch.where(self.output_mask, y, x)
        return gaussian_head(self.recognition_net(whole))

    def logits(self, x: torch.Tensor, z: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        """The generation net's Bernoulli logits g(z, x) of the output pixels: z (..., N, z_dim) -> (..., N, outputs).
        Without an autoregressive term these are the logits of p(y|x,z)."""
        context = context if context is not None else self.context(x)
        return self.generation_net(z, context.generation_input)

    def log_likelihood(
        self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, context: Context | None = None
    ) -> torch.Tensor:
        """log p(y|x,z) summed over the output pixels: z (..., N, z_dim) -> (..., N)."""
        context = context if context is not None else self.context(x, y=y)
        logits = self.logits(x, z, context)
        if self.autoregression is not None:
            a = context.autoregressive
            logits = logits + (a if a is not None else self._autoregressive(x, y))
        return bernoulli_log_likelihood(logits, y[:, self.output_mask])

    @torch.no_grad()
    def sample(
        self, x: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Predictions from the prior: the means sigmoid(logits) of p(y|x,z), z ~ p(z|x) (with an autoregressive
        term, each pixel's mean given the means of the pixels before it).

        x: (N, 784) -> (num_samples, N, 784) whole images (x's pixels kept, y's pixels predicted).
        """
        context = self.context(x)
        z = self.prior(x, context).rsample((num_samples,), generator=generator)
        logits = self.logits(x, z, context)
        if self.autoregression is None:
            return self.task.combine(x, torch.sigmoid(logits))
        # one output pixel at a time in raster order, each set to its mean given the earlier ones
        image = self.task.combine(x, torch.zeros_like(logits)).flatten(0, 1)
        logits, weight = logits.flatten(0, 1), self.autoregression.weight * self.autoregression.mask
        for j, i in enumerate(self.output_mask.nonzero()[:, 0].tolist()):
            image[:, i] = torch.sigmoid(logits[:, j] + image @ weight[j])
        return image.view(num_samples, *x.shape)
