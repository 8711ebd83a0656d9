"""The default networks: MLPs with ReLU, the Gaussian head of the prior and recognition nets, and the generation
net with its first layer split so that the part that sees the condition is computed once per example.

A user-supplied generation net (a plain module on the concatenation [z, c]) is wrapped by ``ConcatGeneration``
so that both kinds answer the same two calls: ``prepare(c)`` once per example, then ``forward(z, prepared)``
for any number of samples of z.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .distributions import DiagonalGaussian

MIN_SCALE = 1e-4  # keeps every Gaussian scale strictly positive


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def gaussian_head(params: torch.Tensor) -> DiagonalGaussian:
    """Split a network's output (..., 2D) into loc and scale = softplus(raw) + MIN_SCALE."""
    loc, raw_scale = params.chunk(2, dim=-1)
    return DiagonalGaussian(loc, F.softplus(raw_scale) + MIN_SCALE)


class GenerationNet(nn.Module):
    """An MLP on the concatenation [z, c] with its first layer split in two:

        W [z; c] + b = W_z z + (W_c c + b),

    so the c part is computed once per example (``prepare``) and reused for every sample of z: the same
    function as one layer on the concatenation, at a fraction of the cost for many samples.
    """

    def __init__(self, z_dim: int, condition_dim: int, hidden: Sequence[int], num_outputs: int):
        super().__init__()
        self.from_z = nn.Linear(z_dim, hidden[0], bias=False)
        self.from_x = nn.Linear(condition_dim, hidden[0])
        self.rest = nn.Sequential(nn.ReLU(), mlp([*hidden, num_outputs]))

    def prepare(self, condition: torch.Tensor) -> torch.Tensor:
        """c: (N, condition_dim) -> W_c c + b: (N, hidden[0])."""
        return self.from_x(condition)

    def forward(self, z: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        """z: (..., N, z_dim), prepared: (N, hidden[0]) -> the likelihood's parameters (..., N, num_outputs)."""
        return self.rest(self.from_z(z) + prepared)


class ConcatGeneration(nn.Module):
    """A user's generation module, which maps rows [z, c] of shape (M, z_dim + condition_dim) to
    (M, num_outputs), called on every sample of z for every example (M = samples x examples)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def prepare(self, condition: torch.Tensor) -> torch.Tensor:
        return condition

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        rows = torch.cat([z, condition.expand(*z.shape[:-1], condition.shape[-1])], dim=-1)
        rows = rows.reshape(-1, rows.shape[-1])
        out = self.net(rows)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != rows.shape[0]:
            got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else \
                f"a {type(out).__name__}"
            raise ValueError(f"the generation network (generation=) returned {got} for rows [z, c] of shape "
                             f"{tuple(rows.shape)}, expected ({rows.shape[0]}, num_params * y_dim): one row of the "
                             "likelihood's parameters for each row [z, c]. Make the generation module return that.")
        return out.reshape(*z.shape[:-1], -1)


class Concatenate(nn.Module):
    """The default way x and y (or the baseline's prediction y_hat) enter the networks that see both:
    [x, y] of shape (N, x_dim + y_dim). Given the likelihood, y enters as ``likelihood.features(y)`` in x's
    dtype: y itself for real-valued y, one-hot (N, y_dim K) for a Categorical's class indices (and its
    probabilities y_hat (N, y_dim, K) flattened to the same width), so out_dim = x_dim + feature_dim(y_dim)."""

    def __init__(self, x_dim: int, y_dim: int, likelihood=None):
        super().__init__()
        self.likelihood = likelihood
        self.out_dim = x_dim + (likelihood.feature_dim(y_dim) if likelihood is not None else y_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.likelihood is not None and self.likelihood.discrete:
            y = self.likelihood.features(y).to(x.dtype)
            if y.shape[-1] != self.out_dim - x.shape[-1]:
                raise ValueError(f"under {self.likelihood!r} y enters the networks one-hot and a baseline's prediction "
                                 f"as class probabilities (N, y_dim, {self.likelihood.num_classes}), which give "
                                 f"{self.out_dim - x.shape[-1]} features; got {y.shape[-1]}")
        return torch.cat([x, y], dim=-1)


def check_autoregression(likelihood, autoregression: nn.Module | None) -> None:
    """An autoregressive term needs real-valued y: fill_in_order writes each dimension's draw or mean into a y of
    the params' dtype, and a Categorical's mean is a vector of class probabilities, not a value of y."""
    if autoregression is not None and likelihood.discrete:
        raise ValueError(f"autoregression= works with the likelihoods of real-valued y only, not {likelihood!r} "
                         "(its class indices cannot be filled in one dimension at a time with their means); "
                         "drop autoregression= or choose another likelihood")


def fill_in_order(params: torch.Tensor, term: nn.Module, x: torch.Tensor, likelihood, num_dims: int,
                  mean: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """y drawn one dimension at a time under an autoregressive term: y_i from p(y_i | params + term(x, y_<i)),
    or set to that factor's mean when ``mean``. The term of dimension i must depend on y_<i only. Real-valued
    likelihoods only (check_autoregression).

    params: the generation net's output (..., N, P) -> y (..., N, num_dims).
    """
    check_autoregression(likelihood, term)
    y = params.new_zeros(*params.shape[:-1], num_dims)
    for i in range(num_dims):
        full = params + term(x, y)
        y[..., i] = (likelihood.mean(full) if mean else likelihood.sample(full, generator))[..., i]
    return y
