"""The true conditional likelihood of grayscale targets: the expected log-likelihood of their binarizations.

With grayscale targets t in [0, 1] the Bernoulli "gray score"

    G(t|x) = sum_i [ t_i l_i - softplus(l_i) ]                    (l the logits, cvae.likelihoods.Bernoulli)

is a log-probability only when t is binary. Its honest counterpart reads each gray level as the probability
that the pixel is on, draws binary images b_i ~ Bernoulli(t_i) independently, and scores the model on them:

    L(t|x) = E_{b ~ Bernoulli(t)} log p(b|x),

a mean of true log-probabilities of binary images, the protocol of the binarized-MNIST literature with the
binarization drawn at random rather than fixed (Salakhutdinov & Murray 2008; Larochelle & Murray 2011). For a
factorized decoder it equals the gray score, by linearity of G in b: E_b[sum_i b_i l_i - softplus(l_i)] = G(t|x).
For a decoder with an autoregressive term, or for a latent-variable model, it does not.

The estimators below average, over ``num_draws`` draws b_1..b_T per image, the NN's exact -log p(b_t|x), or the
CVAE's Monte Carlo or importance-sampled estimate of it (cvae.estimators, S samples of z per draw):

    -L_hat(t|x) = -(1/T) sum_t log p_hat(b_t|x).

They return one value per image, in nats. Each image's draws (of b, and of z) are independent of every other
image's, so these per-image averages are i.i.d. across test images, and ``cvae.paper.evaluation.mean_and_sem`` over
them gives the mean and a standard error that already includes the binarization noise (and the noise of z).

Draws are seeded per block of BLOCK images, as in cvae.paper.evaluation: image n belongs to block n // BLOCK, whose
draws of b come from a generator seeded with seed + block * BLOCK_SEED_STRIDE, and those of z from one seeded with
seed + Z_SEED_OFFSET + block * BLOCK_SEED_STRIDE. The uniforms of b are drawn for a whole block even when it is
the last, partial one, so the draws of image n depend only on n, on y[n] and on the seed: not on how many images
follow it, and not on the model (every model scored with the same y and seed sees the same binary images). A
larger num_draws keeps the first draws and adds new ones.
"""

from __future__ import annotations

import torch

from cvae.conditional_vae import ConditionalVAE
from cvae.estimators import cll_importance, cll_monte_carlo
from cvae.inputs import check_matrix
from cvae.regressor import Regressor
from cvae.settings import check_seed, is_integer

from .evaluation import BLOCK, BLOCK_SEED_STRIDE

Z_SEED_OFFSET = BLOCK_SEED_STRIDE // 2  # z's generators sit between the blocks' binarization generators
CVAE_ESTIMATORS = {"importance": cll_importance, "monte_carlo": cll_monte_carlo}


def check_num_draws(num_draws: object) -> int:
    if not is_integer(num_draws) or num_draws < 1:
        raise ValueError(f"num_draws must be a positive integer (binarizations per image), got {num_draws!r}")
    return int(num_draws)


def _check_targets(y: object) -> torch.Tensor:
    """y: a floating-point (N, D) tensor of finite values in [0, 1] (probabilities of each pixel being on)."""
    if not isinstance(y, torch.Tensor) or y.dim() != 2:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else f"a {type(y).__name__}"
        raise ValueError(f"y must be a torch.Tensor of shape (N, D) (one row of targets per image), got {got}")
    check_matrix(y, "y", y.shape[1], "D")
    if not bool(((y >= 0) & (y <= 1)).all()):
        raise ValueError(f"y must lie in [0, 1] (the probability that each pixel is on); its values span "
                         f"[{y.min().item():g}, {y.max().item():g}]")
    return y


def _check_pair(x: object, y: object, num_draws: object, seed: object) -> None:
    check_num_draws(num_draws)
    check_seed(seed)
    _check_targets(y)
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] != y.shape[0]:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
        raise ValueError(f"x must be a tensor (N, x_dim) with one row per row of y (N = {y.shape[0]}), got {got}")


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def _block_binarizations(y: torch.Tensor, num_draws: int, seed: int, block: int) -> torch.Tensor:
    """b ~ Bernoulli(y) for the images y (n <= BLOCK, D) of block ``block``: (num_draws, n, D), b = [u < y] with
    u ~ U[0, 1) drawn for a full block of BLOCK images (so that the draws of an image do not depend on n)."""
    generator = _generator(y.device, seed + block * BLOCK_SEED_STRIDE)
    u = torch.rand(num_draws, BLOCK, y.shape[1], generator=generator, device=y.device, dtype=y.dtype)
    return (u[:, :y.shape[0]] < y).to(y.dtype)


