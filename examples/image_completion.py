"""Real data, continuous pixels: complete the bottom half of a Fashion-MNIST (or MNIST) image from its top half,
under the continuous-Bernoulli likelihood, a normalized density on [0, 1] (Loaiza-Ganem & Cunningham 2019).

    python examples/image_completion.py                       # Fashion-MNIST, MLPs and conv nets, 40 min on 1 core
    python examples/image_completion.py --networks mlp        # the MLPs only, about 4 minutes on 2 CPU cores
    python examples/image_completion.py --dataset mnist --out runs/completion_mnist

x = the top 14 rows, y = the bottom 14 rows (392 pixels each), grayscale values in [0, 1]. For each kind of
network (``--networks``): MLPs on the flat halves (392,), or convolutional networks (``networks="conv"``) on the
halves as images (1, 14, 28). Trains the deterministic baseline (a Regressor, exact log-likelihood) and a
ConditionalVAE fed with its prediction (the paper's recurrent connection), both with the library's defaults, then
reports on the test set the negative conditional log-likelihood in nats per image: the baseline's exact value and
the CVAE's importance-sampled, Monte Carlo and negative-ELBO estimates, with each model's number of parameters and
training time. Under a density, negative values are possible (p(y|x) > 1). Writes results.md and samples.png
(inputs, truth, each baseline's prediction, CVAE samples) into --out.
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
SHAPES = {"mlp": (HALF,), "conv": (1, 14, 28)}  # a half as each kind of network takes it
HIDDEN = {"mlp": (500, 500), "conv": (32, 64)}  # hidden widths, or channels of the convolutions


def halves(images: torch.Tensor, networks: str = "mlp") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 784) -> x = the top half, y = the bottom half, each (N, 392), or (N, 1, 14, 28) for networks "conv"."""
    shape = SHAPES[networks]
    return images[:, :HALF].reshape(-1, *shape), images[:, HALF:].reshape(-1, *shape)


def own_parameters(model: torch.nn.Module) -> int:
    """The number of a model's parameters, a CVAE's (frozen) baseline not counted."""
    baseline = getattr(model, "baseline", None)
    inner = baseline.parameters() if isinstance(baseline, torch.nn.Module) else ()
    return sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in inner)


def mean_and_sem(values: torch.Tensor) -> str:
    """"mean ± standard error" over examples (cvae.estimators.mean_and_sem)."""
    summary = estimators.mean_and_sem(values.double())
    return f"{summary['mean']:.2f} ± {summary['sem']:.2f}"


def sample_figure(images: torch.Tensor, trained: dict[str, tuple[Regressor, ConditionalVAE]], path: Path,
                  num_samples: int = 3) -> None:
    """Columns: test images (N, 784). Rows: input (bottom half gray), truth, then for each kind of networks its NN's
    prediction and CVAE samples (the means of p(y|x,z) for z ~ p(z|x))."""
    x, y = halves(images)
    rows = {"input": torch.cat([x, torch.full_like(y, 0.3)], 1), "truth": images}
    with torch.no_grad():
        for networks, (baseline, model) in trained.items():
            shaped_x = halves(images, networks)[0]
            rows[f"NN {networks}"] = torch.cat([x, baseline(shaped_x).reshape(len(x), -1)], 1)
            samples = model.sample(shaped_x, num_samples, generator=torch.Generator().manual_seed(0), mean=True)
            for i, sample in enumerate(samples):
                rows[f"CVAE {networks} {i + 1}"] = torch.cat([x, sample.reshape(len(x), -1)], 1)
    fig, axes = plt.subplots(len(rows), len(x), figsize=(len(x) * 0.8, len(rows) * 0.8), squeeze=False)
    for r, (label, shown) in enumerate(rows.items()):
        for c in range(len(x)):
            axes[r][c].imshow(shown[c].reshape(28, 28).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--networks", nargs="+", choices=tuple(SHAPES), default=list(SHAPES),
                   help="the kinds of networks compared: MLPs on flat halves, convolutions on halves as images")
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
    likelihood = likelihoods.ContinuousBernoulli()
    settings = dict(epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    lines = ["| networks | model | parameters | negative CLL (nats per image) | training |", "|---|---|---|---|---|"]
    trained: dict[str, tuple[Regressor, ConditionalVAE]] = {}
    for networks in dict.fromkeys(args.networks):
        train, val = halves(splits.train[:args.train_subset], networks), halves(splits.val, networks)
        test = halves(splits.test[:args.test_subset], networks)
        size = SHAPES[networks] if networks == "conv" else HALF
        torch.manual_seed(args.seed)
        clock = time.perf_counter()
        baseline = Regressor(size, size, hidden=HIDDEN[networks], likelihood=likelihood, networks=networks)
        fit(baseline, train, val, **settings)
        baseline_seconds, clock = time.perf_counter() - clock, time.perf_counter()
        model = ConditionalVAE(size, size, z_dim=32, hidden=HIDDEN[networks], likelihood=likelihood,
                               baseline=baseline, networks=networks)
        fit(model, train, val, **settings)
        model_seconds = time.perf_counter() - clock
        trained[networks] = baseline, model

        generator = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            nn_nll = -baseline.log_likelihood(*test)
        rows = {}
        for name, estimator in (("importance sampling", estimators.cll_importance),
                                ("Monte Carlo", estimators.cll_monte_carlo),
                                ("negative ELBO (a bound)", estimators.negative_elbo)):
            rows[f"CVAE {name}, S={args.num_samples}"] = estimator(model, *test, args.num_samples, generator)
        cvae_nll = rows[f"CVAE importance sampling, S={args.num_samples}"]
        lines += [f"| {networks} | NN baseline (exact) | {own_parameters(baseline):,} | {mean_and_sem(nn_nll)} | "
                  f"{baseline_seconds:.0f} s |",
                  *[f"| {networks} | {name} | {own_parameters(model):,} | {mean_and_sem(values)} | "
                    f"{model_seconds:.0f} s |" for name, values in rows.items()],
                  f"| {networks} | NN - CVAE importance sampling (paired) | | {mean_and_sem(nn_nll - cvae_nll)} | |"]
    lines += ["", f"{args.dataset}, bottom half from the top half, continuous-Bernoulli likelihood (a normalized "
              f"density on [0, 1]); {len(test[0])} test images, ± is the standard error over images; seed "
              f"{args.seed}; training: each model's own fit (a CVAE's parameters do not count its frozen "
              f"baseline); in all {time.perf_counter() - started:.0f} s."]
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table, encoding="utf-8")
    shown = torch.stack([(splits.test_labels == c).nonzero()[0, 0] for c in range(10)])
    sample_figure(splits.test[shown], trained, out / "samples.png")
    print(table)
    return table


if __name__ == "__main__":
    main()
