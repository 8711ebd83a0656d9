"""Output likelihoods p(y | params) for a decoder, written by hand: Bernoulli, Gaussian, continuous Bernoulli,
Laplace, Categorical.

A decoder network outputs ``params`` of shape (..., num_params * D) for a target y of shape (..., D); a
likelihood interprets them. Every likelihood has the same interface:

- ``num_params``: parameters per output dimension the network must output;
- ``discrete``: False for real-valued y (a floating-point tensor of the model's dtype), True for y of integer
  class indices (Categorical; an integer tensor, whatever the model's dtype);
- ``log_prob(params, y)``: log p(y | params) summed over y's last dimension -> (...);
- ``mean(params)``: E[y] -> (..., D) (Categorical: the class probabilities, (..., D, num_classes));
- ``sample(params, generator)``: a draw (not reparameterized; all randomness from ``generator``) -> (..., D);
- ``features(y)``: y as the networks that see it take it (y itself; Categorical: one-hot) -> (..., feature_dim(D));
- ``check_support(y, name)``: ValueError naming the argument and the value when y is outside the support;
- ``config()``: a JSON-able dict that ``from_config`` turns back into the likelihood.

The names follow torch.distributions (``loc``, ``scale``, ``log_prob``, ``mean``), which the tests use as
the independent reference; nothing here depends on it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from fractions import Fraction
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .distributions import LOG_2PI, bernoulli_log_likelihood

MIN_SCALE = 1e-4  # keeps every Gaussian scale strictly positive (the constant of the library's Gaussian heads)
LOG_2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------------------
# The continuous Bernoulli's math (Loaiza-Ganem & Cunningham, NeurIPS 2019)
# ----------------------------------------------------------------------------------------------------------


def _even_bernoulli_numbers(count: int) -> list[Fraction]:
    """B_2, B_4, ..., B_{2 count}, exactly, from the recurrence sum_{k=0}^{m} binom(m+1, k) B_k = 0 (B_0 = 1)."""
    numbers = [Fraction(1)]
    for m in range(1, 2 * count + 1):
        numbers.append(-sum(math.comb(m + 1, k) * numbers[k] for k in range(m)) / (m + 1))
    return numbers[2::2]


_BERNOULLI = _even_bernoulli_numbers(12)
# log C(l) = log 2 + sum_{n>=1} (2^{2n} - 2) B_{2n} l^{2n} / (2n (2n)!)   (|l| < pi)
#          = log 2 + l^2/12 - 7 l^4/1440 + 31 l^6/90720 - ...
_LOG_NORMALIZER_SERIES = [float((4**n - 2) * b / (2 * n * math.factorial(2 * n)))
                          for n, b in enumerate(_BERNOULLI[:5], start=1)]
# E[y] = 1/2 + sum_{n>=1} B_{2n} l^{2n-1} / (2n)! = 1/2 + l/12 - l^3/720 + l^5/30240 - ...   (|l| < 2 pi)
_MEAN_SERIES = [float(b / math.factorial(2 * n)) for n, b in enumerate(_BERNOULLI, start=1)]
# Below these |l| the series are used: the log normalizer's closed form is 0/0 at l = 0 only (the series,
# to l^10, is exact to float64 rounding below 0.1); the mean's closed form 1/(1 - e^-l) - 1/l loses about
# eps / |l| to cancellation, so its series (to l^23, exact to float64 rounding below 1) takes over below 1.
_LOG_NORMALIZER_TAYLOR_BELOW = 0.1
_MEAN_TAYLOR_BELOW = 1.0
_SAMPLE_UNIFORM_BELOW = 1e-12  # |l| below which the inverse CDF is u + l u (1 - u) / 2 (error O(l^2))


def _polynomial(t: torch.Tensor, coefficients: list[float]) -> torch.Tensor:
    """sum_k c_k t^k by Horner's rule: c_0 + t (c_1 + t (c_2 + ...))."""
    result = torch.full_like(t, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        result = result * t + c
    return result


def continuous_bernoulli_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli, elementwise, in terms of the logit l = log(lambda / (1 - lambda)).

    C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) for lambda != 1/2 and C(1/2) = 2 (Loaiza-Ganem &
    Cunningham 2019, eq. 7); with 1 - 2 lambda = -tanh(l / 2), C = l / tanh(l / 2), even in l. With a = |l|
    and tanh(a / 2) = (1 - e^-a) / (1 + e^-a):

        log C = log(a / (1 - e^-a)) + log(1 + e^-a) = log(a / -expm1(-a)) + log1p(e^-a),

    which has no cancellation and no overflow for any a > 0; for a < 0.1 the Taylor series
    log C = log 2 + l^2/12 - 7 l^4/1440 + 31 l^6/90720 - ... (to l^10) replaces it, so that l = 0 gives
    log 2 with a finite gradient.
    """
    a = logits.abs()
    small = a < _LOG_NORMALIZER_TAYLOR_BELOW
    a_safe = torch.where(small, torch.ones_like(a), a)  # keeps the unused branch (and its gradient) finite
    closed = torch.log(a_safe / -torch.expm1(-a_safe)) + torch.log1p(torch.exp(-a_safe))
    t = logits.square()
    series = LOG_2 + t * _polynomial(t, _LOG_NORMALIZER_SERIES)
    return torch.where(small, series, closed)


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[y] of the continuous Bernoulli with logit l, elementwise.

    E[y] = lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)) (Loaiza-Ganem & Cunningham 2019, appendix)
    = 1 / (1 - e^-l) - 1 / l, since 2 lambda - 1 = tanh(l / 2) and 2 artanh(1 - 2 lambda) = -l. For |l| < 1
    the Taylor series E[y] = 1/2 + sum_n B_{2n} l^{2n-1} / (2n)! = 1/2 + l/12 - l^3/720 + ... (B the
    Bernoulli numbers, to l^23) replaces the closed form, whose two terms cancel near l = 0.
    """
    small = logits.abs() < _MEAN_TAYLOR_BELOW
    l_safe = torch.where(small, torch.ones_like(logits), logits)
    closed = -1.0 / torch.expm1(-l_safe) - 1.0 / l_safe
    series = 0.5 + logits * _polynomial(logits.square(), _MEAN_SERIES)
    return torch.where(small, series, closed)