def binarizations(y: torch.Tensor, num_draws: int, seed: int = 0) -> torch.Tensor:
    """Stochastic binarizations b ~ Bernoulli(y), independent across draws, images and pixels:
    y (N, D) in [0, 1] -> (num_draws, N, D) of 0s and 1s, with P(b = 1) = y exactly (b = [u < y], u ~ U[0, 1)).

    Image n's draws come from the generator of its block of BLOCK images (seed + (n // BLOCK) * BLOCK_SEED_STRIDE)
    and depend only on n, y[n] and seed (see the module's docstring); on a CUDA device the generator is CUDA's,
    whose stream differs from the CPU's.
    """
    _check_targets(y)
    check_num_draws(num_draws)
    check_seed(seed)
    return torch.cat([_block_binarizations(y[start:start + BLOCK], num_draws, seed, block)
                      for block, start in enumerate(range(0, y.shape[0], BLOCK))], dim=1)


@torch.inference_mode()
def nn_expected_nll(model: Regressor, x: torch.Tensor, y: torch.Tensor, num_draws: int,
                    seed: int = 0, first_block: int = 0) -> torch.Tensor:
    """-E_{b ~ Bernoulli(y)} log p(b|x) for the NN (a Regressor, e.g. the quadrant BaselineNet, with or without
    an autoregressive term), per image in nats: x (N, x_dim), y (N, y_dim) -> (N,).

    -L_hat = -(1/T) sum_{t=1}^{T} log p(b_t|x) with T = num_draws binarizations (``binarizations``) and the exact
    log p(b|x) of the Regressor. Unbiased for -L; its noise is the binarization's only. first_block: the block
    of x's first image (x, y: the images from block first_block on, a process's share under torchrun).
    """
    _check_pair(x, y, num_draws, seed)
    model.eval()
    parts = []
    for block, start in enumerate(range(0, x.shape[0], BLOCK), start=first_block):
        xb, yb = x[start:start + BLOCK], y[start:start + BLOCK]
        draws = _block_binarizations(yb, num_draws, seed, block)
        parts.append(torch.stack([-model.log_likelihood(xb, b) for b in draws]).mean(0))
    return torch.cat(parts) if parts else x.new_zeros(0)


def cvae_expected_nll(model: ConditionalVAE, x: torch.Tensor, y: torch.Tensor, num_draws: int, num_samples: int,
                      estimator: str = "importance", seed: int = 0, progress: bool = False,
                      first_block: int = 0) -> torch.Tensor:
    """-E_{b ~ Bernoulli(y)} log p(b|x) for a ConditionalVAE, per image in nats: x (N, x_dim), y (N, y_dim) -> (N,).

    -L_hat = (1/T) sum_{t=1}^{T} CLL_hat(b_t|x), with T = num_draws binarizations (``binarizations``) and CLL_hat
    the CVAE's estimate of -log p(b_t|x) with S = num_samples samples of z (cvae.estimators): estimator
    "importance" (z ~ q(z|x,b_t), ``cll_importance``) or "monte_carlo" (z ~ p(z|x), ``cll_monte_carlo``). Each
    CLL_hat is an upper bound on -log p(b_t|x) in expectation (Jensen), so -L_hat is one on -L, tightening as S
    grows. progress: the estimators' bar over samples of z, for large blocks. first_block: as ``nn_expected_nll``'s.
    """
    if estimator not in CVAE_ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(CVAE_ESTIMATORS)}, got {estimator!r}")
    _check_pair(x, y, num_draws, seed)
    cll = CVAE_ESTIMATORS[estimator]
    model.eval()
    parts = []
    for block, start in enumerate(range(0, x.shape[0], BLOCK), start=first_block):
        xb, yb = x[start:start + BLOCK], y[start:start + BLOCK]
        draws = _block_binarizations(yb, num_draws, seed, block)
        generator = _generator(x.device, seed + Z_SEED_OFFSET + block * BLOCK_SEED_STRIDE)
        parts.append(torch.stack([cll(model, xb, b, num_samples, generator, progress) for b in draws]).mean(0))
    return torch.cat(parts) if parts else x.new_zeros(0)
