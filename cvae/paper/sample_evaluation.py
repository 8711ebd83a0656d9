"""A run's evaluation beside its CLL: the true likelihood of binarized outputs, and the samples judged as samples.

Per test image, with the gray levels t of the targets and K predictions y_1..y_K of the output pixels:

    nn_true, cvae_true_mc, cvae_true_is   -E_{b ~ Bernoulli(t)} log p(b|x) over T binarizations b of t
                                          (cvae.paper.true_likelihood): the NN's exact value, the CVAE's Monte Carlo and
                                          importance-sampled estimates with S samples of z. Only where the score
                                          of the targets is not a log-probability (``true_likelihood_applies``).
    nn_best_of_k, cvae_best_of_k          min_k sum_i (y_k,i - y_i)^2 (cvae.paper.sample_metrics.best_of_k_error)
    cvae_sample_error                     (1/K) sum_k sum_i (y_k,i - y_i)^2, the error of one sample on average
    {nn,cvae}_plausibility, _diversity,   a classifier's view of the K completed images
    {nn,cvae}_distinct                    (cvae.paper.sample_metrics.classifier_scores)
    cvae_kl                               KL(q(z|x,y) || p(z|x)) (cvae.paper.sample_metrics.latent_kl)

The NN's K predictions are its one prediction K times (its best-of-K error is its squared error, its diversity 0,
its distinct labels 1); the CVAE's are the means E[y|x,z_k] of p(y|x,z_k) with z_k ~ p(z|x). Over the test set,
the CVAE's active units (after Burda et al. 2016) come from the posterior means' offsets from the prior's,
(E_q[z|x,y] - E_p[z|x]) / sd_p[z|x] (cvae.paper.sample_metrics, ``summarize``).

Seeds: block b of BLOCK images (cvae.paper.evaluation) draws its binarizations and their z as cvae.paper.true_likelihood
says, and its K samples of z (then the z of a mixture prior's KL) from a generator seeded with
seed + SAMPLES_SEED_OFFSET + b * BLOCK_SEED_STRIDE: the values do not depend on which process evaluates which
block (``sharded_sample_values``).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from cvae import distributed, precision
from cvae.inputs import naming
from cvae.settings import check_seed, is_integer

from .classifier import class_probabilities, completed_images
from .evaluation import BLOCK, BLOCK_SEED_STRIDE, mean_and_sem, process_share
from .models import CVAE, BaselineNet
from .sample_metrics import active_units, best_of_k_error, classifier_scores, latent_statistics
from .true_likelihood import cvae_expected_nll, nn_expected_nll

SAMPLES_SEED_OFFSET = BLOCK_SEED_STRIDE // 4  # the K samples' generators, apart from the estimators' and draws'
# results.json: the one value per setting that is not a mean over images. Named apart from the "cvae_active_units" of
# runs evaluated before, which counted Var_x E_q[z_u|x,y] without the prior's mean and scale (not shown any more).
ACTIVE_UNITS = "cvae_active_units_vs_prior"

TRUE_ROW_NAMES = {
    "nn_true": "NN, true CLL of binarized outputs (exact)",
    "cvae_true_mc": "CVAE MC, true CLL of binarized outputs",
    "cvae_true_is": "CVAE IS, true CLL of binarized outputs",
}
# (row label, digits shown); {K} is the number of predictions per test image
SAMPLE_ROWS = {
    "nn_best_of_k": ("NN, best-of-{K} squared error (its one prediction)", 2),
    "cvae_best_of_k": ("CVAE, best-of-{K} squared error", 2),
    "cvae_sample_error": ("CVAE, squared error of one sample (mean of the {K})", 2),
    "nn_plausibility": ("NN, plausibility (mean top-class probability)", 3),
    "cvae_plausibility": ("CVAE, plausibility (mean top-class probability)", 3),
    "nn_diversity": ("NN, diversity of the {K} labels (nats)", 3),
    "cvae_diversity": ("CVAE, diversity of the {K} labels (nats)", 3),
    "nn_distinct": ("NN, distinct labels among the {K}", 2),
    "cvae_distinct": ("CVAE, distinct labels among the {K}", 2),
    "cvae_kl": ("CVAE, KL(q(z\\|x,y) ‖ p(z\\|x)) (nats)", 2),
    ACTIVE_UNITS: ("CVAE, active units of z (Var[(E_q z_u - E_p z_u) / sd_p z_u] > 0.01)", 0),
}
TRUE_KEYS = tuple(TRUE_ROW_NAMES)
SAMPLE_KEYS = tuple(key for key in SAMPLE_ROWS if key != ACTIVE_UNITS)  # the per-image values
LATENT_KEYS = ("cvae_kl", ACTIVE_UNITS)  # from the recognition net q(z|x,y), untrained in a GSNN


def true_likelihood_applies(likelihood: str, binarize: bool) -> bool:
    """Whether the score of the targets is no log-probability, so that their binarizations' true likelihood is
    worth computing: the Bernoulli likelihood (a log-probability of binary targets only) with grayscale targets.
    With --binarize the score already is the log-likelihood of binary images, and the continuous Bernoulli is a
    normalized density of the gray levels themselves."""
    return likelihood == "bernoulli" and not binarize


def _check_options(binarizations: object, sample_k: object) -> None:
    if binarizations is not None and (not is_integer(binarizations) or binarizations < 1):
        raise ValueError(f"binarizations must be a positive integer or None (no true likelihood), got "
                         f"{binarizations!r}")
    if not is_integer(sample_k) or sample_k < 0:
        raise ValueError(f"sample_k must be a non-negative integer (0: no sample metrics), got {sample_k!r}")


def _block_values(baseline: BaselineNet, cvae: CVAE, classifier: nn.Module | None, xb: torch.Tensor,
                  yb: torch.Tensor, block: int, num_samples: int, binarizations: int | None, sample_k: int,
                  seed: int, progress: bool) -> dict[str, torch.Tensor]:
    """The per-image values of one block of images (block: its index), and its posterior means' offsets from the
    prior's (``latent_statistics``)."""
    values = {}
    if binarizations:
        with naming(f"--binarizations {binarizations}: {binarizations:,} binary images drawn of each test image, "
                          f"{BLOCK} images at a time; lower --binarizations"):
            values["nn_true"] = nn_expected_nll(baseline, xb, yb, binarizations, seed, block)
            for key, estimator in (("cvae_true_mc", "monte_carlo"), ("cvae_true_is", "importance")):
                values[key] = cvae_expected_nll(cvae, xb, yb, binarizations, num_samples, estimator, seed, progress,
                                                block)
    if sample_k:
        with naming(f"--sample-k {sample_k}: {sample_k:,} completions of each test image, {xb.shape[0]} images "
                          "at a time; lower --sample-k"):
            values |= _sample_values(baseline, cvae, classifier, xb, yb, block, sample_k, seed)
    return values


