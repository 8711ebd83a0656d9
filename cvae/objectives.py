"""Training objectives, per example (Sohn et al. 2015, section 4): the CVAE's ELBO, the GSNN objective and
their hybrid, the importance-weighted bound (Burda et al. 2016), and the baseline's exact log-likelihood.

The training losses are the negatives of these, averaged over a batch (``training_loss``).
"""

from __future__ import annotations

import math

import torch

from .conditional_vae import ConditionalVAE, Context
from .distributions import DiagonalGaussian, GaussianMixture, kl_divergence, kl_divergence_per_dimension
from .regressor import Regressor
from .settings import OBJECTIVES


def elbo(
    model: ConditionalVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    y_hat: torch.Tensor | None = None,
    kl_weight: float = 1.0,
) -> torch.Tensor:
    """The CVAE's evidence lower bound on log p(y|x), per example (Sohn et al. 2015, eq. 4):

        ELBO(x, y) = -KL(q(z|x,y) || p(z|x)) + (1/L) sum_{l=1}^{L} log p(y|x, z_l),  z_l ~ q(z|x,y),

    with z_l reparameterized, so the gradient flows to all three networks, and the KL in closed form for a
    Gaussian prior, estimated on the same draws for a mixture prior (``latent_kl``). kl_weight (beta) scales the
    KL term: 1 is the ELBO; a KL warm-up (Bowman et al. 2016) trains with beta rising from 0 to 1.
    x, y: (N, x_dim), (N, y_dim) -> (N,); y_hat: the baseline's prediction (N, y_dim), computed when not given.
    """
    context = model.context(x, y_hat, y)
    posterior = model.posterior(x, y)
    z = posterior.rsample((num_samples,), generator=generator)  # (L, N, z_dim)
    reconstruction = model.log_likelihood(x, y, z, context).mean(0)
    return reconstruction - kl_weight * latent_kl(posterior, model.prior(x, context), z).mean(0)


