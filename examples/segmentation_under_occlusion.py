"""Segmentation under occlusion, the paper's sections 5.2-5.3 in miniature: label every pixel of an MNIST digit
(background, or the digit's class) from an image with a block hidden, where the hidden part can make the answer
ambiguous (is it a 3 or an 8?).

    python examples/segmentation_under_occlusion.py           # MNIST, about 8 minutes on 2 CPU cores

x = the digit (1, 28, 28) with a random BLOCK x BLOCK square hidden, its pixels marked -1 as the quadrant task
marks the pixels it does not show; y = the label map of the whole digit (1, 28, 28), block included: 0
(background) where the pixel is below 0.5, 1 + the digit's class where it is at least 0.5, 11 classes in all.
Convolutional networks (``networks="conv"``) under a Categorical(11) likelihood: a deterministic baseline (a
Regressor, whose log-likelihood is exact) and a ConditionalVAE fed with its prediction (the paper's recurrent
connection). On the test images, as the paper's Tables 2-3 do:

- the negative conditional log-likelihood of the label map, nats per image: the baseline's exact value, the CVAE's
  importance-sampled estimate (S samples of z);
- pixel accuracy and mean IoU over the 11 classes (the intersection over union of each class summed over the test
  images, then averaged over the classes) of the baseline's prediction (the most probable label of each pixel),
  of the CVAE's (the most probable label under the mean of p(y|x,z) over its S samples of z ~ p(z|x)) and of the
  best of K CVAE samples (each sample the most probable label map given one z ~ p(z|x); per image the sample of
  the highest IoU against the truth, an oracle's choice: it says whether the right answer is among K guesses).

Writes results.md and samples.png (inputs, truth, the baseline's prediction, the CVAE's, CVAE samples) into --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from cvae import ConditionalVAE, Regressor, estimators, fit, likelihoods  # noqa: E402
from cvae.paper.data import load_splits  # noqa: E402
from cvae.paper.quadrants import MISSING  # noqa: E402

SIDE = 28
NUM_CLASSES = 11  # background and the ten digits
INK = 0.5  # a pixel at least this bright belongs to the digit
CHUNK = 100  # test images sampled at a time


def occlude(images: torch.Tensor, block: int, generator: torch.Generator) -> torch.Tensor:
    """images (N, 784) in [0, 1] -> x (N, 1, 28, 28): each image with one block x block square, at a uniformly
    random position inside the image, set to MISSING (-1)."""
    x = images.reshape(-1, 1, SIDE, SIDE).clone()
    corners = torch.randint(0, SIDE - block + 1, (len(x), 2), generator=generator)
    rows = torch.arange(SIDE)
    inside_rows = (rows >= corners[:, :1]) & (rows < corners[:, :1] + block)  # (N, 28)
    inside_cols = (rows >= corners[:, 1:]) & (rows < corners[:, 1:] + block)
    hidden = inside_rows[:, :, None] & inside_cols[:, None, :]  # (N, 28, 28)
    x[hidden[:, None]] = MISSING
    return x


def label_maps(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """images (N, 784), labels (N,) -> y (N, 1, 28, 28) int64: 0 where the pixel is below INK, 1 + label where at
    least INK."""
    ink = images.reshape(-1, 1, SIDE, SIDE) >= INK
    return torch.where(ink, 1 + labels.long()[:, None, None, None], 0)


def task(images: torch.Tensor, labels: torch.Tensor, block: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of the task: the occluded images and the label maps (the blocks drawn from ``seed``)."""
    return occlude(images, block, torch.Generator().manual_seed(seed)), label_maps(images, labels)