def _sample_values(baseline: BaselineNet, cvae: CVAE, classifier: nn.Module | None, xb: torch.Tensor, yb: torch.Tensor,
                   block: int, sample_k: int, seed: int) -> dict[str, torch.Tensor]:
    """The sample metrics of one block of images (block: its index), and its posterior means."""
    values = {}
    generator = torch.Generator(xb.device).manual_seed(seed + SAMPLES_SEED_OFFSET + block * BLOCK_SEED_STRIDE)
    with torch.inference_mode():
        prediction = baseline(xb)[None]  # (1, n, D)
        samples = cvae.sample(xb, sample_k, generator=generator, mean=True)  # (K, n, D)
    kl, values["latent_offsets"] = latent_statistics(cvae, xb, yb, generator)
    nn_probs = class_probabilities(classifier, completed_images(xb, prediction, cvae.task))
    scores = {"nn": classifier_scores(nn_probs.expand(sample_k, -1, -1)),
              "cvae": classifier_scores(class_probabilities(classifier, completed_images(xb, samples, cvae.task)))}
    values |= {"nn_best_of_k": best_of_k_error(prediction, yb), "cvae_best_of_k": best_of_k_error(samples, yb),
               "cvae_sample_error": (samples - yb).square().sum(-1).mean(0), "cvae_kl": kl}
    values |= {f"{model}_{name}": value for model, named in scores.items() for name, value in named.items()}
    return values


