"""The probability math, written by hand: a diagonal Gaussian, its KL divergence, a Bernoulli likelihood.

The names follow torch.distributions (``loc``, ``scale``, ``rsample``, ``log_prob``), which the tests
use as the independent reference; nothing here depends on it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


class DiagonalGaussian:
    """N(loc, diag(scale^2)) over the last dimension (the event); leading dimensions are the batch.

    loc, scale: (..., D) with scale > 0.
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        if loc.shape != scale.shape:
            raise ValueError(f"loc {tuple(loc.shape)} and scale {tuple(scale.shape)} differ in shape")
        self.loc = loc
        self.scale = scale

    @property
    def event_dim(self) -> int:
        return self.loc.shape[-1]

    @property
    def mean(self) -> torch.Tensor:
        """E[z] = loc: (..., D)."""
        return self.loc

    @property
    def stddev(self) -> torch.Tensor:
        """The standard deviation of each coordinate, scale: (..., D)."""
        return self.scale

    def rsample(
        self, sample_shape: torch.Size | tuple[int, ...] = (), generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Reparameterized draw z = loc + scale * eps, eps ~ N(0, I) (Kingma & Welling 2014, eq. 10).

        Returns (*sample_shape, ..., D); gradients flow to loc and scale.
        """
        shape = torch.Size(sample_shape) + self.loc.shape
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device, generator=generator)
        return self.loc + self.scale * eps

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N(value; loc, diag(scale^2)) summed over the event dimension.

        log p = -1/2 sum_d [ ((v_d - mu_d) / sigma_d)^2 + 2 log sigma_d + log 2 pi ].
        value: (..., D) broadcastable against loc -> (...).
        """
        standardized = (value - self.loc) / self.scale
        return -0.5 * (standardized.square() + 2.0 * self.scale.log() + LOG_2PI).sum(-1)


def kl_divergence(q: DiagonalGaussian, p: DiagonalGaussian) -> torch.Tensor:
    """KL(q || p) between diagonal Gaussians, in closed form, summed over the event dimension.

    KL = sum_d [ log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2 ]
    (the Gaussian case of Kingma & Welling 2014, appendix B, with a non-standard prior). -> (...)
    """
    return kl_divergence_per_dimension(q, p).sum(-1)


def kl_divergence_per_dimension(q: DiagonalGaussian, p: DiagonalGaussian) -> torch.Tensor:
    """The terms d of ``kl_divergence``'s sum, one per dimension of the event (the KL of each coordinate's
    Gaussians, which are independent): (..., D)."""
    variance_ratio = (q.scale / p.scale).square()
    mean_term = ((q.loc - p.loc) / p.scale).square()
    return 0.5 * (variance_ratio + mean_term - 1.0 - variance_ratio.log())


def bernoulli_log_likelihood(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets | logits) of independent Bernoullis, summed over the last dimension.

    log p = sum_i [ t_i log sigmoid(l_i) + (1 - t_i) log(1 - sigmoid(l_i)) ] = sum_i [ t_i l_i - softplus(l_i) ].
    With grayscale targets t in [0, 1] this is the negative binary cross-entropy (the tutorial's
    protocol); with binary targets it is a true log-probability.
    logits: (..., P), targets broadcastable to it -> (...).
    """
    return (targets * logits - F.softplus(logits)).sum(-1)


class GaussianMixture:
    """sum_k w_k N(loc_k, diag(scale_k^2)) over the last dimension (the event): a mixture of K diagonal
    Gaussians with weights w = softmax(logits). Leading dimensions are the batch.

    logits: (..., K); loc, scale: (..., K, D) with scale > 0.
    """

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor):
        if loc.shape != scale.shape or logits.shape != loc.shape[:-1]:
            raise ValueError(f"logits {tuple(logits.shape)}, loc {tuple(loc.shape)} and scale {tuple(scale.shape)} "
                             "must be (..., K), (..., K, D), (..., K, D)")
        self.log_weights = logits.log_softmax(-1)
        self.components = DiagonalGaussian(loc, scale)

    @property
    def event_dim(self) -> int:
        return self.components.event_dim

    @property
    def weights(self) -> torch.Tensor:
        """w = softmax(logits): (..., K)."""
        return self.log_weights.exp()

    @property
    def mean(self) -> torch.Tensor:
        """E[z] = sum_k w_k loc_k: (..., D)."""
        return (self.weights.unsqueeze(-1) * self.components.loc).sum(-2)

    @property
    def stddev(self) -> torch.Tensor:
        """The standard deviation of each coordinate, by the law of total variance:
        Var[z_d] = sum_k w_k (scale_kd^2 + (loc_kd - E[z_d])^2): (..., D)."""
        spread = (self.components.loc - self.mean.unsqueeze(-2)).square()
        return (self.weights.unsqueeze(-1) * (self.components.scale.square() + spread)).sum(-2).sqrt()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log sum_k w_k N(value; loc_k, diag(scale_k^2)), by log-sum-exp over k. value: (..., D) -> (...)."""
        return torch.logsumexp(self.log_weights + self.components.log_prob(value.unsqueeze(-2)), dim=-1)

    def rsample(
        self, sample_shape: torch.Size | tuple[int, ...] = (), generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """k ~ Categorical(w), then z = loc_k + scale_k * eps, eps ~ N(0, I): (*sample_shape, ..., D).

        Reparameterized given k (gradients reach loc_k and scale_k), not through the choice of k (the weights)."""
        shape = torch.Size(sample_shape)
        weights = self.log_weights.exp().reshape(-1, self.log_weights.shape[-1])
        k = torch.multinomial(weights, max(1, shape.numel()), replacement=True, generator=generator)  # (B, S)
        k = k.T.reshape(*shape, *self.log_weights.shape[:-1], 1, 1)  # (*sample_shape, ..., 1, 1)
        loc, scale = (t.expand(*shape, *t.shape).gather(-2, k.expand(*k.shape[:-1], t.shape[-1])).squeeze(-2)
                      for t in (self.components.loc, self.components.scale))
        eps = torch.randn(loc.shape, dtype=loc.dtype, device=loc.device, generator=generator)
        return loc + scale * eps
