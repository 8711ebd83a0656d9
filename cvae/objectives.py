"""Training objectives, per example (Sohn et al. 2015, section 4): the CVAE's ELBO (with the KL weight and two
remedies against an unused latent as its arguments), the GSNN objective and their hybrid, the importance-weighted
bound (Burda et al. 2016), and the baseline's exact log-likelihood.

What every objective needs of a batch, the context (the baseline's prediction, the autoregressive term), the
posterior q(z|x,y) and the prior p(z|x), is computed once per batch (``Batch``) and shared by the objectives that
use it (the hybrid's two parts). The training losses are the negatives of the objectives, averaged over a batch
(``training_loss``).
"""

from __future__ import annotations

import math

import torch

from .conditional_vae import ConditionalVAE, Context
from .distributions import DiagonalGaussian, GaussianMixture, kl_divergence, kl_divergence_per_dimension
from .regressor import Regressor
from .settings import OBJECTIVES


class Batch:
    """A batch (x, y) of a ConditionalVAE and what every objective needs of it, each computed once, when first
    asked for: the context (``ConditionalVAE.context``, with the baseline's prediction y_hat when the caller has
    it), the posterior q(z|x,y) and the prior p(z|x)."""

    def __init__(self, model: ConditionalVAE, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor | None = None):
        self.model, self.x, self.y = model, x, y
        self.context: Context = model.context(x, y_hat, y)
        self._posterior: DiagonalGaussian | None = None
        self._prior: DiagonalGaussian | GaussianMixture | None = None

    @property
    def posterior(self) -> DiagonalGaussian:
        """q(z|x,y): loc, scale (N, z_dim)."""
        if self._posterior is None:
            self._posterior = self.model.posterior(self.x, self.y)
        return self._posterior

    @property
    def prior(self) -> DiagonalGaussian | GaussianMixture:
        """p(z|x): a Gaussian, or a mixture of Gaussians."""
        if self._prior is None:
            self._prior = self.model.prior(self.x, self.context)
        return self._prior

    def log_likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """log p(y|x,z) summed over y's dimensions: z (..., N, z_dim) -> (..., N)."""
        return self.model.log_likelihood(self.x, self.y, z, self.context)


def _batch(model: ConditionalVAE, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor | None,
           batch: Batch | None) -> Batch:
    return batch if batch is not None else Batch(model, x, y, y_hat)


def elbo(
    model: ConditionalVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    y_hat: torch.Tensor | None = None,
    kl_weight: float = 1.0,
    free_bits: float = 0.0,
    aux_weight: float = 0.0,
    *,
    batch_mean: bool = False,
    batch: Batch | None = None,
) -> torch.Tensor:
    """The CVAE's evidence lower bound on log p(y|x), per example (Sohn et al. 2015, eq. 4):

        ELBO(x, y) = -KL(q(z|x,y) || p(z|x)) + (1/L) sum_{l=1}^{L} log p(y|x, z_l),  z_l ~ q(z|x,y),

    with z_l reparameterized, so the gradient flows to all three networks, and the KL in closed form for a
    Gaussian prior, estimated on the same draws for a mixture prior (``latent_kl``). x, y: (N, x_dim), (N, y_dim)
    -> (N,); y_hat: the baseline's prediction (N, y_dim), computed when not given; batch: the batch's shared pieces
    (``Batch``), made here when not given.

    Three arguments change the objective that training maximizes, each off at its default:

    - kl_weight (beta) scales the KL term: 1 is the ELBO; a KL warm-up (Bowman et al. 2016) trains with beta
      rising from 0 to 1;
    - free_bits (Kingma et al. 2016, section 4 / appendix C, one group per latent dimension j) replaces the KL
      term by sum_j max(free_bits, mean_n KL_nj), KL_nj the closed-form KL of coordinate j (it needs a Gaussian
      prior): a dimension whose batch-mean KL is below free_bits nats costs free_bits and gets no gradient pulling
      it to the prior. It is a quantity of the batch, so it needs ``batch_mean``;
    - aux_weight adds aux_weight * log p_g(y|x,z), the likelihood with the generation net's output g(z, x) alone
      as its parameters, without the autoregressive term (after Zhao et al. 2017, who predict y from z alone;
      here from z and the condition, which the decoder sees anyway): z and g must explain y without the earlier
      pixels, so the shape of y goes through z.

    batch_mean: return the batch's mean (a scalar) instead of the values per example. With free_bits or aux_weight
    (one z ~ q per example, num_samples 1) it is

        mean_n log p(y_n|x_n,z_n) - kl_weight * KL + aux_weight * mean_n log p_g(y_n|x_n,z_n),

    KL the free-bits term, or the batch-mean KL without free bits.
    """
    batch = _batch(model, x, y, y_hat, batch)
    remedied = free_bits > 0 or aux_weight > 0
    if not remedied:
        posterior = batch.posterior
        z = posterior.rsample((num_samples,), generator=generator)  # (L, N, z_dim)
        reconstruction = batch.log_likelihood(z).mean(0)
        value = reconstruction - kl_weight * latent_kl(posterior, batch.prior, z).mean(0)
        return value.mean() if batch_mean else value
    if not batch_mean or num_samples != 1:
        raise ValueError("free_bits and aux_weight change the ELBO of a batch with one z per example: give "
                         "batch_mean=True and num_samples=1")
    posterior, prior = batch.posterior, batch.prior
    if free_bits > 0 and not isinstance(prior, DiagonalGaussian):
        raise ValueError("free bits need a Gaussian prior p(z|x) (the KL per latent dimension in closed form)")
    z = posterior.rsample((1,), generator=generator)
    value = batch.log_likelihood(z).mean()
    if free_bits > 0:
        value = value - kl_weight * kl_divergence_per_dimension(posterior, prior).mean(0).clamp(min=free_bits).sum()
    else:
        value = value - kl_weight * latent_kl(posterior, prior, z).mean()
    if aux_weight > 0:
        value = value + aux_weight * model.likelihood.log_prob(model.params(x, z, batch.context), y).mean()
    return value