def per_image_sample_values(
    baseline: BaselineNet, cvae: CVAE, classifier: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
    num_samples: int, binarizations: int | None, sample_k: int, seed: int = 0, progress: bool = True, desc: str = "",
    first_block: int = 0, arithmetic: str = "fp32",
) -> dict[str, torch.Tensor]:
    """Every per-image value of the module's docstring, float64 on the CPU, each (N,), and under "latent_offsets"
    (E_q[z|x,y] - E_p[z|x]) / sd_p[z|x] (N, z_dim), for x, y: the images from block first_block on.

    binarizations: T, the draws b ~ Bernoulli(t) per image of the true likelihood (None: not computed, no
    nn_true / cvae_true_*); num_samples: S, samples of z per estimate; sample_k: K, predictions per image for
    the sample metrics (0: none of them, and no classifier needed). arithmetic: "fp32", or "bf16" for every
    network's matrix products, the classifier's too (``cvae.precision``).
    """
    _check_options(binarizations, sample_k)
    check_seed(seed)
    if sample_k and classifier is None:
        raise ValueError("the sample metrics (sample_k > 0) need a classifier of the completed images")
    baseline.eval()
    cvae.eval()
    keys = (TRUE_KEYS if binarizations else ()) + (SAMPLE_KEYS + ("latent_offsets",) if sample_k else ())
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    if keys:
        what = [f"true likelihood T={binarizations}"] * bool(binarizations) + [f"samples K={sample_k}"] * bool(sample_k)
        blocks = tqdm(range(0, x.shape[0], BLOCK), disable=None if progress else True, leave=False,
                      desc=f"{desc} {', '.join(what)}")
        for block, start in enumerate(blocks, start=first_block):
            with precision.autocast(arithmetic, x.device):
                values = _block_values(baseline, cvae, classifier, x[start:start + BLOCK], y[start:start + BLOCK],
                                       block, num_samples, binarizations, sample_k, seed, progress)
            for key, value in values.items():
                parts[key].append(value.double().cpu())
    empty = {"latent_offsets": torch.zeros(0, cvae.z_dim, dtype=torch.float64)}
    return {key: torch.cat(chunks) if chunks else empty.get(key, torch.zeros(0, dtype=torch.float64))
            for key, chunks in parts.items()}


def sharded_sample_values(
    baseline: BaselineNet, cvae: CVAE, classifier: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
    num_samples: int, binarizations: int | None, sample_k: int, seed: int = 0, progress: bool = True, desc: str = "",
    arithmetic: str = "fp32",
) -> dict[str, torch.Tensor]:
    """``per_image_sample_values`` of all the images, each process of a torchrun job computing its share of the
    blocks (``cvae.paper.evaluation.process_share``), gathered on every process (without torchrun, one process's)."""
    mine, first_block = process_share(x.shape[0])
    values = per_image_sample_values(baseline, cvae, classifier, x[mine], y[mine], num_samples, binarizations,
                                     sample_k, seed, progress, desc, first_block, arithmetic)
    return {key: distributed.gather_tensors(value.reshape(-1)).reshape(-1, *value.shape[1:])
            for key, value in values.items()}


def per_image(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The values of one image each, (N,) (what per_image.pt keeps): all but the latent offsets."""
    return {key: value for key, value in values.items() if key != "latent_offsets"}


def summarize(values: dict[str, torch.Tensor]) -> dict:
    """Mean and standard error over images of each per-image value (``cvae.paper.evaluation.mean_and_sem``) and, with
    the sample metrics, the CVAE's active units (``cvae.paper.sample_metrics.active_units``; None for one image)."""
    summary: dict = {key: mean_and_sem(value) for key, value in per_image(values).items()}
    offsets = values.get("latent_offsets")
    if offsets is not None:
        summary[ACTIVE_UNITS] = active_units(offsets) if offsets.shape[0] > 1 else None
    return summary