def confusion(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """C[t, p] = the number of pixels of true class t predicted as p, (11, 11), over every pixel given."""
    pairs = truth.flatten() * NUM_CLASSES + predicted.flatten()
    return torch.bincount(pairs, minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)


def scores(counts: torch.Tensor) -> dict[str, float]:
    """Pixel accuracy, sum_k C_kk / sum C, and mean IoU, the mean over the classes k present (in the truth or the
    prediction) of IoU_k = C_kk / (sum_p C_kp + sum_t C_tk - C_kk)."""
    counts = counts.double()
    correct = counts.diagonal()
    union = counts.sum(0) + counts.sum(1) - correct
    present = union > 0
    return {"accuracy": (correct.sum() / counts.sum()).item(),
            "iou": (correct[present] / union[present]).mean().item()}


def image_ious(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The mean IoU of each image alone, over the classes present in its truth or its prediction:
    predicted (..., N, 1, 28, 28), truth (N, 1, 28, 28) -> (..., N)."""
    classes = torch.arange(NUM_CLASSES)[:, None]
    p = predicted.flatten(-3)[..., None, :] == classes  # (..., N, 11, 784)
    t = truth.flatten(-3)[..., None, :] == classes
    intersection, union = (p & t).sum(-1), (p | t).sum(-1)
    present = union > 0
    return torch.where(present, intersection / union.clamp(min=1), 0.0).sum(-1) / present.sum(-1)


def cvae_predictions(model: ConditionalVAE, x: torch.Tensor, num_samples: int, best_of: int, y: torch.Tensor,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per test image: the most probable label under the mean of p(y|x,z) over num_samples z ~ p(z|x); the best of
    the first ``best_of`` samples' label maps (argmax of p(y|x,z)) by the image's IoU; and those samples
    (best_of, N, 1, 28, 28)."""
    mean_maps, best_maps, drawn = [], [], []
    with torch.no_grad():
        for start in range(0, len(x), CHUNK):
            probabilities = model.sample(x[start:start + CHUNK], num_samples, mean=True, generator=generator)
            mean_maps.append(probabilities.mean(0).argmax(-1))
            maps = probabilities[:best_of].argmax(-1)  # (K, n, 1, 28, 28)
            best = image_ious(maps, y[start:start + CHUNK]).argmax(0)  # (n,)
            best_maps.append(maps[best, torch.arange(maps.shape[1])])
            drawn.append(maps)
    return torch.cat(mean_maps), torch.cat(best_maps), torch.cat(drawn, 1)


def mean_and_sem(values: torch.Tensor) -> str:
    """"mean ± standard error" over examples (cvae.estimators.mean_and_sem)."""
    summary = estimators.mean_and_sem(values.double())
    return f"{summary['mean']:.2f} ± {summary['sem']:.2f}"


def sample_figure(x: torch.Tensor, y: torch.Tensor, rows: dict[str, torch.Tensor], path: Path) -> None:
    """Columns: test images. Rows: the input (the hidden block gray), the true label map, then each of ``rows``
    (label maps (N, 1, 28, 28)); background black, each digit's class a colour of its own."""
    colours = ListedColormap(["black", *plt.get_cmap("tab10").colors])
    shown = {"input": None, "truth": y, **rows}
    fig, axes = plt.subplots(len(shown), len(x), figsize=(len(x) * 0.8, len(shown) * 0.85), squeeze=False)
    for r, (label, maps) in enumerate(shown.items()):
        for c in range(len(x)):
            ax = axes[r][c]
            if maps is None:  # ink white on black, the hidden block gray
                ax.imshow(torch.where(x[c, 0] == MISSING, 0.4, x[c, 0]).numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(maps[c, 0].numpy(), cmap=colours, vmin=-0.5, vmax=NUM_CLASSES - 0.5, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(k)) for k in range(NUM_CLASSES)]
    fig.legend(handles, ["background", *map(str, range(10))], loc="lower center", ncol=NUM_CLASSES, fontsize=7,
               frameon=False, bbox_to_anchor=(0.5, 0.05))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--block", type=int, default=14, help="the side of the hidden square, in pixels")
    p.add_argument("--epochs", type=int, default=8, help="at most this many epochs per model (early stopping)")
    p.add_argument("--kl-warmup", type=int, default=2, help="epochs of the CVAE's KL weight rising from 0 to 1")
    p.add_argument("--hidden", type=int, nargs="+", default=[32, 64], help="channels of the convolutions")
    p.add_argument("--z-dim", type=int, default=16)
    p.add_argument("--train-subset", type=int, default=20_000, help="train on the first N training images")
    p.add_argument("--val-subset", type=int, default=2000, help="validate on the first N validation images")
    p.add_argument("--test-subset", type=int, default=1000, help="evaluate on the first N test images")
    p.add_argument("--num-samples", type=int, default=100, help="S, samples of z per test image")
    p.add_argument("--best-of", type=int, default=10, help="K, the CVAE samples the oracle chooses from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="runs/segmentation")
    args = p.parse_args(argv)
    if not 1 <= args.block <= SIDE:
        p.error(f"--block must be from 1 to {SIDE}, got {args.block}")
    if not 1 <= args.best_of <= args.num_samples:
        p.error(f"--best-of must be from 1 to --num-samples ({args.num_samples}), got {args.best_of}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    splits = load_splits(args.data_dir, "mnist")
    n = args.train_subset
    train = task(splits.train[:n], splits.train_labels[:n], args.block, args.seed)
    val = task(splits.val[:args.val_subset], splits.val_labels[:args.val_subset], args.block, args.seed + 1)
    test = task(splits.test[:args.test_subset], splits.test_labels[:args.test_subset], args.block, args.seed + 2)
    shape, likelihood = (1, SIDE, SIDE), likelihoods.Categorical(NUM_CLASSES)
    settings = dict(epochs=args.epochs, seed=args.seed, progress=not args.no_progress)

    torch.manual_seed(args.seed)
    baseline = Regressor(shape, shape, hidden=args.hidden, likelihood=likelihood, networks="conv")
    fit(baseline, train, val, **settings)
    model = ConditionalVAE(shape, shape, z_dim=args.z_dim, hidden=args.hidden, likelihood=likelihood,
                           networks="conv", baseline=baseline)
    fit(model, train, val, kl_warmup=args.kl_warmup, **settings)
    trained = time.perf_counter() - started

    x, y = test
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        baseline_nll = -baseline.log_likelihood(x, y)
        baseline_maps = baseline(x).argmax(-1)
    cvae_nll = estimators.cll_importance(model, x, y, args.num_samples, generator)
    mean_maps, best_maps, drawn = cvae_predictions(model, x, args.num_samples, args.best_of, y, generator)

    rows = [("NN baseline", mean_and_sem(baseline_nll) + " (exact)", scores(confusion(baseline_maps, y))),
            (f"CVAE, mean of S={args.num_samples}",
             mean_and_sem(cvae_nll) + f" (importance sampling, S={args.num_samples})", scores(confusion(mean_maps, y))),
            (f"CVAE, best of K={args.best_of} (oracle)", "", scores(confusion(best_maps, y)))]
    lines = ["| prediction | negative CLL (nats per image) | pixel accuracy | mean IoU |", "|---|---|---|---|",
             *[f"| {name} | {nll} | {100 * s['accuracy']:.2f}% | {100 * s['iou']:.2f}% |" for name, nll, s in rows],
             f"| NN - CVAE (paired) | {mean_and_sem(baseline_nll - cvae_nll)} | | |", "",
             f"MNIST label maps (background and 10 digit classes) under a hidden {args.block}x{args.block} block, "
             f"Categorical(11) likelihood, convolutional networks of {args.hidden} channels, z_dim {args.z_dim}; "
             f"trained on {len(train[0])} images ({len(val[0])} for early stopping); {len(x)} test images, ± is the "
             f"standard error over images; seed {args.seed}; training {trained:.0f} s, in all "
             f"{time.perf_counter() - started:.0f} s."]
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table, encoding="utf-8")
    labels = splits.test_labels[:len(x)]
    shown = torch.stack([(labels == c).nonzero()[0, 0] for c in labels.unique()])  # the first image of each digit
    sample_figure(x[shown], y[shown], {"NN": baseline_maps[shown], "CVAE mean": mean_maps[shown],
                                       **{f"CVAE {i + 1}": maps[shown] for i, maps in enumerate(drawn[:5])}},
                  out / "samples.png")
    print(table)
    return table


if __name__ == "__main__":
    main()