def latent_kl(posterior: DiagonalGaussian, prior: DiagonalGaussian | GaussianMixture,
              z: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x,y) || p(z|x)): in closed form (distributions.kl_divergence) when the prior is one Gaussian,
    -> (1, N); otherwise its Monte Carlo estimate on draws z ~ q, log q(z) - log p(z), -> (L, N)."""
    if isinstance(prior, DiagonalGaussian):
        return kl_divergence(posterior, prior).unsqueeze(0)
    return posterior.log_prob(z) - prior.log_prob(z)


def gsnn_objective(
    model: ConditionalVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    y_hat: torch.Tensor | None = None,
    *,
    batch: Batch | None = None,
) -> torch.Tensor:
    """The Gaussian stochastic neural network's objective, per example (Sohn et al. 2015, eq. 9):

        L_GSNN(x, y) = (1/L) sum_{l=1}^{L} log p(y|x, z_l),   z_l ~ p(z|x) (reparameterized),

    the ELBO with the prior network as the proposal, so training samples z as testing does and the
    recognition network is not used. x, y: (N, x_dim), (N, y_dim) -> (N,).

    Under a mixture prior p(z|x) = sum_k w_k N(z; loc_k, scale_k^2) the draw of a component is not
    differentiable, so a sampled component would leave the weights w without a gradient. The expectation over
    the component is taken exactly instead (``mixture_expected_log_likelihood``): the same objective, whose
    expectation is E_{p(z|x)} log p(y|x,z) for any L, with a gradient for the weights and no noise from the
    choice of the component, for K passes of the generation net per sample instead of one.
    """
    batch = _batch(model, x, y, y_hat, batch)
    prior = batch.prior
    if isinstance(prior, GaussianMixture):
        return mixture_expected_log_likelihood(model, x, y, prior, batch.context, num_samples, generator)
    z = prior.rsample((num_samples,), generator=generator)
    return batch.log_likelihood(z).mean(0)


def mixture_expected_log_likelihood(
    model: ConditionalVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    prior: GaussianMixture,
    context: Context,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """E_{p(z|x)} log p(y|x,z) under a mixture prior, its component marginalized out (Rao-Blackwellized):

        sum_{k=1}^{K} w_k (1/L) sum_{l=1}^{L} log p(y|x, z_kl),   z_kl = loc_k + scale_k eps_kl,  eps_kl ~ N(0, I),

    unbiased for sum_k w_k E_{N(loc_k, scale_k^2)} log p(y|x,z) = E_{p(z|x)} log p(y|x,z), and differentiable in
    the weights: d/d logit_j = w_j (mean_l log p(y|x,z_jl) - the whole sum), through the softmax; in loc_k and
    scale_k through the reparameterized draws. x, y: (N, x_dim), (N, y_dim) -> (N,)."""
    z = prior.components.rsample((num_samples,), generator=generator)  # (L, N, K, z_dim)
    log_likelihood = model.log_likelihood(x, y, z.transpose(-2, -3), context)  # (L, K, N)
    return (prior.weights.transpose(-1, -2) * log_likelihood.mean(0)).sum(0)


def hybrid_objective(
    model: ConditionalVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    generator: torch.Generator | None = None,
    y_hat: torch.Tensor | None = None,
    kl_weight: float = 1.0,
    *,
    batch: Batch | None = None,
) -> torch.Tensor:
    """alpha * ELBO + (1 - alpha) * L_GSNN, per example, one sample of z each (Sohn et al. 2015, eq. 10); the two
    parts share the batch's context and prior."""
    batch = _batch(model, x, y, y_hat, batch)
    return (alpha * elbo(model, x, y, 1, generator, kl_weight=kl_weight, batch=batch)
            + (1 - alpha) * gsnn_objective(model, x, y, 1, generator, batch=batch))


