"""Training objectives, per image: the baseline's log-likelihood and the CVAE's ELBO.

The training losses are the negatives of these, averaged over a batch (``training_loss``).
"""

from __future__ import annotations

import torch

from .distributions import kl_divergence
from .models import CVAE, BaselineNet


def elbo(
    model: CVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    filled: torch.Tensor | None = None,
) -> torch.Tensor:
    """The CVAE's evidence lower bound on log p(y|x), per image (Sohn et al. 2015, eq. 4):

        ELBO(x, y) = -KL(q(z|x,y) || p(z|x)) + (1/L) sum_{l=1}^{L} log p(y|x, z_l),  z_l ~ q(z|x,y),

    with the KL in closed form and z_l reparameterized, so the gradient flows to all three networks.
    x, y: (N, 784) -> (N,); filled: the baseline's x_filled (N, 784), computed when not given.
    """
    context = model.context(x, filled)
    posterior = model.posterior(x, y)
    z = posterior.rsample((num_samples,), generator=generator)  # (L, N, z_dim)
    reconstruction = model.log_likelihood(x, y, z, context).mean(0)
    return reconstruction - kl_divergence(posterior, model.prior(x, context))


def training_loss(
    model: BaselineNet | CVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    filled: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The batch-mean loss each model is trained on, in nats per image:
    the baseline's -log p(y|x) (exact), the CVAE's negative ELBO with one sample of z."""
    if isinstance(model, CVAE):
        return -elbo(model, x, y, 1, generator, filled).mean()
    return -model.log_likelihood(x, y).mean()
