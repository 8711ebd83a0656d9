"""Real data, continuous pixels: complete the bottom half of a Fashion-MNIST (or MNIST) image from its top half,
under the continuous-Bernoulli likelihood, a normalized density on [0, 1] (Loaiza-Ganem & Cunningham 2019).

    python examples/image_completion.py                       # Fashion-MNIST, about 4 minutes on 2 CPU cores
    python examples/image_completion.py --dataset mnist --out runs/completion_mnist

x = the top 14 rows (392 pixels), y = the bottom 14 rows (392 pixels), grayscale values in [0, 1]. Trains the
deterministic baseline (a Regressor, exact log-likelihood) and a ConditionalVAE fed with its prediction (the
paper's recurrent connection), both with the library's defaults, then reports on the test set the negative
conditional log-likelihood in nats per image: the baseline's exact value and the CVAE's importance-sampled,
Monte Carlo and negative-ELBO estimates. Under a density, negative values are possible (p(y|x) > 1). Writes
results.md and samples.png (inputs, truth, the baseline's prediction, CVAE samples) into --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from cvae import ConditionalVAE, Regressor, estimators, fit, likelihoods  # noqa: E402
from cvae.paper.data import DATASETS, load_splits  # noqa: E402

HALF = 14 * 28  # pixels in the top (or bottom) 14 rows


def halves(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 784) -> x = the top half (N, 392), y = the bottom half (N, 392)."""
    return images[:, :HALF], images[:, HALF:]


def mean_and_sem(values: torch.Tensor) -> str:
    """"mean ± standard error" over examples (cvae.estimators.mean_and_sem)."""
    summary = estimators.mean_and_sem(values.double())
    return f"{summary['mean']:.2f} ± {summary['sem']:.2f}"


def sample_figure(x: torch.Tensor, y: torch.Tensor, baseline: Regressor, model: ConditionalVAE, path: Path,
                  num_samples: int = 6) -> None:
    """Columns: test images. Rows: input (bottom half gray), truth, the NN's prediction, CVAE samples (the means
    of p(y|x,z) for z ~ p(z|x))."""
    with torch.no_grad():
        samples = model.sample(x, num_samples, generator=torch.Generator().manual_seed(0), mean=True)
        rows = [torch.cat([x, torch.full_like(y, 0.3)], 1), torch.cat([x, y], 1), torch.cat([x, baseline(x)], 1),
                *[torch.cat([x, s], 1) for s in samples]]
    labels = ["input", "truth", "NN", *[f"CVAE {i + 1}" for i in range(num_samples)]]
    fig, axes = plt.subplots(len(rows), x.shape[0], figsize=(x.shape[0] * 0.8, len(rows) * 0.8), squeeze=False)
    for r, (images, label) in enumerate(zip(rows, labels)):
        for c in range(x.shape[0]):
            axes[r][c].imshow(images[c].reshape(28, 28).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--epochs", type=int, default=20, help="at most this many epochs per model (early stopping)")
    p.add_argument("--train-subset", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--num-samples", type=int, default=100, help="S, samples of z per test image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="runs/image_completion")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    splits = load_splits(args.data_dir, args.dataset)
    train, val = halves(splits.train[:args.train_subset]), halves(splits.val)
    test = halves(splits.test[:args.test_subset])
    likelihood = likelihoods.ContinuousBernoulli()
    settings = dict(epochs=args.epochs, seed=args.seed, progress=not args.no_progress)

    torch.manual_seed(args.seed)
    baseline = Regressor(HALF, HALF, hidden=(500, 500), likelihood=likelihood)
    fit(baseline, train, val, **settings)
    model = ConditionalVAE(HALF, HALF, z_dim=32, hidden=(500, 500), likelihood=likelihood, baseline=baseline)
    fit(model, train, val, **settings)
    trained = time.perf_counter() - started

    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        rows = {"NN baseline (exact)": -baseline.log_likelihood(*test)}
    for name, estimator in (("importance sampling", estimators.cll_importance),
                            ("Monte Carlo", estimators.cll_monte_carlo),
                            ("negative ELBO (a bound)", estimators.negative_elbo)):
        rows[f"CVAE {name}, S={args.num_samples}"] = estimator(model, *test, args.num_samples, generator)
    difference = rows["NN baseline (exact)"] - rows[f"CVAE importance sampling, S={args.num_samples}"]
    lines = ["| model | negative CLL (nats per image) |", "|---|---|",
             *[f"| {name} | {mean_and_sem(values)} |" for name, values in rows.items()],
             f"| NN - CVAE importance sampling (paired) | {mean_and_sem(difference)} |", "",
             f"{args.dataset}, bottom half from the top half, continuous-Bernoulli likelihood (a normalized density "
             f"on [0, 1]); {test[0].shape[0]} test images, ± is the standard error over images; seed {args.seed}; "
             f"training {trained:.0f} s, in all {time.perf_counter() - started:.0f} s."]
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table, encoding="utf-8")
    shown = torch.stack([(splits.test_labels == c).nonzero()[0, 0] for c in range(10)])
    sample_figure(*halves(splits.test[shown]), baseline, model, out / "samples.png")
    print(table)
    return table


if __name__ == "__main__":
    main()