def importance_weighted_bound(
    model: ConditionalVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
    y_hat: torch.Tensor | None = None,
    kl_weight: float = 1.0,
    *,
    batch: Batch | None = None,
) -> torch.Tensor:
    """The importance-weighted bound on log p(y|x), per example (Burda et al. 2016, eq. 8, made conditional):

        L_K(x, y) = log (1/K) sum_{k=1}^{K} p(y|x, z_k) p(z_k|x) / q(z_k|x,y),   z_k ~ q(z|x,y) (reparameterized).

    The log of the importance-sampled estimate of p(y|x) that the evaluation uses, so training maximizes what is
    reported. ELBO = E[L_1] <= E[L_K] <= E[L_{K+1}] <= log p(y|x). x, y: (N, x_dim), (N, y_dim) -> (N,).
    kl_weight (beta) scales log p(z_k|x) - log q(z_k|x,y) in each weight, for a KL warm-up; 1 is the bound.
    """
    batch = _batch(model, x, y, y_hat, batch)
    posterior = batch.posterior
    z = posterior.rsample((num_samples,), generator=generator)  # (K, N, z_dim)
    log_weights = (batch.log_likelihood(z) + kl_weight * batch.prior.log_prob(z) - kl_weight * posterior.log_prob(z))
    return torch.logsumexp(log_weights, dim=0) - math.log(num_samples)


def check_elbo_remedies(objective: str, free_bits: float, aux_weight: float) -> None:
    """ValueError where free_bits or aux_weight (arguments of ``elbo``) is set for an objective other than the
    ELBO, which they change and which alone they apply to."""
    if (free_bits or aux_weight) and objective != "elbo":
        raise ValueError(f"free_bits and aux_weight change the ELBO objective, not {objective!r}")


def training_loss(
    model: Regressor | ConditionalVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    y_hat: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    objective: str = "elbo",
    alpha: float = 0.5,
    iw_samples: int = 5,
    kl_weight: float = 1.0,
    free_bits: float = 0.0,
    aux_weight: float = 0.0,
) -> torch.Tensor:
    """The batch-mean loss a model is trained on, in nats per example: the baseline's -log p(y|x)
    (exact); for the CVAE the negative of its objective ("elbo", "gsnn", or "hybrid" with weight alpha on the
    ELBO, with one sample of z; "iwae": the importance-weighted bound with iw_samples samples of z), the KL terms
    scaled by kl_weight; free_bits and aux_weight change the ELBO (``elbo``) and no other objective."""
    if not isinstance(model, ConditionalVAE):
        return -model.log_likelihood(x, y).mean()
    check_elbo_remedies(objective, free_bits, aux_weight)
    if objective == "elbo":
        return -elbo(model, x, y, 1, generator, y_hat, kl_weight, free_bits, aux_weight, batch_mean=True)
    if objective == "gsnn":
        return -gsnn_objective(model, x, y, 1, generator, y_hat).mean()
    if objective == "hybrid":
        return -hybrid_objective(model, x, y, alpha, generator, y_hat, kl_weight).mean()
    if objective == "iwae":
        return -importance_weighted_bound(model, x, y, iw_samples, generator, y_hat, kl_weight).mean()
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
