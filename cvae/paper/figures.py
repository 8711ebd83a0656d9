"""Figures (PNG): the tutorial's sample grid and the training curves. Written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from cvae.checkpoints import atomic_path  # noqa: E402
from cvae.settings import check_seed  # noqa: E402

from .models import CVAE, BaselineNet  # noqa: E402
from .quadrants import IMAGE_SIDE, MISSING, QuadrantTask  # noqa: E402

MISSING_SHADE = 0.3  # gray level that marks the pixels x does not have

# completion_grid's layout, in pixels: each digit drawn 3x (84 px), tiles GAP apart with its label above, at most
# COLUMNS tiles a row, the title (if any) on top. Drawn at a DPI that is a power of two, so that the figure's size
# in inches (pixels / DPI) is exact and the PNG has exactly the pixels the layout adds up to.
TILE_PIXELS, GAP_PIXELS, LABEL_PIXELS, TITLE_PIXELS, COLUMNS = 3 * IMAGE_SIDE, 6, 16, 24, 12
_GRID_DPI = 128


def _save(fig: plt.Figure, path: Path, dpi: int = 110, tight: bool = True) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)


def shown_input(x: torch.Tensor) -> torch.Tensor:
    """x (..., 784) as the figures show it: the pixels x does not have (MISSING) in gray (MISSING_SHADE)."""
    return torch.where(x == MISSING, MISSING_SHADE, x)


@torch.no_grad()
def completions(baseline: BaselineNet, cvae: CVAE, x: torch.Tensor, num_samples: int,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The images x (N, 784) completed: by the NN's prediction (N, 784), and by num_samples CVAE predictions
    (num_samples, N, 784), the means of p(y|x,z) for z ~ p(z|x) drawn with a generator seeded with seed. Both keep
    x's own pixels. The models are put in eval mode."""
    baseline.eval()
    cvae.eval()
    generator = torch.Generator(x.device).manual_seed(check_seed(seed))
    task: QuadrantTask = cvae.task
    return task.combine(x, baseline(x)), task.combine(x, cvae.sample(x, num_samples, generator=generator, mean=True))


def completion_labels(num_samples: int) -> list[str]:
    """The labels of an input, its NN completion and num_samples CVAE completions, in that order."""
    return ["input", "NN", *[f"CVAE {i + 1}" for i in range(num_samples)]]


def _show(ax: plt.Axes, image: torch.Tensor, **options: object) -> None:
    ax.imshow(image.reshape(IMAGE_SIDE, IMAGE_SIDE).cpu().numpy(), cmap="gray", vmin=0, vmax=1, **options)
    ax.set_xticks([])
    ax.set_yticks([])


def sample_grid(
    baseline: BaselineNet, cvae: CVAE, x: torch.Tensor, y: torch.Tensor, path: Path,
    num_samples: int = 10, seed: int = 0, title: str = "",
) -> None:
    """Columns: test digits, x (N, 784) and their output pixels y. Rows: input x (unseen pixels gray), truth, the
    NN's prediction, and num_samples CVAE predictions (means of p(y|x,z) for z ~ p(z|x))."""
    nn_prediction, cvae_predictions = completions(baseline, cvae, x, num_samples, seed)
    rows = [shown_input(x), cvae.task.combine(x, y), nn_prediction, *cvae_predictions]
    labels = completion_labels(num_samples)
    labels.insert(1, "truth")
    num_digits = x.shape[0]
    fig, axes = plt.subplots(len(rows), num_digits, figsize=(num_digits * 0.8, len(rows) * 0.8),
                             squeeze=False)
    for r, (images, label) in enumerate(zip(rows, labels)):
        for c in range(num_digits):
            ax = axes[r][c]
            _show(ax, images[c])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def grid_pixels(num_images: int, title: str = "") -> tuple[int, int]:
    """The (width, height) in pixels of completion_grid's figure of num_images digits."""
    columns, rows = min(num_images, COLUMNS), -(-num_images // COLUMNS)
    return (GAP_PIXELS + columns * (TILE_PIXELS + GAP_PIXELS),
            (TITLE_PIXELS if title else 0) + rows * (LABEL_PIXELS + TILE_PIXELS + GAP_PIXELS))


def completion_grid(images: list[torch.Tensor], labels: list[str], path: Path, title: str = "") -> None:
    """Digits (each 784 pixels or 28x28, in [0, 1]) as labelled tiles, left to right in rows of at most COLUMNS,
    each digit pixel drawn as a 3x3 square; the PNG is exactly grid_pixels(len(images), title) in size. For one
    image's completions: images shown_input(x), the NN's and the CVAE's (labels from completion_labels)."""
    width, height = grid_pixels(len(images), title)
    fig = plt.figure(figsize=(width / _GRID_DPI, height / _GRID_DPI), dpi=_GRID_DPI)
    top = TITLE_PIXELS if title else 0
    for i, (image, label) in enumerate(zip(images, labels)):
        row, column = divmod(i, COLUMNS)
        left = GAP_PIXELS + column * (TILE_PIXELS + GAP_PIXELS)
        bottom = height - top - (row + 1) * (LABEL_PIXELS + TILE_PIXELS + GAP_PIXELS) + GAP_PIXELS
        ax = fig.add_axes((left / width, bottom / height, TILE_PIXELS / width, TILE_PIXELS / height))
        _show(ax, image, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(label, fontsize=7, pad=2)
    if title:
        fig.suptitle(title, y=1 - TITLE_PIXELS / 2 / height, va="center", fontsize=9)
    _save(fig, path, dpi=_GRID_DPI, tight=False)


def training_curves(histories: dict[str, dict[str, list[dict]]], path: Path) -> None:
    """histories: {setting: {"baseline": [...], "cvae": [...]}} with per-epoch train_loss and val_loss
    (nats per image). One column per setting, one row per model."""
    settings = sorted(histories)
    models = ["baseline", "cvae"]
    fig, axes = plt.subplots(2, len(settings), figsize=(4 * len(settings), 6), squeeze=False)
    for c, setting in enumerate(settings):
        for r, model in enumerate(models):
            ax = axes[r][c]
            history = histories[setting].get(model, [])
            epochs = [h["epoch"] for h in history]
            ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
            ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
            ax.set_title(f"{model}, {setting} quadrant(s)")
            ax.set_xlabel("epoch")
            ax.set_ylabel("nats per image" + (" (negative ELBO)" if model == "cvae" else ""))
            ax.legend()
            ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def convergence_plot(table: dict[str, dict[str, dict[str, float]]], path: Path, title: str = "") -> None:
    """CLL estimates (nats) versus the number of samples S, with standard-error bars: table from
    convergence.estimates_versus_samples."""
    samples = [int(s) for s in table]
    labels = {"cvae_elbo": "negative ELBO", "cvae_mc": "Monte Carlo (z ~ prior)",
              "cvae_is": "importance sampling (z ~ recognition)"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in labels.items():
        ax.errorbar(samples, [table[str(s)][key]["mean"] for s in samples],
                    yerr=[table[str(s)][key]["sem"] for s in samples], marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("samples S per test image")
    ax.set_ylabel("estimated negative CLL (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
