"""The default networks: MLPs with ReLU, the Gaussian head of the prior and recognition nets, and the generation
net with its first layer split so that the part that sees the condition is computed once per example.

A user-supplied generation net (a plain module on the concatenation [z, c]) is wrapped by ``ConcatGeneration``
so that both kinds answer the same two calls: ``prepare(c)`` once per example, then ``forward(z, prepared)``
for any number of samples of z. Where c has a shape of more than one dimension (an image) the user's module is
called as module(z, c) instead (``ShapedGeneration``).

Examples of any shape: x (N, *x_shape), y (N, *y_shape). The default MLPs flatten what they take; the user's
modules get the shaped tensors. ``networks="conv"`` (``ConditionalVAE``, ``Regressor``) builds convolutional
networks for y of shape (C, H, W) instead (``conv_encoder``, ``ConvGeneration``, ``ConvRegression``): stride-2
convolutions of ``hidden`` channels where a network takes an image, their mirror (upsampling and convolutions)
where it gives y, MLPs of ``hidden`` widths where it takes a flat vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .distributions import DiagonalGaussian
from .inputs import shape_of

MIN_SCALE = 1e-4  # keeps every Gaussian scale strictly positive
NETWORKS = ("mlp", "conv")  # the kinds of default networks


def mlp(sizes: Sequence[int], flatten: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last); with ``flatten``, an
    nn.Flatten first (inputs (N, *shape), sizes[0] = prod(shape))."""
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
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

    def __init__(self, z_dim: int, condition_dim: int, hidden: Sequence[int], num_outputs: int,
                 flatten: bool = False):
        super().__init__()
        self.flatten = flatten  # c of a shape (N, *shape), condition_dim = prod(shape)
        self.from_z = nn.Linear(z_dim, hidden[0], bias=False)
        self.from_x = nn.Linear(condition_dim, hidden[0])
        self.rest = nn.Sequential(nn.ReLU(), mlp([*hidden, num_outputs]))

    def prepare(self, condition: torch.Tensor) -> torch.Tensor:
        """c: (N, condition_dim) (or (N, *shape), flattened) -> W_c c + b: (N, hidden[0])."""
        return self.from_x(condition.flatten(1) if self.flatten else condition)

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


class ShapedGeneration(ConcatGeneration):
    """A user's generation module where c has a shape of more than one dimension (e.g. an image (C, H, W)): called
    as net(z, c) with z (M, z_dim) and c (M, *c_shape), c repeated for every sample of z (M = samples x
    examples); its output, (M, ...), is flattened to the likelihood's parameters (M, num_params * prod(y_shape))."""

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        leading = z.shape[:-1]  # (..., N)
        rows = condition.expand(*leading, *condition.shape[1:]).reshape(-1, *condition.shape[1:])
        return self.net(z.reshape(-1, z.shape[-1]), rows).reshape(*leading, -1)


