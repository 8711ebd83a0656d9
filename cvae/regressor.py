"""The deterministic baseline of the paper (its "NN"), for any x and y: one network predicts the parameters of
y's likelihood from x, and its conditional log-likelihood is exact,

    log p(y|x) = log p(y | f(x))   (a product over y's dimensions, e.g. Bernoulli, Gaussian),

with an optional autoregressive term added to f(x) (then each factor is conditioned on the earlier dimensions
of y, and the product is still normalized). Its prediction y_hat = E[y|x] feeds the CVAE's prior and generation
nets (the recurrent connection of section 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import likelihoods
from .networks import check_autoregression, fill_in_order, mlp
from .records import Recorded, qualified_name
from .settings import is_integer


def check_sizes(x_dim: object, y_dim: object, hidden: object, **more: object) -> tuple:
    """Positive integer widths (Python's or numpy's integers) and a non-empty sequence of positive hidden widths,
    returned as ints and a tuple of ints."""
    sizes = {"x_dim": x_dim, "y_dim": y_dim, **more}
    for name, value in sizes.items():
        if not is_integer(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if (isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden
            or any(not is_integer(h) or h < 1 for h in hidden)):
        raise ValueError(f"hidden must be a non-empty sequence of positive integers (hidden layer widths), "
                         f"e.g. (64, 64); got {hidden!r}")
    return (*(int(value) for value in sizes.values()), tuple(int(h) for h in hidden))


class Regressor(Recorded):
    """p(y|x) = likelihood(y; f(x)) with f an MLP (or the user's ``net``, (N, x_dim) -> (N, num_params * y_dim)).

    forward(x) is the prediction y_hat = E[y|x] (N, y_dim); log_likelihood(x, y) the exact log p(y|x) (N,).
    """

    LEGACY_KINDS = ("regressor",)  # the checkpoints of earlier versions (cvae.records.legacy_record)

    def __init__(self, x_dim: int, y_dim: int, hidden: Sequence[int] = (128, 128),
                 likelihood: likelihoods.Likelihood | None = None, *, net: nn.Module | None = None,
                 autoregression: nn.Module | None = None):
        super().__init__()
        self.x_dim, self.y_dim, self.hidden = check_sizes(x_dim, y_dim, hidden)
        self.likelihood = likelihoods.check_likelihood(likelihood)
        check_autoregression(self.likelihood, autoregression)
        self.custom = sorted(name for name, module in (("net", net), ("autoregression", autoregression))
                             if module is not None)
        self.net = net if net is not None else mlp([self.x_dim, *self.hidden, self.likelihood.num_params * self.y_dim])
        self.autoregression = autoregression

    def params(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The likelihood's parameters: f(x), plus the autoregressive term of y when there is one (in x's dtype also
        under bf16 autocast, cvae.precision)."""
        params = self.net(x).to(x.dtype)
        if self.autoregression is not None:
            params = params + self.autoregression(x, y).to(x.dtype)
        return params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction y_hat = E[y|x]: (N, x_dim) -> (N, y_dim) (with an autoregressive term, each dimension's
        mean given the means of the earlier ones); under a Categorical likelihood the class probabilities
        (N, y_dim, K), E[one_hot(y)|x]."""
        if self.autoregression is None:
            return self.likelihood.mean(self.params(x))
        return fill_in_order(self.net(x).to(x.dtype), self.autoregression, x, self.likelihood, self.y_dim, mean=True)

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Exact log p(y|x) summed over y's dimensions: x (N, x_dim), y (N, y_dim) -> (N,)."""
        return self.likelihood.log_prob(self.params(x, y), y)

    def arguments(self) -> dict:
        """The constructor's arguments that rebuild this model (``save`` / ``load``, cvae.records)."""
        return {"x_dim": self.x_dim, "y_dim": self.y_dim, "hidden": list(self.hidden), "likelihood": self.likelihood}

    def user_modules(self) -> list[str]:
        return list(self.custom)

    @classmethod
    def legacy_record(cls, config: dict) -> dict:
        """The record of a checkpoint of an earlier version, {"kind": "regressor", "config": config}."""
        arguments = {name: config[name] for name in ("x_dim", "y_dim", "hidden")}
        return {"class": qualified_name(cls), "args": arguments | {
            "likelihood": {"likelihood": config["likelihood"]}}, "modules": list(config.get("custom", []))}
