"""Evaluation on the test set: per-image CLL of the baseline (exact) and of the CVAE (three estimators),
and their summary as mean and standard error over test images."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .estimators import cll_importance, cll_monte_carlo, negative_elbo
from .models import CVAE, BaselineNet

BLOCK = 500  # test images per progress-bar step

ROW_NAMES = {
    "nn": "NN baseline (exact CLL)",
    "cvae_elbo": "CVAE negative ELBO (bound)",
    "cvae_mc": "CVAE Monte Carlo",
    "cvae_is": "CVAE importance sampling",
    "gap": "Performance gap (NN - CVAE IS)",
}


def per_image_cll(
    baseline: BaselineNet, cvae: CVAE, x: torch.Tensor, y: torch.Tensor, num_samples: int,
    seed: int = 0, progress: bool = True, desc: str = "",
) -> dict[str, torch.Tensor]:
    """Negative CLL in nats for every test image: keys nn, cvae_elbo, cvae_mc, cvae_is, each (N,).

    nn is the baseline's exact -log p(y|x); the others use S = num_samples samples of z.
    """
    baseline.eval()
    cvae.eval()
    generator = torch.Generator(x.device).manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in ("nn", "cvae_elbo", "cvae_mc",
                                                                "cvae_is")}
    for start in tqdm(range(0, x.shape[0], BLOCK), disable=not progress, leave=False,
                      desc=f"{desc} evaluating S={num_samples}"):
        xb, yb = x[start:start + BLOCK], y[start:start + BLOCK]
        with torch.inference_mode():
            parts["nn"].append(-baseline.log_likelihood(xb, yb))
        parts["cvae_elbo"].append(negative_elbo(cvae, xb, yb, num_samples, generator))
        parts["cvae_mc"].append(cll_monte_carlo(cvae, xb, yb, num_samples, generator))
        parts["cvae_is"].append(cll_importance(cvae, xb, yb, num_samples, generator))
    values = {key: torch.cat(chunks).double().cpu() for key, chunks in parts.items()}
    values["gap"] = values["nn"] - values["cvae_is"]
    return values


def mean_and_sem(values: torch.Tensor) -> dict[str, float]:
    """Mean and standard error of the mean, std / sqrt(N) with the unbiased std."""
    n = values.numel()
    sem = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": values.mean().item(), "sem": sem}


def summarize(values: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    return {key: mean_and_sem(v) for key, v in values.items()}