def feature_shape(likelihood, y_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of y as the networks that see it take it (``features``): y's own, or under a Categorical(K)
    one-hot: (D K,) for flat y (D,), (C K, ...) for y of shape (C, ...), the K classes as channels."""
    if likelihood is None or not likelihood.discrete:
        return y_shape
    if len(y_shape) == 1:
        return (likelihood.feature_dim(y_shape[0]),)
    return (y_shape[0] * likelihood.num_classes, *y_shape[1:])


def features(likelihood, y: torch.Tensor, y_shape: tuple[int, ...]) -> torch.Tensor:
    """y (..., *y_shape) as the networks take it, (..., *feature_shape): itself for real-valued y; under a
    Categorical one-hot, and a baseline's class probabilities (..., *y_shape, K) alike, flat y as
    ``likelihood.features`` gives it, shaped y with the K classes of each channel as K channels."""
    if likelihood is None or not likelihood.discrete:
        return y
    if len(y_shape) == 1:
        return likelihood.features(y)
    k, events = likelihood.num_classes, len(y_shape)
    if y.is_floating_point():  # class probabilities (..., *y_shape, K)
        if y.dim() < events + 1 or tuple(y.shape[-events - 1:]) != (*y_shape, k):
            raise ValueError(f"{likelihood!r} reads floating values as class probabilities of shape (..., "
                             f"{', '.join(map(str, (*y_shape, k)))}), got {tuple(y.shape)}; class indices must be an "
                             "integer tensor")
        one_hot = y
    else:
        one_hot = F.one_hot(y.long(), k)  # (..., C, *rest, K)
    return one_hot.movedim(-1, -events).flatten(-events - 1, -events)  # (..., C, K, *rest) -> (..., C K, *rest)


class Concatenate(nn.Module):
    """The default way x and y (or the baseline's prediction y_hat) enter the networks that see both:
    [x, y] of shape (N, x_dim + y_dim). Given the likelihood, y enters as ``likelihood.features(y)`` in x's
    dtype: y itself for real-valued y, one-hot (N, y_dim K) for a Categorical's class indices (and its
    probabilities y_hat (N, y_dim, K) flattened to the same width), so out_dim = x_dim + feature_dim(y_dim).

    Examples of other shapes (x_dim or y_dim a shape, ``features``): x (N, C, H, W) and y of the same H, W are
    stacked as channels, (N, C + C_y, H, W); with ``tile`` (the convolutional networks') a flat x (N, D) and y
    (N, C_y, H, W) give (N, D + C_y, H, W), x's values repeated over y's pixels; anything else is flattened and
    concatenated, (N, prod(x_shape) + prod(y's feature shape)). ``out_shape`` is the result's shape, ``out_dim``
    its number of values.
    """

    def __init__(self, x_dim: int | Sequence[int], y_dim: int | Sequence[int], likelihood=None, *,
                 tile: bool = False):
        super().__init__()
        self.likelihood = likelihood
        x_shape, y_shape = shape_of(x_dim), shape_of(y_dim)
        self.y_shape = y_shape
        if isinstance(x_dim, int) and isinstance(y_dim, int):
            self.mode = "flat"
            self.out_dim = x_dim + (likelihood.feature_dim(y_dim) if likelihood is not None else y_dim)
            self.out_shape = (self.out_dim,)
            return
        y_features = feature_shape(likelihood, y_shape)
        if len(x_shape) > 1 and x_shape[1:] == y_features[1:]:
            self.mode, self.out_shape = "channels", (x_shape[0] + y_features[0], *x_shape[1:])
        elif tile and len(x_shape) == 1 and len(y_features) > 1:
            self.mode, self.out_shape = "tile", (x_shape[0] + y_features[0], *y_features[1:])
        elif len(x_shape) == 1 and len(y_features) == 1:
            self.mode, self.out_shape = "last", (x_shape[0] + y_features[0],)
        else:
            self.mode, self.out_shape = "flatten", (math.prod(x_shape) + math.prod(y_features),)
        self.out_dim = math.prod(self.out_shape)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "flat":
            if self.likelihood is not None and self.likelihood.discrete:
                y = self.likelihood.features(y).to(x.dtype)
                if y.shape[-1] != self.out_dim - x.shape[-1]:
                    raise ValueError(f"under {self.likelihood!r} y enters the networks one-hot and a baseline's "
                                     f"prediction as class probabilities (N, y_dim, {self.likelihood.num_classes}), "
                                     f"which give {self.out_dim - x.shape[-1]} features; got {y.shape[-1]}")
            return torch.cat([x, y], dim=-1)
        y = features(self.likelihood, y, self.y_shape).to(x.dtype)
        if self.mode in ("channels", "last"):
            return torch.cat([x, y], dim=1)
        if self.mode == "tile":
            return torch.cat([x.reshape(*x.shape, *[1] * (y.dim() - 2)).expand(-1, -1, *y.shape[2:]), y], dim=1)
        return torch.cat([x.flatten(1), y.flatten(1)], dim=1)


# ----------------------------------------------------------------------------------------------------------
# Convolutional networks for images (networks="conv")
# ----------------------------------------------------------------------------------------------------------


def check_networks(networks: object, y_shape: tuple[int, ...]) -> str:
    """"mlp", or "conv" for y of shape (C, H, W); a ValueError otherwise."""
    if networks not in NETWORKS:
        raise ValueError(f"networks must be one of {', '.join(map(repr, NETWORKS))}, got {networks!r}")
    if networks == "conv" and len(y_shape) != 3:
        raise ValueError(f"networks='conv' builds convolutional networks for y of shape (C, H, W) (y_dim a shape of "
                         f"3 numbers, e.g. (1, 28, 28)), got y_dim={y_shape if len(y_shape) > 1 else y_shape[0]!r}")
    return networks


def _halved(shape: tuple[int, ...], times: int) -> tuple[int, int]:
    """(H, W) after ``times`` convolutions of kernel 3, stride 2, padding 1: each halves, rounding up."""
    height, width = shape[-2:]
    for _ in range(times):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def conv_encoder(in_shape: tuple[int, ...], hidden: Sequence[int], out_features: int) -> nn.Sequential:
    """A network from (N, *in_shape) to (N, out_features): for an image (C, H, W), convolutions of kernel 3 and
    stride 2 with hidden[i] channels and ReLU, then a linear layer; for a flat input, an MLP of widths hidden."""
    if len(in_shape) == 1:
        return mlp([in_shape[0], *hidden, out_features])
    if len(in_shape) != 3:
        raise ValueError(f"the convolutional networks take images (C, H, W) or flat vectors, got inputs of shape "
                         f"{in_shape}")
    layers: list[nn.Module] = []
    channels = in_shape[0]
    for width in hidden:
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU()]
        channels = width
    height, width = _halved(in_shape, len(hidden))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * height * width, out_features))


class ConvDecoder(nn.Module):
    """From features (M, hidden[-1] h w) (h, w: y's H, W halved len(hidden) times) to the likelihood's parameters of
    y (C, H, W), flattened as the likelihood reads them (M, num_params C H W): the mirror of ``conv_encoder``,
    each level an upsampling to the encoder's size there and a convolution of kernel 3, the last to num_params C
    channels."""

    def __init__(self, hidden: Sequence[int], y_shape: tuple[int, ...], likelihood):
        super().__init__()
        self.y_shape, self.num_params, self.discrete = y_shape, likelihood.num_params, likelihood.discrete
        sizes = [_halved(y_shape, i) for i in range(len(hidden) + 1)]
        self.start = (hidden[-1], *sizes[-1])
        layers: list[nn.Module] = []
        for level in range(len(hidden) - 1, 0, -1):
            layers += [nn.Upsample(size=sizes[level]), nn.Conv2d(hidden[level], hidden[level - 1], 3, padding=1),
                       nn.ReLU()]
        layers += [nn.Upsample(size=sizes[0]), nn.Conv2d(hidden[0], self.num_params * y_shape[0], 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    @property
    def in_features(self) -> int:
        return math.prod(self.start)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.layers(h.reshape(-1, *self.start))  # (M, P C, H, W)
        out = out.unflatten(1, (self.num_params, self.y_shape[0]))  # (M, P, C, H, W): parameter p of every value
        if self.discrete:  # a Categorical's K logits of each value contiguous: (M, C, H, W, K)
            out = out.movedim(1, -1)
        return out.flatten(1)


class ConvGeneration(nn.Module):
    """The generation net for images y (C, H, W): W_z z + (encoder(c) + b), ReLU, then ``ConvDecoder``; the c part
    (a convolutional encoder of an image c, a linear layer of a flat one) computed once per example (``prepare``)."""

    def __init__(self, z_dim: int, condition_shape: tuple[int, ...], hidden: Sequence[int],
                 y_shape: tuple[int, ...], likelihood):
        super().__init__()
        self.decoder = ConvDecoder(hidden, y_shape, likelihood)
        self.from_z = nn.Linear(z_dim, self.decoder.in_features, bias=False)
        self.from_x = (nn.Linear(condition_shape[0], self.decoder.in_features) if len(condition_shape) == 1
                       else conv_encoder(condition_shape, hidden, self.decoder.in_features))

    def prepare(self, condition: torch.Tensor) -> torch.Tensor:
        return self.from_x(condition)

    def forward(self, z: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        """z (..., N, z_dim), prepared (N, F) -> (..., N, num_params C H W)."""
        return self.decoder(F.relu(self.from_z(z) + prepared)).reshape(*z.shape[:-1], -1)


class ConvRegression(nn.Module):
    """A Regressor's network for images y (C, H, W): x (an image: ``conv_encoder``; flat: a linear layer), ReLU, then
    ``ConvDecoder``: (N, *x_shape) -> (N, num_params C H W)."""

    def __init__(self, x_shape: tuple[int, ...], hidden: Sequence[int], y_shape: tuple[int, ...], likelihood):
        super().__init__()
        self.decoder = ConvDecoder(hidden, y_shape, likelihood)
        self.encoder = (nn.Linear(x_shape[0], self.decoder.in_features) if len(x_shape) == 1
                        else conv_encoder(x_shape, hidden, self.decoder.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(F.relu(self.encoder(x)))


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
