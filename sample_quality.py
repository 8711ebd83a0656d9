"""Sample quality of a finished run's models on the test set: the true likelihood of the grayscale targets, the
best of K predictions, a digit classifier's view of the completed digits, and the CVAE's use of its latent.

    python sample_quality.py runs/default --test-subset 500
    python sample_quality.py runs/default --quadrants 1 -k 10 --draws 3 --num-samples 100

For each setting (k input quadrants), per test image, as mean ± standard error over images:

- gray score: the Bernoulli score of the grayscale targets t, -sum_i [t_i l_i - softplus(l_i)] (the NN's exact
  value, the CVAE's importance-sampled one), what evaluate.py reports; a log-probability only for binary t.
- true likelihood: -E_{b ~ Bernoulli(t)} log p(b|x) over --draws stochastic binarizations of t (the NN's exact
  log p(b|x); the CVAE's Monte Carlo and importance-sampled estimates with --num-samples samples of z), see
  cvae/true_likelihood.py. Its standard error includes the binarization noise.
- best-of-K error: the smallest squared error, summed over y's pixels, of K predictions (cvae/sample_metrics.py).
- plausibility, diversity, distinct labels: a digit classifier (cvae/classifier.py) on the K completed images.
  The CVAE's K predictions are means of p(y|x,z) with z ~ p(z|x); the NN's is its one prediction, K times (so
  its diversity is 0 and its distinct labels 1).
- the CVAE's KL(q(z|x,y) || p(z|x)) and its active units (Burda et al. 2016: Cov_x(E_q[z_u]) > 0.01).

Prints one markdown table per setting and writes them all to RUN_DIR/sample_quality.json. The classifier is
read from --classifier FILE (by default <data_dir>/classifier/<dataset>_cnn.pt), and trained there first when the
file does not exist (a few minutes on a CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from cvae import checkpoints, cli, run_lock
from cvae.classifier import class_probabilities, completed_images, default_path, digit_classifier, load_classifier
from cvae.config import RunConfig
from cvae.data import load_splits
from cvae.estimators import cll_importance
from cvae.evaluation import BLOCK, BLOCK_SEED_STRIDE, mean_and_sem
from cvae.experiment import load_model, read_run, remove_stale_temporaries, setting_paths, task_data
from cvae.models import CVAE, BaselineNet
from cvae.quadrants import QuadrantTask
from cvae.sample_metrics import active_units, best_of_k_error, classifier_scores, latent_statistics
from cvae.true_likelihood import cvae_expected_nll, nn_expected_nll

OUTPUT = "sample_quality.json"
SAMPLES_SEED_OFFSET = BLOCK_SEED_STRIDE // 4  # the generators of the K predictions, apart from the estimators'


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run written by train.py")
    p.add_argument("--quadrants", type=cli.quadrants, nargs="+", default=None, help="default: the run's")
    p.add_argument("-k", "--predictions", type=cli.positive_int("-k"), default=10, metavar="K",
                   help="predictions per test image for the best-of-K error and the classifier (default 10)")
    p.add_argument("--draws", type=cli.positive_int("--draws"), default=3, metavar="T",
                   help="stochastic binarizations of each test image's targets (default 3)")
    p.add_argument("--num-samples", type=cli.positive_int("--num-samples"), default=100, metavar="S",
                   help="samples of z per estimate of the CVAE's likelihood (default 100)")
    p.add_argument("--test-subset", type=cli.positive_int("--test-subset"), default=None, metavar="N",
                   help="the first N test images only")
    p.add_argument("--seed", type=cli.seed, default=0, help="seed of every draw (binarizations, z; default 0)")
    p.add_argument("--data-dir", default=None, help="default: the run's")
    p.add_argument("--classifier", default=None, metavar="FILE",
                   help="the digit classifier's file (default: DATA_DIR/classifier/DATASET_cnn.pt), trained and "
                        "written there when it does not exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_device_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.start_torch()
    device = cli.resolve_device(args.device)
    run_dir = Path(args.run_dir)
    with run_lock.hold(run_dir, command="sample_quality.py"):  # it writes sample_quality.json into the run
        return sample_quality(args, device, run_dir)


@torch.inference_mode()
def _blockwise(function, *tensors: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """function(block index, *blocks of BLOCK images) for every block, concatenated along dim."""
    parts = [function(block, *(tensor[start:start + BLOCK] for tensor in tensors))
             for block, start in enumerate(range(0, tensors[0].shape[0], BLOCK))]
    return torch.cat(parts, dim=dim)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def setting_values(baseline: BaselineNet, cvae: CVAE, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   args: argparse.Namespace, progress: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Per-image values of every metric, {"nn": {...}, "cvae": {...}}, each (N,) (the posterior means (N, z_dim)
    under cvae["posterior_means"]). x (N, 784), y (N, num_output_pixels): the task's test data."""
    baseline.eval()
    cvae.eval()
    task, seed, k = cvae.task, args.seed, args.predictions
    device = x.device
    with torch.inference_mode():
        nn_prediction = _blockwise(lambda _, xb: baseline(xb), x)[None]  # (1, N, D)
        gray_nn = _blockwise(lambda _, xb, yb: -baseline.log_likelihood(xb, yb), x, y)
    gray_is = _blockwise(lambda b, xb, yb: cll_importance(
        cvae, xb, yb, args.num_samples, _generator(device, seed + b * BLOCK_SEED_STRIDE), progress), x, y)
    samples = _blockwise(lambda b, xb: cvae.sample(
        xb, k, generator=_generator(device, seed + SAMPLES_SEED_OFFSET + b * BLOCK_SEED_STRIDE), mean=True),
        x, dim=1)  # (K, N, D)
    kl, posterior_means = latent_statistics(cvae, x, y)
    nn_scores = classifier_scores(class_probabilities(classifier, completed_images(x, nn_prediction, task))
                                  .expand(k, -1, -1))
    cvae_scores = classifier_scores(class_probabilities(classifier, completed_images(x, samples, task)))
    return {
        "nn": {"gray": gray_nn,
               "true": nn_expected_nll(baseline, x, y, args.draws, seed),
               "best_of_k": best_of_k_error(nn_prediction, y), **nn_scores},
        "cvae": {"gray_is": gray_is,
                 "true_mc": cvae_expected_nll(cvae, x, y, args.draws, args.num_samples, "monte_carlo", seed,
                                              progress),
                 "true_is": cvae_expected_nll(cvae, x, y, args.draws, args.num_samples, "importance", seed,
                                              progress),
                 "best_of_k": best_of_k_error(samples, y), **cvae_scores, "kl": kl,
                 "posterior_means": posterior_means},
    }


