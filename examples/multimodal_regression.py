"""A problem with a known answer: multimodal regression whose true p(y|x) is known in closed form.

    python examples/multimodal_regression.py            # about 2 minutes on 2 CPU cores

x ~ Uniform(-1, 1); y in R^2 lies on one of four branches, the points of the unit circle at the angles
theta_k(x) = k pi / 2 + x pi / 2 (k = 0..3, equally likely), which turn with x, plus Gaussian noise of 0.05:

    p(y|x) = 1/4 sum_k N(y; (cos theta_k(x), sin theta_k(x)), 0.05^2 I).

On held-out data the script reports the true conditional NLL (the floor no model can beat), the CVAE's
importance-sampled CLL (S = 1000), the exact CLL of a unimodal Gaussian regression (the ``Regressor`` baseline,
trained on the same data), and the share of samples of each model that land on a branch (within 3 noise
standard deviations of a branch point: 98.9% of the true distribution's samples do). Both models are trained
with the library's defaults (the options below take them apart). Writes results.md and samples.png into --out.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from cvae import ConditionalVAE, Regressor, estimators, fit, likelihoods  # noqa: E402

BRANCHES = 4
NOISE = 0.05
ON_BRANCH = 3 * NOISE  # a sample within this distance of a branch point is on that branch


def branch_points(x: torch.Tensor) -> torch.Tensor:
    """The four branch points of each x: (N, 1) -> (N, BRANCHES, 2)."""
    theta = torch.arange(BRANCHES) * math.pi / 2 + x * math.pi / 2
    return torch.stack([theta.cos(), theta.sin()], dim=-1)


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n examples (x (n, 1), y (n, 2)) of the problem, from a generator seeded with seed."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator) * 2 - 1
    branch = torch.randint(BRANCHES, (n,), generator=generator)
    return x, branch_points(x)[torch.arange(n), branch] + NOISE * torch.randn(n, 2, generator=generator)


def true_nll(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log p(y|x) = -log (1/4) sum_k N(y; mu_k(x), 0.05^2 I), in closed form: (N,) nats."""
    squared = (y[:, None, :] - branch_points(x)).square().sum(-1)  # (N, BRANCHES)
    log_normal = -squared / (2 * NOISE**2) - math.log(2 * math.pi * NOISE**2)
    return -(torch.logsumexp(log_normal, dim=1) - math.log(BRANCHES))


def share_on_branch(x: torch.Tensor, samples: torch.Tensor) -> float:
    """The share of samples (S, N, 2) within ON_BRANCH of one of their x's branch points."""
    distance = (samples[:, :, None, :] - branch_points(x)).norm(dim=-1).min(dim=-1).values
    return (distance < ON_BRANCH).double().mean().item()


def mean_and_sem(values: torch.Tensor) -> str:
    """"mean ± standard error" over examples (cvae.estimators.mean_and_sem)."""
    summary = estimators.mean_and_sem(values.double())
    return f"{summary['mean']:.3f} ± {summary['sem']:.3f}"


def sample_figure(baseline: Regressor, model: ConditionalVAE, path: Path, num_samples: int = 300) -> None:
    """For four values of x: samples of each model (points) against the true branch points (crosses)."""
    xs = torch.tensor([[-0.75], [-0.25], [0.25], [0.75]])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        drawn = {"CVAE": model.sample(xs, num_samples, generator=generator),
                 "unimodal Gaussian regression": baseline.likelihood.sample(
                     baseline.params(xs).expand(num_samples, -1, -1), generator)}
    fig, axes = plt.subplots(len(drawn), len(xs), figsize=(3 * len(xs), 3 * len(drawn)), squeeze=False)
    for r, (name, samples) in enumerate(drawn.items()):
        for c in range(len(xs)):
            ax = axes[r][c]
            ax.scatter(samples[:, c, 0], samples[:, c, 1], s=3, alpha=0.4, label="samples")
            truth = branch_points(xs[c:c + 1])[0]
            ax.scatter(truth[:, 0], truth[:, 1], marker="x", color="red", s=60, label="true branches")
            ax.set_xlim(-1.6, 1.6)
            ax.set_ylim(-1.6, 1.6)
            ax.set_aspect("equal")
            ax.set_title(f"{name}\nx = {xs[c].item():+.2f}", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-size", type=int, default=50_000)
    p.add_argument("--test-size", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=50, help="at most this many epochs per model (early stopping)")
    p.add_argument("--num-samples", type=int, default=1000, help="S of the importance-sampled CLL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prior-components", type=int, default=8, help="of the mixture prior (1: the paper's Gaussian)")
    p.add_argument("--kl-warmup", type=int, default=10, help="epochs of KL warm-up (fit's default; 0: none)")
    p.add_argument("--lr-halving", type=int, default=2, help="fit's learning-rate halving (0: none)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="runs/multimodal_regression")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    seeds = 3 * args.seed + torch.arange(3)  # each seed has its own train, validation and test sets
    train, val, test = (make_data(n, int(s)) for n, s in zip(
        (args.train_size, args.test_size, args.test_size), seeds))
    settings = dict(epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    torch.manual_seed(args.seed)
    baseline = Regressor(1, 2, hidden=(64, 64), likelihood=likelihoods.Gaussian())
    fit(baseline, train, val, **settings)
    model = ConditionalVAE(1, 2, z_dim=2, hidden=(64, 64), likelihood=likelihoods.Gaussian(),
                           prior_components=args.prior_components)
    fit(model, train, val, kl_warmup=args.kl_warmup, lr_halving=args.lr_halving, **settings)
    trained = time.perf_counter() - started

    generator = torch.Generator().manual_seed(args.seed)
    floor = true_nll(*test)
    cvae_nll = estimators.cll_importance(model, *test, args.num_samples, generator)
    with torch.no_grad():
        baseline_nll = -baseline.log_likelihood(*test)
        cvae_share = share_on_branch(test[0], model.sample(test[0], 10, generator=generator))
        baseline_share = share_on_branch(test[0], baseline.likelihood.sample(
            baseline.params(test[0]).expand(10, -1, -1), generator))
    lines = ["| model | negative CLL (nats per example) | gap to the floor | samples on a branch |",
             "|---|---|---|---|",
             f"| truth: the floor, -log p(y|x) | {mean_and_sem(floor)} | 0 | "
             f"{1 - math.exp(-ON_BRANCH**2 / (2 * NOISE**2)):.1%} |",
             f"| CVAE, importance sampling (S={args.num_samples}) | {mean_and_sem(cvae_nll)} | "
             f"{mean_and_sem(cvae_nll - floor)} | {cvae_share:.1%} |",
             f"| unimodal Gaussian regression (exact) | {mean_and_sem(baseline_nll)} | "
             f"{mean_and_sem(baseline_nll - floor)} | {baseline_share:.1%} |", "",
             f"{test[0].shape[0]} held-out examples, ± is the standard error over examples (the gap's is paired); "
             f"10 samples per x; seed {args.seed}; CVAE prior of {args.prior_components} component(s), KL warm-up "
             f"{args.kl_warmup} epochs, learning-rate halving {args.lr_halving}; training {trained:.0f} s, in all "
             f"{time.perf_counter() - started:.0f} s."]
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table, encoding="utf-8")
    sample_figure(baseline, model, out / "samples.png")
    print(table)
    return table


if __name__ == "__main__":
    main()
