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
    variance_ratio = (q.scale / p.scale).square()
    mean_term = ((q.loc - p.loc) / p.scale).square()
    return 0.5 * (variance_ratio + mean_term - 1.0 - variance_ratio.log()).sum(-1)


def bernoulli_log_likelihood(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets | logits) of independent Bernoullis, summed over the last dimension.

    log p = sum_i [ t_i log sigmoid(l_i) + (1 - t_i) log(1 - sigmoid(l_i)) ] = sum_i [ t_i l_i - softplus(l_i) ].
    With grayscale targets t in [0, 1] this is the negative binary cross-entropy (the tutorial's
    protocol); with binary targets it is a true log-probability.
    logits: (..., P), targets broadcastable to it -> (...).
    """
    return (targets * logits - F.softplus(logits)).sum(-1)