def summarize(values: dict[str, dict[str, torch.Tensor]]) -> dict:
    """Mean and standard error over images of every per-image value; the CVAE's active units and z_dim."""
    summary = {model: {key: mean_and_sem(value.double().cpu()) for key, value in metrics.items()
                       if key != "posterior_means"} for model, metrics in values.items()}
    means = values["cvae"]["posterior_means"]
    summary["cvae"]["active_units"] = active_units(means) if means.shape[0] > 1 else None
    summary["cvae"]["z_dim"] = int(means.shape[1])
    return summary


def _cell(value: dict[str, float] | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    sem = value["sem"]
    return f"{value['mean']:.{digits}f} ± {sem:.{digits}f}" if sem == sem else f"{value['mean']:.{digits}f}"


def markdown_table(k: int, summary: dict, settings: dict) -> str:
    """One setting's table: a row per metric, a column per model."""
    nn_, cvae = summary["nn"], summary["cvae"]
    active = cvae["active_units"]
    rows = [
        ("gray score -Σ [t l - softplus(l)] (nats)", f"{_cell(nn_['gray'])} (exact)", f"{_cell(cvae['gray_is'])} (IS)"),
        ("true -E_b log p(b\\|x), b ~ Bernoulli(t) (nats)", f"{_cell(nn_['true'])} (exact)",
         f"{_cell(cvae['true_is'])} (IS)"),
        ("true -E_b log p(b\\|x), Monte Carlo (nats)", "—", f"{_cell(cvae['true_mc'])} (MC)"),
        (f"best-of-{settings['predictions']} squared error (sum over pixels)", _cell(nn_["best_of_k"]),
         _cell(cvae["best_of_k"])),
        ("plausibility (mean top-class probability)", _cell(nn_["plausibility"], 3), _cell(cvae["plausibility"], 3)),
        ("diversity (entropy of the K labels, nats)", _cell(nn_["diversity"], 3), _cell(cvae["diversity"], 3)),
        ("distinct labels among the K", _cell(nn_["distinct"]), _cell(cvae["distinct"])),
        ("KL(q(z\\|x,y) ‖ p(z\\|x)) (nats)", "—", _cell(cvae["kl"])),
        ("active units (Cov_x E_q[z_u] > 0.01)", "—",
         f"{active} of {cvae['z_dim']}" if active is not None else "—"),
    ]
    title = (f"### {k} input quadrant{'s' if k > 1 else ''}: {settings['test_examples']} test images, "
             f"S = {settings['num_samples']}, T = {settings['draws']} binarizations, K = {settings['predictions']}")
    lines = [title, "", "| per test image | NN | CVAE |", "|---|---|---|"]
    lines += [f"| {name} | {nn_value} | {cvae_value} |" for name, nn_value, cvae_value in rows]
    return "\n".join(lines) + "\n"


def sample_quality(args: argparse.Namespace, device: torch.device, run_dir: Path) -> int:
    saved = read_run(run_dir)
    remove_stale_temporaries(run_dir)
    if not saved.get("finished"):
        raise cli.UserError(f"{run_dir} has not finished training (it was interrupted or stopped early), so it has "
                            f"no complete checkpoints to measure. Continue it first with: "
                            f"python train.py --resume {run_dir}")
    config = RunConfig.from_dict(saved["config"])
    quadrants = args.quadrants or list(config.quadrants)
    missing = sorted(set(quadrants) - set(config.quadrants))
    if missing:
        raise cli.UserError(f"{run_dir} has no models for --quadrants {' '.join(map(str, missing))}: it was trained "
                            f"for {' '.join(map(str, config.quadrants))}.")
    data_dir = args.data_dir or config.data_dir
    # every checkpoint is loaded and checked before anything is computed
    models = {k: (load_model(setting_paths(run_dir, k).baseline, "baseline", k, config, device),
                  load_model(setting_paths(run_dir, k).cvae, "cvae", k, config, device)) for k in quadrants}
    classifier_path = Path(args.classifier) if args.classifier else default_path(data_dir, config.dataset)
    classifier = digit_classifier(data_dir, device, not args.no_progress, dataset=config.dataset,
                                  path=classifier_path)
    record = load_classifier(classifier_path)[1]
    splits = load_splits(data_dir, config.dataset)
    images = splits.test if args.test_subset is None else splits.test[:args.test_subset]
    settings = {"test_examples": int(images.shape[0]), "num_samples": args.num_samples, "draws": args.draws,
                "predictions": args.predictions, "seed": args.seed}
    results: dict = {"dataset": config.dataset, "protocol": config.protocol, **settings,
                     "classifier": {"path": str(classifier_path), "test_accuracy": record.get("test_accuracy")}}
    for k, (baseline, cvae) in models.items():
        started = time.perf_counter()
        x, y = task_data(images, QuadrantTask(k), config.binarize, device)
        summary = summarize(setting_values(baseline, cvae, classifier, x, y, args, not args.no_progress))
        results[str(k)] = summary | {"seconds": time.perf_counter() - started}
        print(markdown_table(k, summary, settings))
    checkpoints.write_json(run_dir / OUTPUT, results)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
