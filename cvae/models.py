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
from .quadrants import NUM_PIXELS, QuadrantTask

MIN_SCALE = 1e-4  # keeps every Gaussian scale strictly positive


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


class BaselineNet(nn.Module):
    """The deterministic baseline: an MLP from x (N, 784) to the logits of the output pixels.

    p(y|x) = prod_i Bernoulli(y_i; sigmoid(f(x)_i)) over the output pixels i only.
    """

    def __init__(self, num_quadrants: int, hidden: Sequence[int] = (500, 500)):
        super().__init__()
        self.task = QuadrantTask(num_quadrants)
        self.hidden = tuple(int(h) for h in hidden)
        self.net = mlp([NUM_PIXELS, *self.hidden, self.task.num_output_pixels])
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
        return bernoulli_log_likelihood(self(x), y[:, self.output_mask])


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
    """What the CVAE computes once per batch of inputs x and reuses for every sample of z."""

    filled: torch.Tensor  # (N, 784): x with the baseline's y_hat in the unknown pixels
    generation_input: torch.Tensor  # (N, hidden[0]): the x part of the generation net's first layer


def gaussian_head(params: torch.Tensor) -> DiagonalGaussian:
    """Split a network's output (..., 2D) into loc and scale = softplus(.) + MIN_SCALE."""
    loc, raw_scale = params.chunk(2, dim=-1)
    return DiagonalGaussian(loc, F.softplus(raw_scale) + MIN_SCALE)


class CVAE(nn.Module):
    """The conditional VAE of Sohn et al. (2015) with the baseline-fed prior (the recurrent connection).

    recognition q(z|x,y): MLP on the whole image (x with y's pixels) -> Gaussian (loc, scale)
    prior       p(z|x):   MLP on x_filled -> Gaussian (loc, scale)
    generation  p(y|x,z): MLP on [z, x_filled] -> Bernoulli logits of the output pixels
    The baseline is frozen: it is trained first and only supplies y_hat.
    """

    def __init__(self, baseline: BaselineNet, z_dim: int = 200, hidden: Sequence[int] = (500, 500)):
        super().__init__()
        self.baseline = baseline.requires_grad_(False).eval()
        self.task = baseline.task
        self.z_dim = int(z_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.recognition_net = mlp([NUM_PIXELS, *self.hidden, 2 * self.z_dim])
        self.prior_net = mlp([NUM_PIXELS, *self.hidden, 2 * self.z_dim])
        self.generation_net = GenerationNet(self.z_dim, self.hidden, self.task.num_output_pixels)
        self.register_buffer("output_mask", self.task.output_mask, persistent=False)

    def train(self, mode: bool = True) -> CVAE:
        super().train(mode)
        self.baseline.eval()  # frozen, whatever the mode of the rest
        return self

    def context(self, x: torch.Tensor, filled: torch.Tensor | None = None) -> Context:
        """Per-image work shared by the prior and every sample of the generation net. x: (N, 784).

        filled: the baseline's x_filled when the caller has it already (the baseline is frozen, so
        training computes it once per image instead of once per step).
        """
        if filled is None:
            with torch.no_grad():
                filled = self.baseline.fill(x)
        return Context(filled, self.generation_net.from_x(filled))

    def prior(self, x: torch.Tensor, context: Context | None = None) -> DiagonalGaussian:
        """p(z|x): loc, scale of shape (N, z_dim)."""
        context = context if context is not None else self.context(x)
        return gaussian_head(self.prior_net(context.filled))

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> DiagonalGaussian:
        """q(z|x,y): x, y (N, 784) with -1 outside their pixels -> loc, scale of shape (N, z_dim)."""
        whole = torch.where(self.output_mask, y, x)
        return gaussian_head(self.recognition_net(whole))

    def logits(self, x: torch.Tensor, z: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        """Bernoulli logits of p(y|x,z) for the output pixels: z (..., N, z_dim) -> (..., N, outputs)."""
        context = context if context is not None else self.context(x)
        return self.generation_net(z, context.generation_input)

    def log_likelihood(
        self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, context: Context | None = None
    ) -> torch.Tensor:
        """log p(y|x,z) summed over the output pixels: z (..., N, z_dim) -> (..., N)."""
        return bernoulli_log_likelihood(self.logits(x, z, context), y[:, self.output_mask])

    @torch.no_grad()
    def sample(
        self, x: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Predictions from the prior: the means sigmoid(logits) of p(y|x,z), z ~ p(z|x).

        x: (N, 784) -> (num_samples, N, 784) whole images (x's pixels kept, y's pixels predicted).
        """
        context = self.context(x)
        z = self.prior(x, context).rsample((num_samples,), generator=generator)
        return self.task.combine(x, torch.sigmoid(self.logits(x, z, context)))