def continuous_bernoulli_icdf(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The continuous Bernoulli's inverse CDF y = F^-1(u) at u in [0, 1], elementwise.

    The CDF is F(y) = (e^{l y} - 1) / (e^l - 1), so F^-1(u) = log1p(u (e^l - 1)) / l. Written as
    log1p(u expm1(l)) / l it is accurate to rounding for l < 0 (no overflow, no cancellation, even as
    l -> 0-); for l > 0 the symmetry F_l^-1(u) = 1 - F_{-l}^-1(1 - u) gives 1 - log1p((1 - u) expm1(-l)) / (-l).
    For |l| < 1e-12 it is u + l u (1 - u) / 2 (the first-order Taylor term; y = u at l = 0). The result is
    clamped to [0, 1], which also maps the -inf of log1p(-1) (u = 0 at large l > 0) to F^-1(0) = 0.
    """
    a = logits.abs()
    tiny = a < _SAMPLE_UNIFORM_BELOW
    a_safe = torch.where(tiny, torch.ones_like(a), a)
    positive = logits > 0
    v = torch.where(positive, 1.0 - u, u)
    toward_zero = torch.log1p(v * torch.expm1(-a_safe)) / -a_safe  # F_{-a}^-1(v)
    exact = torch.where(positive, 1.0 - toward_zero, toward_zero)
    near_uniform = u + logits * u * (1.0 - u) / 2
    return torch.where(tiny, near_uniform, exact).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------
# The likelihoods
# ----------------------------------------------------------------------------------------------------------


def _format_value(value: torch.Tensor) -> str:
    """A one-element tensor as its shortest round-tripping decimal in its own precision (float32's 0.1 as 0.1)."""
    if value.is_floating_point() and value.element_size() <= 4:
        return str(np.float32(value.float().item()))
    return repr(value.item())


def _fixed_scale(scale: object) -> float | None:
    """A fixed scale as a float, or None (learned); a ValueError for anything but a positive finite number, and for
    one that float32 rounds to 0 or inf (the scale of a float32 model)."""
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite float or None (learned), not {scale!r}")
    in_float32 = torch.tensor(float(scale), dtype=torch.float32).item()  # rounds to 0 or inf without a warning
    if not 0 < in_float32 < math.inf:
        raise ValueError(f"scale must be a positive finite float or None (learned), not {scale!r}, which is "
                         f"{in_float32} in float32")
    return float(scale)


class Likelihood(ABC):
    """An output likelihood p(y | params): params (..., num_params * D) from a network, y (..., D)."""

    name: str  # the name by_name and config use
    support: str  # in words, for error messages

    num_params: int = 1  # parameters per output dimension that the network must output
    discrete: bool = False  # y of integer class indices (True) or of real numbers in the model's dtype (False)

    @abstractmethod
    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | params) summed over y's last dimension: params (..., num_params * D), y broadcastable
        to (..., D) -> (...)."""

    @abstractmethod
    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[y | params] -> (..., D)."""

    @abstractmethod
    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw y ~ p(y | params) -> (..., D), without gradient; all randomness comes from generator."""

    @abstractmethod
    def _in_support(self, y: torch.Tensor) -> torch.Tensor:
        """A boolean mask of the finite entries of y that lie in the support."""

    def config(self) -> dict[str, Any]:
        """A JSON-able description that from_config turns back into this likelihood."""
        return {"name": self.name}

    def features(self, y: torch.Tensor) -> torch.Tensor:
        """y as the networks that see it take it (the recognition net's [x, y], the prior's [x, y_hat]): y itself
        here -> (..., feature_dim(D))."""
        return y

    def feature_dim(self, y_dim: int) -> int:
        """The width of features(y) for y of width y_dim."""
        return y_dim

    def check_support(self, y: torch.Tensor, name: str = "y") -> None:
        """Raise ValueError naming the argument and the first offending value if y has a NaN, an inf, or a
        value outside the support."""
        finite = torch.isfinite(y)
        if not bool(finite.all()):
            value = _format_value(y[~finite].flatten()[0])
            raise ValueError(f"{name} has a value {value}, which is not finite; the {type(self).__name__} "
                             f"likelihood needs {self.support}")
        inside = self._in_support(y)
        if not bool(inside.all()):
            value = _format_value(y[~inside].flatten()[0])
            raise ValueError(f"{name} has a value {value} outside {self.support}, the support of the "
                             f"{type(self).__name__} likelihood")

    def _event_size(self, params: torch.Tensor) -> int:
        """D, from params (..., num_params * D)."""
        if params.dim() == 0 or params.shape[-1] % self.num_params:
            raise ValueError(f"params {tuple(params.shape)}: the last dimension must be a multiple of "
                             f"{self.num_params}, the {self!r} likelihood's parameters per output dimension")
        return params.shape[-1] // self.num_params

    def _check_shapes(self, params: torch.Tensor, y: torch.Tensor) -> None:
        size = self._event_size(params)
        if y.dim() == 0 or y.shape[-1] != size:
            raise ValueError(f"params {tuple(params.shape)} and y {tuple(y.shape)}: {self!r} needs "
                             f"{self.num_params} parameters per dimension of y, so y's last dimension must be {size}")

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.config().items() if key != "name")
        return f"{type(self).__name__}({options})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.config().items()))))


class Bernoulli(Likelihood):
    """Independent Bernoullis with the logits l as params (num_params 1):

        log p(y | l) = sum_i [ y_i l_i - softplus(l_i) ].

    The support is [0, 1]: grayscale targets are allowed (the tutorial's protocol), for which this is the
    negative binary cross-entropy, a true log-probability only for binary y.
    """

    name = "bernoulli"
    support = "[0, 1]"

    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """sum_i [ y_i l_i - softplus(l_i) ] (distributions.bernoulli_log_likelihood) -> (...)."""
        self._check_shapes(params, y)
        return bernoulli_log_likelihood(params, y)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[y] = sigmoid(l)."""
        self._event_size(params)
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """y_i ~ Bernoulli(sigmoid(l_i)), in {0, 1}."""
        with torch.no_grad():
            return torch.bernoulli(torch.sigmoid(params), generator=generator)

    def _in_support(self, y: torch.Tensor) -> torch.Tensor:
        return (y >= 0) & (y <= 1)


class _LocationScale(Likelihood):
    """A location-scale family of the reals, one distribution per dimension: params are [loc (D), raw (D)] with a
    learned scale softplus(raw) + MIN_SCALE (scale=None), or loc alone with a fixed positive scale (a scale that
    float32 rounds to 0 or inf is refused). E[y] = loc."""

    support = "the finite reals"

    def __init__(self, scale: float | None = None):
        self.scale = _fixed_scale(scale)

    @property
    def num_params(self) -> int:
        return 2 if self.scale is None else 1

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale}

    def loc_scale(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(loc, scale) from params: chunk(2, -1) and softplus(raw) + MIN_SCALE, or (params, the fixed scale)."""
        self._event_size(params)
        if self.scale is not None:
            return params, self.scale
        loc, raw = params.chunk(2, dim=-1)
        return loc, F.softplus(raw) + MIN_SCALE

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[y] = loc."""
        return self.loc_scale(params)[0]

    def _in_support(self, y: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(y, dtype=torch.bool)  # every finite value


class Gaussian(_LocationScale):
    """Independent Normals N(y_i; loc_i, scale_i^2).

    scale=None (the default) learns the scale: num_params 2, params = [loc (D), raw (D)] split with
    chunk(2, -1), scale = softplus(raw) + MIN_SCALE (the convention of the library's Gaussian heads). A positive
    float fixes it: num_params 1, params = loc; a scale that float32 rounds to 0 or inf is refused.
    """

    name = "gaussian"

    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p = -1/2 sum_i [ ((y_i - mu_i) / sigma_i)^2 + 2 log sigma_i + log 2 pi ] -> (...)."""
        self._check_shapes(params, y)
        loc, scale = self.loc_scale(params)
        log_scale = math.log(scale) if isinstance(scale, float) else scale.log()
        return -0.5 * (((y - loc) / scale).square() + 2.0 * log_scale + LOG_2PI).sum(-1)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """y = loc + scale * eps, eps ~ N(0, I)."""
        with torch.no_grad():
            loc, scale = self.loc_scale(params)
            eps = torch.randn(loc.shape, dtype=loc.dtype, device=loc.device, generator=generator)
            return loc + scale * eps


class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli of Loaiza-Ganem & Cunningham (NeurIPS 2019), the normalized density on [0, 1]

        p(y | lambda) = C(lambda) lambda^y (1 - lambda)^(1 - y),   lambda = sigmoid(l),

    log p(y | l) = sum_i [ y_i l_i - softplus(l_i) + log C(l_i) ], log C from continuous_bernoulli_log_normalizer.
    params (num_params 1) are mapped to the logits l = max_logit * tanh(params / max_logit), so |l| < max_logit
    (max_logit=None: l = params). The bound matters for data exactly at 0 or 1, as most pixels of MNIST are:
    there the density grows without bound as |l| grows (p(0 | l) ~ |l| for l -> -inf), and a network trained
    on it pushes its logits out until the arithmetic breaks down. With the default bound of 20 a dimension's
    density is at most 20 (log 3.0 nats); the density stays normalized whatever the bound.
    """

    name = "continuous-bernoulli"
    support = "[0, 1]"

    def __init__(self, max_logit: float | None = 20.0):
        if max_logit is not None:
            if (isinstance(max_logit, bool) or not isinstance(max_logit, Real) or not math.isfinite(max_logit)
                    or max_logit <= 0):
                raise ValueError(f"max_logit must be a positive finite float or None (no bound), not {max_logit!r}")
            max_logit = float(max_logit)
        self.max_logit = max_logit

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "max_logit": self.max_logit}

    def logits(self, params: torch.Tensor) -> torch.Tensor:
        """l = max_logit * tanh(params / max_logit), or params without a bound."""
        return params if self.max_logit is None else self.max_logit * torch.tanh(params / self.max_logit)

    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """sum_i [ y_i l_i - softplus(l_i) + log C(l_i) ] -> (...)."""
        self._check_shapes(params, y)
        logits = self.logits(params)
        return bernoulli_log_likelihood(logits, y) + continuous_bernoulli_log_normalizer(logits).sum(-1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[y] = 1 / (1 - e^-l) - 1 / l (continuous_bernoulli_mean)."""
        self._event_size(params)
        return continuous_bernoulli_mean(self.logits(params))

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """y = F^-1(u), u ~ U[0, 1) (inverse-CDF sampling, continuous_bernoulli_icdf)."""
        with torch.no_grad():
            u = torch.rand(params.shape, dtype=params.dtype, device=params.device, generator=generator)
            return continuous_bernoulli_icdf(self.logits(params), u)

    def _in_support(self, y: torch.Tensor) -> torch.Tensor:
        return (y >= 0) & (y <= 1)


class Laplace(_LocationScale):
    """Independent Laplace distributions with location mu_i and scale b_i:

        p(y_i | mu_i, b_i) = exp(-|y_i - mu_i| / b_i) / (2 b_i),
        log p(y | mu, b) = sum_i [ -log(2 b_i) - |y_i - mu_i| / b_i ].

    scale=None (the default) learns the scale: num_params 2, params = [loc (D), raw (D)] split with
    chunk(2, -1), b = softplus(raw) + MIN_SCALE, as for Gaussian. A positive float fixes it: num_params 1,
    params = loc; a scale that float32 rounds to 0 or inf is refused. E[y] = mu (and the median); the
    variance is 2 b^2. Heavier tails than the Gaussian: a Laplace decoder's loss is the absolute error, which
    outliers pull on less than the squared error.
    """

    name = "laplace"

    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p = sum_i [ -log(2 b_i) - |y_i - mu_i| / b_i ] -> (...)."""
        self._check_shapes(params, y)
        loc, scale = self.loc_scale(params)
        log_two_scale = math.log(2.0 * scale) if isinstance(scale, float) else (2.0 * scale).log()
        return -(log_two_scale + (y - loc).abs() / scale).sum(-1)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """y = F^-1(u) with u ~ U[0, 1) (inverse-CDF sampling): the CDF F(y) = e^{(y - mu)/b} / 2 below mu and
        1 - e^{-(y - mu)/b} / 2 above it, so

            F^-1(u) = mu + b log(2 u)              for u < 1/2,
            F^-1(u) = mu - b log(2 (1 - u))        for u >= 1/2,

        each tail computed on its own side (1 - u is exact for u >= 1/2, so neither tail loses digits). A draw
        u = 0, which torch.rand can give, is raised to eps / 2 (2^-24 in float32, 2^-53 in float64: torch.rand's
        smallest positive value on the CPU, and 1 - u's smallest), so every sample is finite and the two tails
        end at the same distance from mu."""
        with torch.no_grad():
            loc, scale = self.loc_scale(params)
            u = torch.rand(loc.shape, dtype=loc.dtype, device=loc.device, generator=generator)
            u = u.clamp(min=torch.finfo(loc.dtype).eps / 2)
            lower = u < 0.5
            half_tail = torch.where(lower, u, 1.0 - u)  # the mass beyond y on its side of mu, in (0, 1/2]
            sign = torch.where(lower, 1.0, -1.0).to(loc.dtype)
            return loc + scale * sign * torch.log(2.0 * half_tail)


class Categorical(Likelihood):
    """Independent categoricals over num_classes = K classes, one per dimension of y, with the logits as params:

        p(y_i = k | l_i) = softmax(l_i)_k = exp(l_ik) / sum_j exp(l_ij),
        log p(y | l) = sum_i log_softmax(l_i)[y_i] = sum_i [ l_{i, y_i} - logsumexp_j l_ij ].

    y holds integer class indices in {0, ..., K - 1} (an integer tensor, e.g. int64; not floats, whatever the
    model's dtype). num_params is K: params (..., K D) are read as (..., D, K), the K logits of dimension i
    contiguous (params.unflatten(-1, (D, K))). ``mean`` is E[one_hot(y)], the class probabilities softmax(l),
    of shape (..., D, K) (not (..., D): the mean of a class index means nothing); ``sample`` gives int64 indices
    (..., D). The networks that see y (the recognition net's [x, y]) see it one-hot, (..., D K) (``features``);
    a baseline's prediction (the probabilities) is flattened to the same (..., D K).
    """

    name = "categorical"
    discrete = True

    def __init__(self, num_classes: int):
        if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer of at least 2, not {num_classes!r}")
        self.num_classes = int(num_classes)

    @property
    def num_params(self) -> int:
        return self.num_classes

    @property
    def support(self) -> str:
        return f"the class indices {{0, ..., {self.num_classes - 1}}}"

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "num_classes": self.num_classes}

    def logits(self, params: torch.Tensor) -> torch.Tensor:
        """params (..., K D) -> the logits (..., D, K)."""
        size = self._event_size(params)
        return params.unflatten(-1, (size, self.num_classes))

    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """sum_i log_softmax(l_i)[y_i] -> (...): y (integer, broadcastable against (..., D)) picks each dimension's
        log-probability."""
        self._check_shapes(params, y)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"y must be an integer tensor of class indices for {self!r}, got dtype {y.dtype}")
        log_probs = torch.log_softmax(self.logits(params), dim=-1)
        shape = torch.broadcast_shapes(log_probs.shape[:-1], y.shape)
        index = y.long().expand(shape).unsqueeze(-1)
        return log_probs.expand(*shape, self.num_classes).gather(-1, index).squeeze(-1).sum(-1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[one_hot(y)] = softmax(l): the class probabilities (..., D, K)."""
        return torch.softmax(self.logits(params), dim=-1)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """y_i = argmax_k (l_ik + g_ik) with g_ik = -log(-log u_ik), u_ik ~ U[0, 1) independent Gumbel noise (the
        Gumbel-max trick: P(y_i = k) = softmax(l_i)_k) -> int64 (..., D). A class of logit -inf is never drawn.
        The noise is drawn in params' dtype: in float32 (u a multiple of 2^-24) g stays below 16.6, so a class
        whose logit trails the leading one by more than about 19 (probability below about 1e-8) is never drawn."""
        with torch.no_grad():
            logits = self.logits(params)
            u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
            return (logits - torch.log(-torch.log(u))).argmax(-1)

    def features(self, y: torch.Tensor) -> torch.Tensor:
        """One-hot: integer y (..., D) -> (..., D K), 1 at k = y_i in dimension i's block of K. Floating values of
        (..., D, K) (the class probabilities, as a baseline's prediction mean(params) is) are flattened to the
        same (..., D K): E[one_hot(y)]."""
        if y.is_floating_point():
            if y.dim() < 2 or y.shape[-1] != self.num_classes:
                raise ValueError(f"{self!r} reads floating values as class probabilities of shape (..., D, "
                                 f"{self.num_classes}), got {tuple(y.shape)}; class indices must be an integer tensor")
            return y.flatten(-2)
        return F.one_hot(y.long(), self.num_classes).flatten(-2)

    def feature_dim(self, y_dim: int) -> int:
        return y_dim * self.num_classes

    def check_support(self, y: torch.Tensor, name: str = "y") -> None:
        """Raise ValueError naming the argument unless y is an integer tensor whose values are all class indices in
        {0, ..., K - 1}; the message gives the first offending value and its position."""
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor of class indices in {{0, ..., {self.num_classes - 1}}} "
                             f"for the {self!r} likelihood, got dtype {y.dtype}; convert it with {name}.long() "
                             f"(once it holds whole numbers)")
        inside = self._in_support(y)
        if not bool(inside.all()):
            position = tuple((~inside).nonzero()[0].tolist())
            raise ValueError(f"{name} has a value {y[position].item()} at position {position} outside {self.support}, "
                             f"the support of the {self!r} likelihood")

    def _in_support(self, y: torch.Tensor) -> torch.Tensor:
        return (y >= 0) & (y < self.num_classes)


LIKELIHOODS: dict[str, type[Likelihood]] = {cls.name: cls for cls in (Bernoulli, Gaussian, ContinuousBernoulli,
                                                                        Laplace, Categorical)}


def by_name(name: str, **options: Any) -> Likelihood:
    """The likelihood called name ("bernoulli", "gaussian", "continuous-bernoulli", "laplace", "categorical"),
    built with options (Categorical needs num_classes)."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; the choices are {', '.join(map(repr, LIKELIHOODS))}")
    try:
        return LIKELIHOODS[name](**options)
    except TypeError as error:
        raise ValueError(f"bad options {options!r} for the {name!r} likelihood: {error}") from None


def from_config(config: dict[str, Any]) -> Likelihood:
    """The likelihood that config() described: {"name": ..., **options}."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"a likelihood config is a dict with a 'name', not {config!r}")
    options = {key: value for key, value in config.items() if key != "name"}
    return by_name(config["name"], **options)


def check_likelihood(likelihood: object) -> Likelihood:
    """likelihood itself when it is a Likelihood, Gaussian() (learned scale) for None; else a ValueError."""
    if likelihood is None:
        return Gaussian()
    if not isinstance(likelihood, Likelihood):
        names = ", ".join(cls.__name__ for cls in LIKELIHOODS.values())
        raise ValueError(f"likelihood must be one of cvae.likelihoods' classes ({names}), e.g. "
                         f"likelihoods.Gaussian(); got {likelihood!r}")
    return likelihood
