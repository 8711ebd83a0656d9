"""The deterministic baseline of the paper (its "NN"), for any x and y: one network predicts the parameters of
y's likelihood from x, and its conditional log-likelihood is exact,

    log p(y|x) = log p(y | f(x))   (a product over y's dimensions, e.g. Bernoulli, Gaussian),

with an optional autoregressive term added to f(x) (then each factor is conditioned on the earlier dimensions
of y, and the product is still normalized). Its prediction y_hat = E[y|x] feeds the CVAE's prior and generation
nets (the recurrent connection of section 4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from . import likelihoods
from .inputs import shape_of
from .networks import ConvRegression, check_autoregression, check_networks, fill_in_order, mlp
from .records import Recorded, qualified_name
from .settings import is_integer


def _positive_int(value: object) -> bool:
    """A positive integer, Python's or numpy's (not a bool)."""
    return is_integer(value) and value >= 1


def check_sizes(x_dim: object, y_dim: object, hidden: object, **more: object) -> tuple:
    """Positive integer widths and a non-empty sequence of positive hidden widths, returned as ints and a tuple;
    x_dim and y_dim may also be shapes (a non-empty sequence of positive integers), returned as tuples."""
    sizes = {"x_dim": x_dim, "y_dim": y_dim, **more}
    for name, value in sizes.items():
        if name in ("x_dim", "y_dim") and isinstance(value, (list, tuple)) and value \
                and all(_positive_int(v) for v in value):
            sizes[name] = tuple(int(v) for v in value)
        elif not _positive_int(value):
            shape = "; or a shape, a tuple of positive integers such as (1, 28, 28)" if name.endswith("_dim") \
                and name != "z_dim" else ""
            raise ValueError(f"{name} must be a positive integer, got {value!r}{shape}")
    if (isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden
            or any(not is_integer(h) or h < 1 for h in hidden)):
        raise ValueError(f"hidden must be a non-empty sequence of positive integers (hidden layer widths), "
                         f"e.g. (64, 64); got {hidden!r}")
    return (*(value if isinstance(value, tuple) else int(value) for value in sizes.values()),
            tuple(int(h) for h in hidden))


def check_shaped_autoregression(y_shape: tuple[int, ...], autoregression: nn.Module | None) -> None:
    """An autoregressive term fills y in one dimension at a time: flat y (y_dim an int) only."""
    if autoregression is not None and len(y_shape) > 1:
        raise ValueError(f"autoregression= works with flat y only (y_dim an int), not y of shape {y_shape}: give "
                         "y_dim=prod(shape) and y flattened, or drop autoregression=")


def flat_event(y: torch.Tensor, y_shape: tuple[int, ...]) -> torch.Tensor:
    """y (..., *y_shape) as the likelihood reads it, (..., prod(y_shape)): its event dimensions flattened, so that
    ``log_prob`` sums over all of them."""
    return y if len(y_shape) == 1 else y.flatten(-len(y_shape))


def shaped_event(values: torch.Tensor, y_shape: tuple[int, ...], likelihood: likelihoods.Likelihood,
                 mean: bool) -> torch.Tensor:
    """A likelihood's mean or sample of flat y (..., D) (a Categorical's mean (..., D, K)) back in y's shape
    (..., *y_shape) ((..., *y_shape, K))."""
    if len(y_shape) == 1:
        return values
    return values.unflatten(-2 if mean and likelihood.discrete else -1, y_shape)


class Regressor(Recorded):
    """p(y|x) = likelihood(y; f(x)) with f an MLP (or the user's ``net``, (N, x_dim) -> (N, num_params * y_dim)).

    forward(x) is the prediction y_hat = E[y|x] (N, y_dim); log_likelihood(x, y) the exact log p(y|x) (N,).

    x_dim, y_dim: widths, or shapes: x (N, *x_shape) -> y (N, *y_shape). The default MLP flattens x; a ``net`` of the
    user's own takes x in its shape, and its output is flattened to (N, num_params * prod(y_shape)), the
    likelihood's parameters of y.flatten(1) (``cvae.likelihoods``: a Gaussian's locs of every value, then their raw
    scales). networks="conv": a convolutional network (``cvae.networks.ConvRegression``) for y of shape (C, H, W),
    ``hidden`` its channels.
    """

    LEGACY_KINDS = ("regressor",)  # the checkpoints of earlier versions (cvae.records.legacy_record)

    def __init__(self, x_dim: int | Sequence[int], y_dim: int | Sequence[int], hidden: Sequence[int] = (128, 128),
                 likelihood: likelihoods.Likelihood | None = None, *, net: nn.Module | None = None,
                 autoregression: nn.Module | None = None, networks: str = "mlp"):
        super().__init__()
        self.x_dim, self.y_dim, self.hidden = check_sizes(x_dim, y_dim, hidden)
        self.x_shape, self.y_shape = shape_of(self.x_dim), shape_of(self.y_dim)
        self.networks = check_networks(networks, self.y_shape)
        self.likelihood = likelihoods.check_likelihood(likelihood)
        check_autoregression(self.likelihood, autoregression)
        check_shaped_autoregression(self.y_shape, autoregression)
        self.custom = sorted(name for name, module in (("net", net), ("autoregression", autoregression))
                             if module is not None)
        self.shaped = len(self.x_shape) > 1 or len(self.y_shape) > 1
        num_outputs = self.likelihood.num_params * math.prod(self.y_shape)
        if net is not None:
            self.net = net
        elif self.networks == "conv":
            self.net = ConvRegression(self.x_shape, self.hidden, self.y_shape, self.likelihood)
        else:
            self.net = mlp([math.prod(self.x_shape), *self.hidden, num_outputs], flatten=len(self.x_shape) > 1)
        self.autoregression = autoregression

    def params(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The likelihood's parameters: f(x), plus the autoregressive term of y when there is one (in x's dtype also
        under bf16 autocast, cvae.precision); (N, num_params * prod(y_shape))."""
        params = self.net(x).to(x.dtype)
        if self.shaped:
            params = params.flatten(1)
        if self.autoregression is not None:
            params = params + self.autoregression(x, y).to(x.dtype)
        return params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction y_hat = E[y|x]: (N, x_dim) -> (N, y_dim) (with an autoregressive term, each dimension's
        mean given the means of the earlier ones); under a Categorical likelihood the class probabilities
        (N, y_dim, K), E[one_hot(y)|x]. Shaped y: (N, *y_shape) ((N, *y_shape, K))."""
        if self.autoregression is None:
            return shaped_event(self.likelihood.mean(self.params(x)), self.y_shape, self.likelihood, mean=True)
        return fill_in_order(self.net(x).to(x.dtype), self.autoregression, x, self.likelihood, self.y_dim, mean=True)

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Exact log p(y|x) summed over y's dimensions (all of them for shaped y): x (N, x_dim), y (N, y_dim) ->
        (N,)."""
        return self.likelihood.log_prob(self.params(x, y), flat_event(y, self.y_shape))

    def arguments(self) -> dict:
        """The constructor's arguments that rebuild this model (``save`` / ``load``, cvae.records); x_dim and y_dim as
        given (an int, or a shape, recorded as a list)."""
        arguments = {"x_dim": self.x_dim, "y_dim": self.y_dim, "hidden": list(self.hidden),
                     "likelihood": self.likelihood}
        if self.networks != "mlp":
            arguments["networks"] = self.networks
        return arguments

    def user_modules(self) -> list[str]:
        return list(self.custom)

    @classmethod
    def legacy_record(cls, config: dict) -> dict:
        """The record of a checkpoint of an earlier version, {"kind": "regressor", "config": config}."""
        arguments = {name: config[name] for name in ("x_dim", "y_dim", "hidden")}
        return {"class": qualified_name(cls), "args": arguments | {
            "likelihood": {"likelihood": config["likelihood"]}}, "modules": list(config.get("custom", []))}
