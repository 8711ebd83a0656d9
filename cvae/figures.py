"""Figures (PNG): the tutorial's sample grid and the training curves. Written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .checkpoints import atomic_path  # noqa: E402
from .models import CVAE, BaselineNet  # noqa: E402
from .quadrants import IMAGE_SIDE, MISSING, QuadrantTask  # noqa: E402

MISSING_SHADE = 0.3  # gray level that marks the pixels x does not have


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


@torch.no_grad()
def sample_grid(
    baseline: BaselineNet, cvae: CVAE, x: torch.Tensor, y: torch.Tensor, path: Path,
    num_samples: int = 10, seed: int = 0, title: str = "",
) -> None:
    """Columns: test digits, x (N, 784) and their output pixels y. Rows: input x (unseen pixels gray), truth, the
    NN's prediction, and num_samples CVAE predictions (means of p(y|x,z) for z ~ p(z|x))."""
    baseline.eval()
    cvae.eval()
    generator = torch.Generator(x.device).manual_seed(seed)
    task: QuadrantTask = cvae.task
    rows = [torch.where(x == MISSING, MISSING_SHADE, x), task.combine(x, y), task.combine(x, baseline(x)),
            *task.combine(x, cvae.sample(x, num_samples, generator=generator, mean=True))]
    labels = ["input", "truth", "NN", *[f"CVAE {i + 1}" for i in range(num_samples)]]
    num_digits = x.shape[0]
    fig, axes = plt.subplots(len(rows), num_digits, figsize=(num_digits * 0.8, len(rows) * 0.8),
                             squeeze=False)
    for r, (images, label) in enumerate(zip(rows, labels)):
        for c in range(num_digits):
            ax = axes[r][c]
            ax.imshow(images[c].reshape(IMAGE_SIDE, IMAGE_SIDE).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, path)


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