def latent_kl(posterior: DiagonalGaussian, prior: DiagonalGaussian | GaussianMixture,
              z: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x,y) || p(z|x)): in closed form (distributions.kl_divergence) when the prior is one Gaussian,
    -> (1, N); otherwise its Monte Carlo estimate on draws z ~ q, log q(z) - log p(z), -> (L, N)."""
    if isinstance(prior, DiagonalGaussian):
        return kl_divergence(posterior, prior).unsqueeze(0)
    return posterior.log_prob(z) - prior.log_prob(z)


def check_elbo_remedies(objective: str, free_bits: float, aux_weight: float) -> None:
    """ValueError where free_bits or aux_weight (``remedied_elbo_loss``) is set for an objective other than the
    ELBO, which they change and which alone they apply to."""
    if (free_bits or aux_weight) and objective != "elbo":
        raise ValueError(f"free_bits and aux_weight change the ELBO objective, not {objective!r}")


def remedied_elbo_loss(
    model: ConditionalVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator | None = None,
    y_hat: torch.Tensor | None = None,
    kl_weight: float = 1.0,
    free_bits: float = 0.0,
    aux_weight: float = 0.0,
) -> torch.Tensor:
    """The batch-mean negative ELBO (one z ~ q(z|x,y) per example) with two remedies against posterior collapse
    under a strong decoder, each off at 0:

        loss = -mean_n log p(y_n|x_n,z_n) + kl_weight * KL_fb - aux_weight * mean_n log p_g(y_n|x_n,z_n),

        KL_fb = sum_j max(free_bits, mean_n KL_nj)       (free bits, Kingma et al. 2016, section 4 / appendix C,
                                                           one group per latent dimension j),

    where KL_nj = KL(q(z_j|x_n,y_n) || p(z_j|x_n)) is the closed-form KL of coordinate j (it needs a Gaussian
    prior): a dimension whose batch-mean KL is below free_bits nats costs free_bits and gets no gradient pulling
    it to the prior, so the model has that much information in z for free. p_g(y|x,z) is the likelihood with the
    generation net's output g(z, x) alone as its parameters, without the autoregressive term (for the quadrant
    task Bernoulli(sigmoid(g(z, x)))): the auxiliary loss (after Zhao et
    al. 2017, who predict y from z alone; here from z and the condition, which the decoder sees anyway) makes
    z and g explain y without the earlier pixels, so the digit's shape must go through z. With free_bits = 0
    and aux_weight = 0 the loss is -mean ELBO. Returns a scalar.
    """
    context = model.context(x, y_hat, y)
    posterior, prior = model.posterior(x, y), model.prior(x, context)
    if free_bits > 0 and not isinstance(prior, DiagonalGaussian):
        raise ValueError("free bits need a Gaussian prior p(z|x) (the KL per latent dimension in closed form)")
    z = posterior.rsample((1,), generator=generator)
    loss = -model.log_likelihood(x, y, z, context).mean()
    if free_bits > 0:
        loss = loss + kl_weight * kl_divergence_per_dimension(posterior, prior).mean(0).clamp(min=free_bits).sum()
    else:
        loss = loss + kl_weight * latent_kl(posterior, prior, z).mean()
    if aux_weight > 0:
        loss = loss - aux_weight * model.likelihood.log_prob(model.params(x, z, context), y).mean()
    return loss


def gsnn_objective(
    model: ConditionalVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    y_hat: torch.Tensor | None = None,
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
    context = model.context(x, y_hat, y)
    prior = model.prior(x, context)
    if isinstance(prior, GaussianMixture):
        return mixture_expected_log_likelihood(model, x, y, prior, context, num_samples, generator)
    z = prior.rsample((num_samples,), generator=generator)
    return model.log_likelihood(x, y, z, context).mean(0)


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
) -> torch.Tensor:
    """alpha * ELBO + (1 - alpha) * L_GSNN, per example, one sample of z each (Sohn et al. 2015, eq. 10)."""
    return (alpha * elbo(model, x, y, 1, generator, y_hat, kl_weight)
            + (1 - alpha) * gsnn_objective(model, x, y, 1, generator, y_hat))


def importance_weighted_bound(
    model: ConditionalVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
    y_hat: torch.Tensor | None = None,
    kl_weight: float = 1.0,
) -> torch.Tensor:
    """The importance-weighted bound on log p(y|x), per example (Burda et al. 2016, eq. 8, made conditional):

        L_K(x, y) = log (1/K) sum_{k=1}^{K} p(y|x, z_k) p(z_k|x) / q(z_k|x,y),   z_k ~ q(z|x,y) (reparameterized).

    The log of the importance-sampled estimate of p(y|x) that the evaluation uses, so training maximizes what is
    reported. ELBO = E[L_1] <= E[L_K] <= E[L_{K+1}] <= log p(y|x). x, y: (N, x_dim), (N, y_dim) -> (N,).
    kl_weight (beta) scales log p(z_k|x) - log q(z_k|x,y) in each weight, for a KL warm-up; 1 is the bound.
    """
    context = model.context(x, y_hat, y)
    posterior = model.posterior(x, y)
    z = posterior.rsample((num_samples,), generator=generator)  # (K, N, z_dim)
    log_weights = (model.log_likelihood(x, y, z, context) + kl_weight * model.prior(x, context).log_prob(z)
                   - kl_weight * posterior.log_prob(z))
    return torch.logsumexp(log_weights, dim=0) - math.log(num_samples)


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
    (exact); for the CVAE the negative of its objective ("elbo", "gsnn", or "hybrid" with
    weight alpha on the ELBO, with one sample of z; "iwae": the importance-weighted bound with
    iw_samples samples of z), the KL terms scaled by kl_weight; free_bits and aux_weight change the ELBO's loss
    (``remedied_elbo_loss``) and no other objective's."""
    if not isinstance(model, ConditionalVAE):
        return -model.log_likelihood(x, y).mean()
    check_elbo_remedies(objective, free_bits, aux_weight)
    if objective == "elbo":
        if free_bits or aux_weight:
            return remedied_elbo_loss(model, x, y, generator, y_hat, kl_weight, free_bits, aux_weight)
        return -elbo(model, x, y, 1, generator, y_hat, kl_weight).mean()
    if objective == "gsnn":
        return -gsnn_objective(model, x, y, 1, generator, y_hat).mean()
    if objective == "hybrid":
        return -hybrid_objective(model, x, y, alpha, generator, y_hat, kl_weight).mean()
    if objective == "iwae":
        return -importance_weighted_bound(model, x, y, iw_samples, generator, y_hat, kl_weight).mean()
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
