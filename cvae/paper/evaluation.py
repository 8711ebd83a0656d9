"""Evaluation on the test set: per-image CLL of the baseline (exact) and of the CVAE (three estimators),
and their summary as mean and standard error over test images.

The images are taken in blocks of BLOCK, and block b draws its samples of z from its own generator, seeded
with seed + b * BLOCK_SEED_STRIDE: the values do not depend on which process evaluates which block, so under
torchrun (``sharded_per_image_cll``) they are those of a single process.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from cvae import distributed, precision
from cvae.estimators import cll_importance, cll_monte_carlo, mean_and_sem, negative_elbo
from cvae.settings import check_seed

from .models import CVAE, BaselineNet

BLOCK = 500  # test images per progress-bar step and per noise generator
BLOCK_SEED_STRIDE = 1_000_003  # block b's generator is seeded with seed + b * stride (block 0: the seed)
KEYS = ("nn", "cvae_elbo", "cvae_mc", "cvae_is")

ROW_NAMES = {
    "nn": "NN baseline (exact CLL)",
    "cvae_elbo": "CVAE negative ELBO (bound)",
    "cvae_mc": "CVAE Monte Carlo",
    "cvae_is": "CVAE importance sampling",
    "gap": "Performance gap (NN - CVAE IS)",
}


def per_image_cll(
    baseline: BaselineNet, cvae: CVAE, x: torch.Tensor, y: torch.Tensor, num_samples: int,
    seed: int = 0, progress: bool = True, desc: str = "", first_block: int = 0, arithmetic: str = "fp32",
) -> dict[str, torch.Tensor]:
    """Negative CLL in nats for every test image: keys nn, cvae_elbo, cvae_mc, cvae_is, each (N,).

    nn is the baseline's exact -log p(y|x); the others use S = num_samples samples of z. x, y are the
    images from block first_block on (a process's share of the test set under torchrun). arithmetic: "fp32", or
    "bf16" for the networks' matrix products under autocast (``cvae.precision``; the sums stay float32).
    """
    check_seed(seed)
    baseline.eval()
    cvae.eval()
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in KEYS}
    for block, start in enumerate(tqdm(range(0, x.shape[0], BLOCK), disable=None if progress else True, leave=False,
                                       desc=f"{desc} evaluating S={num_samples}"), start=first_block):
        generator = torch.Generator(x.device).manual_seed(seed + block * BLOCK_SEED_STRIDE)
        xb, yb = x[start:start + BLOCK], y[start:start + BLOCK]
        with precision.autocast(arithmetic, x.device):
            with torch.inference_mode():
                parts["nn"].append(-baseline.log_likelihood(xb, yb))
            # each estimate shows a bar of its own when S is large enough for one block to take long
            parts["cvae_elbo"].append(negative_elbo(cvae, xb, yb, num_samples, generator, progress))
            parts["cvae_mc"].append(cll_monte_carlo(cvae, xb, yb, num_samples, generator, progress))
            parts["cvae_is"].append(cll_importance(cvae, xb, yb, num_samples, generator, progress))
    values = {key: torch.cat(chunks).double().cpu() for key, chunks in parts.items()}
    values["gap"] = values["nn"] - values["cvae_is"]
    return values


def process_share(num_images: int) -> tuple[slice, int]:
    """This process's contiguous share of the blocks of BLOCK images under torchrun (every block without): the slice
    of its images and the index of its first block; an empty slice where there are fewer blocks than processes."""
    blocks = torch.arange(math.ceil(num_images / BLOCK)).tensor_split(distributed.world_size())[distributed.rank()]
    if not blocks.numel():
        return slice(0, 0), 0
    return slice(int(blocks[0]) * BLOCK, (int(blocks[-1]) + 1) * BLOCK), int(blocks[0])


def sharded_per_image_cll(
    baseline: BaselineNet, cvae: CVAE, x: torch.Tensor, y: torch.Tensor, num_samples: int,
    seed: int = 0, progress: bool = True, desc: str = "", arithmetic: str = "fp32",
) -> dict[str, torch.Tensor]:
    """``per_image_cll`` of all the images, each process of a torchrun job evaluating a contiguous share of
    the blocks (``process_share``), gathered on every process: the values of a single process (to floating-point
    tolerance). Without torchrun, ``per_image_cll`` itself."""
    if distributed.world_size() == 1:
        return per_image_cll(baseline, cvae, x, y, num_samples, seed, progress, desc, arithmetic=arithmetic)
    mine, first_block = process_share(x.shape[0])
    if mine.stop > mine.start:
        values = per_image_cll(baseline, cvae, x[mine], y[mine], num_samples, seed, progress, desc,
                               first_block=first_block, arithmetic=arithmetic)
    else:  # fewer blocks than processes
        values = {key: torch.zeros(0, dtype=torch.float64) for key in (*KEYS, "gap")}
    return {key: distributed.gather_tensors(value) for key, value in values.items()}


def summarize(values: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    return {key: mean_and_sem(v) for key, v in values.items()}
