"""How the CLL estimates depend on the number of samples S: the negative ELBO, Monte Carlo with the prior and
importance sampling with the recognition net, on the same test images for S = 1, 10, 100, ...

All three are upper bounds on -log p(y|x) in expectation; the last two tighten as S grows, importance
sampling fastest, while the negative ELBO only loses variance (its expectation does not depend on S).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from cvae.estimators import cll_importance, cll_monte_carlo, negative_elbo
from cvae.settings import check_seed

from .evaluation import mean_and_sem
from .models import CVAE

ESTIMATORS = {"cvae_elbo": negative_elbo, "cvae_mc": cll_monte_carlo, "cvae_is": cll_importance}


def estimates_versus_samples(model: CVAE, x: torch.Tensor, y: torch.Tensor, sample_counts: list[int],
                             seed: int = 0, progress: bool = True,
                             desc: str = "") -> dict[str, dict[str, dict[str, float]]]:
    """{str(S): {estimator: {"mean", "sem"}}} in nats per image, over the images x, y (N, 784). A progress bar
    (on a terminal) advances by the samples drawn, S per estimator and image."""
    check_seed(seed)
    model.eval()
    table = {}
    with tqdm(total=len(ESTIMATORS) * sum(sample_counts), disable=None if progress else True, leave=False,
              desc=f"{desc} samples per image", unit="S") as bar:
        for samples in sample_counts:
            row = {}
            for name, estimator in ESTIMATORS.items():
                generator = torch.Generator(x.device).manual_seed(seed)
                row[name] = mean_and_sem(estimator(model, x, y, samples, generator, progress=False).double().cpu())
                bar.update(samples)
            table[str(samples)] = row
    return table


def markdown_table(table: dict[str, dict[str, dict[str, float]]], caption: str) -> str:
    names = {"cvae_elbo": "negative ELBO", "cvae_mc": "Monte Carlo (prior)",
             "cvae_is": "importance sampling (recognition net)"}
    lines = ["| S | " + " | ".join(names.values()) + " |", "|---" * (len(names) + 1) + "|"]
    for samples, row in table.items():
        lines.append(f"| {samples} | " + " | ".join(
            f"{row[key]['mean']:.2f} ± {row[key]['sem']:.2f}" for key in names) + " |")
    return "\n".join(lines) + f"\n\n{caption}\n"
