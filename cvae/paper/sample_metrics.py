"""Metrics of a model's K predictions per test image, and of its use of the latent variable.

For K samples y_1..y_K of the output pixels of each image:

    best-of-K error   min_k sum_i (y_k,i - y_i)^2                the oracle error of multimodal prediction: the
                                                                 best sample counts (summed over y's pixels)
    plausibility      (1/K) sum_k max_c p(c | image_k)            how digit-like the completed images look
    diversity         H(hat p) = -sum_c hat p_c log hat p_c       entropy (nats) of the K predicted labels'
                      hat p_c = #{k: argmax p(.|image_k) = c} / K empirical distribution
    distinct          #{c: hat p_c > 0}                           distinct predicted labels

with p(c|image) a digit classifier's softmax (cvae.paper.classifier). For the latent variable: the KL term of the
ELBO, KL(q(z|x,y) || p(z|x)), per image, and the active units: unit u is active when

    A_u = Var_{(x,y)} [ delta_u(x, y) ] > 0.01,     delta_u(x, y) = (E_q[z_u|x,y] - E_p[z_u|x]) / sd_p[z_u|x],

the variance over the test images of the posterior mean's offset from the prior's mean, in the prior's standard
deviations. Burda, Grosse, Salakhutdinov (2016, section 5.2) define A_u = Cov_x(E_q[z_u|x]) for a fixed N(0, I)
prior, for which delta_u is the posterior mean and the two agree. Here the prior p(z|x) moves with x, and the
posterior means would vary with x even where q(z|x,y) = p(z|x) exactly (no information about y in z, KL 0):
measured from the prior's mean, such a unit has delta_u = 0 and is inactive. In the prior's standard deviations,
A_u is Burda et al.'s statistic in the coordinates where p(z|x) = N(0, I) (z -> (z - E_p[z|x]) / sd_p[z|x], which
the generation net, seeing x, can undo), so the threshold 0.01 keeps its meaning whatever scale the prior net
learns. For a mixture prior E_p and sd_p are the mixture's (sd_p by the law of total variance). With one y per x
the variance is over (x, y) pairs: an offset that depends on x alone (no y in it) still counts; the variance within
x, E_x Var_{y|x}, would need several y of the same x.

Active units reported before this definition (docs/results.md, docs/strong.md) were A_u = Var_x(E_q[z_u|x,y]),
with the prior's mean and scale left out.
"""

from __future__ import annotations

import torch

from cvae.conditional_vae import ConditionalVAE
from cvae.distributions import DiagonalGaussian, GaussianMixture
from cvae.inputs import check_num_samples
from cvae.objectives import latent_kl as _latent_kl

ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016)'s threshold on A_u, in units of the prior's variance
BLOCK = 2048  # images per pass of the recognition and prior nets


def _check_tensor(value: object, name: str, dims: int, layout: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != dims or 0 in value.shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
        raise ValueError(f"{name} must be a non-empty tensor of shape {layout}, got {got}")
    return value


def best_of_k_error(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """min over k of sum_i (samples[k, n, i] - truth[n, i])^2, per image: samples (K, N, D), truth (N, D) -> (N,).

    The squared error is summed (not averaged) over y's D pixels, so it is in the units of a whole output, as
    the likelihoods are. K = 1 gives the plain squared error of one prediction.
    """
    _check_tensor(samples, "samples", 3, "(K, N, D)")
    _check_tensor(truth, "truth", 2, "(N, D)")
    if samples.shape[1:] != truth.shape:
        raise ValueError(f"samples (K, N, D) = {tuple(samples.shape)} and truth (N, D) = {tuple(truth.shape)} must "
                         "agree in N and D")
    return (samples - truth).square().sum(-1).min(0).values


def classifier_scores(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Plausibility, diversity and distinct labels of K classified samples per image: probs (K, N, C), each row a
    distribution over C classes -> {"plausibility", "diversity", "distinct"}, each (N,).

    plausibility = (1/K) sum_k max_c probs[k, n, c]; with the predicted labels l_k = argmax_c probs[k, n, c] and
    their empirical distribution hat p_c = #{k: l_k = c} / K, diversity = -sum_c hat p_c log hat p_c (nats,
    0 log 0 = 0; from 0 for K equal labels to log min(K, C)), distinct = #{c: hat p_c > 0} (as a float tensor).
    """
    _check_tensor(probs, "probs", 3, "(K, N, C)")
    if not bool(((probs >= 0) & (probs <= 1)).all()) or not torch.allclose(
            probs.sum(-1), torch.ones((), dtype=probs.dtype, device=probs.device), atol=1e-4):
        raise ValueError("probs must hold probabilities whose last dimension sums to 1 (e.g. a softmax), not logits")
    labels = probs.argmax(-1)  # (K, N)
    counts = torch.nn.functional.one_hot(labels, probs.shape[-1]).sum(0).to(probs.dtype)  # (N, C)
    frequencies = counts / probs.shape[0]
    return {"plausibility": probs.max(-1).values.mean(0),
            "diversity": -torch.special.xlogy(frequencies, frequencies).sum(-1),
            "distinct": (counts > 0).sum(-1).to(probs.dtype)}


def latent_kl(posterior: DiagonalGaussian, prior: DiagonalGaussian | GaussianMixture, num_samples: int = 1,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """KL(q(z|x,y) || p(z|x)) per image, (N,) nats (cvae.objectives.latent_kl): in closed form for a Gaussian
    prior; for a mixture prior the mean of log q(z) - log p(z) over num_samples draws z ~ q."""
    num_samples = check_num_samples(num_samples)
    z = None if isinstance(prior, DiagonalGaussian) else posterior.rsample((num_samples,), generator=generator)
    return _latent_kl(posterior, prior, z).mean(0)


def prior_offsets(posterior: DiagonalGaussian, prior: DiagonalGaussian | GaussianMixture) -> torch.Tensor:
    """delta = (E_q[z|x,y] - E_p[z|x]) / sd_p[z|x] per image and unit, (N, z_dim): the posterior mean measured from
    the prior's mean, in the prior's standard deviations (the module's docstring)."""
    return (posterior.mean - prior.mean) / prior.stddev


def active_units(offsets: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """The number of units u with A_u = Var(delta_u) > threshold: offsets (N, z_dim), one row delta(x, y) =
    (E_q[z|x,y] - E_p[z|x]) / sd_p[z|x] per image (``prior_offsets``), N >= 2. A_u is the unbiased sample variance
    over the N images of unit u's offset. Under a fixed N(0, I) prior delta is the posterior mean and A_u that of
    Burda, Grosse, Salakhutdinov (2016, section 5.2)."""
    _check_tensor(offsets, "offsets", 2, "(N, z_dim)")
    if offsets.shape[0] < 2:
        raise ValueError(f"offsets needs at least 2 images (rows) for a variance, got {offsets.shape[0]}")
    return int((offsets.double().var(0, unbiased=True) > threshold).sum())


@torch.inference_mode()
def latent_statistics(model: ConditionalVAE, x: torch.Tensor, y: torch.Tensor,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, KL(q(z|x,y) || p(z|x)) (``latent_kl``, one draw of z for a mixture prior) and the posterior
    mean's offset from the prior's, (E_q[z|x,y] - E_p[z|x]) / sd_p[z|x] (``prior_offsets``, what ``active_units``
    takes): x (N, x_dim), y (N, y_dim) -> (N,), (N, z_dim); in blocks of BLOCK images."""
    model.eval()
    kls, offsets = [], []
    for start in range(0, x.shape[0], BLOCK):
        xb, yb = x[start:start + BLOCK], y[start:start + BLOCK]
        posterior, prior = model.posterior(xb, yb), model.prior(xb)
        kls.append(latent_kl(posterior, prior, generator=generator))
        offsets.append(prior_offsets(posterior, prior))
    return torch.cat(kls), torch.cat(offsets)
