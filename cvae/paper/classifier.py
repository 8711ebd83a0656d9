"""A digit classifier for judging completed images: a small CNN trained on a data set's training split, cached.

    DigitClassifier: conv 5x5 (16) -> ReLU -> max-pool 2 -> conv 5x5 (32) -> ReLU -> max-pool 2 -> dropout
                     -> fc 128 -> ReLU -> dropout -> fc 10 (logits), on images in [0, 1] (N, 784)

(the LeNet layout, LeCun et al. 1998, with ReLU, max-pooling and dropout), trained with Adam on the cross-entropy
for a few epochs, seeded. ``digit_classifier`` trains it once on the 50 000 images of ``load_splits(...).train``
(MNIST's digits; for Fashion-MNIST, the same network on its ten classes of clothing) and caches its weights and
its test accuracy at <data_dir>/classifier/<dataset>_cnn.pt; later calls load them.
``completed_images`` puts a model's predicted pixels back into the input image (QuadrantTask.combine), and
``class_probabilities`` gives the classifier's softmax over the ten classes for any number of images.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cvae import checkpoints
from cvae.settings import check_seed, is_integer

from .data import Splits, load_splits
from .quadrants import IMAGE_SIDE, NUM_PIXELS, QuadrantTask

KIND = "digit_classifier"
NUM_CLASSES = 10
PIXEL_MEAN, PIXEL_STD = 0.1307, 0.3081  # MNIST's training pixels, to standardize the input
BLOCK = 2048  # images per forward pass when classifying many


class DigitClassifier(nn.Module):
    """Two 5x5 convolutions (``channels``) with ReLU and 2x2 max-pooling, then a hidden layer of ``hidden`` units:
    images (N, 784) or (N, 28, 28) in [0, 1] -> logits (N, 10). ``dropout`` before each fully connected layer."""

    def __init__(self, channels: Sequence[int] = (16, 32), hidden: int = 128, dropout: float = 0.25):
        super().__init__()
        if len(channels) != 2 or any(not is_integer(c) or c < 1 for c in channels):
            raise ValueError(f"channels must be two positive integers, got {channels!r}")
        if not is_integer(hidden) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        channels, hidden = (int(channels[0]), int(channels[1])), int(hidden)
        self.channels, self.hidden, self.dropout = channels, hidden, float(dropout)
        self.features = nn.Sequential(
            nn.Conv2d(1, channels[0], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        side = IMAGE_SIDE // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels[1] * side * side, hidden),
                                  nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, NUM_CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != NUM_PIXELS and images.shape[-2:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(f"images must have shape (N, {NUM_PIXELS}) or (N, {IMAGE_SIDE}, {IMAGE_SIDE}), got "
                             f"{tuple(images.shape)}")
        images = images.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
        return self.head(self.features((images - PIXEL_MEAN) / PIXEL_STD))

    def config(self) -> dict:
        return {"channels": list(self.channels), "hidden": self.hidden, "dropout": self.dropout}


def completed_images(x: torch.Tensor, y_samples: torch.Tensor, task: QuadrantTask) -> torch.Tensor:
    """The whole images: x's input pixels and the predicted output pixels, x (N, 784) and y_samples
    (..., N, num_output_pixels) -> (..., N, 784) (QuadrantTask.combine)."""
    if x.dim() != 2 or x.shape[1] != NUM_PIXELS:
        raise ValueError(f"x must have shape (N, {NUM_PIXELS}), got {tuple(x.shape)}")
    if y_samples.dim() < 2 or y_samples.shape[-2:] != (x.shape[0], task.num_output_pixels):
        raise ValueError(f"y_samples must have shape (..., N={x.shape[0]}, {task.num_output_pixels}) for "
                         f"{task.num_quadrants} input quadrant(s), got {tuple(y_samples.shape)}")
    return task.combine(x, y_samples)


@torch.inference_mode()
def class_probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """softmax(logits) of every image: (..., 784) -> (..., 10), classified in blocks of BLOCK in eval mode; the
    softmax in the images' dtype, also under a bf16 autocast."""
    model.eval()
    flat = images.reshape(-1, NUM_PIXELS)
    # the logits in the images' dtype (float32 under a bf16 autocast, cvae.precision) before the softmax
    probs = torch.cat([F.softmax(model(part).to(flat.dtype), dim=-1) for part in flat.split(BLOCK)])
    return probs.reshape(*images.shape[:-1], NUM_CLASSES)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of images whose most probable class is their label."""
    return (class_probabilities(model, images).argmax(-1) == labels.to(images.device)).double().mean().item()


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 3, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0, progress: bool = True, **options) -> DigitClassifier:
    """A DigitClassifier (``options``: its constructor's) trained with Adam on the mean cross-entropy of images
    (N, 784) in [0, 1] and labels (N,), in minibatches of a seeded shuffle. The initial weights and the dropout
    masks are drawn from torch's global generator seeded with ``seed`` inside ``torch.random.fork_rng``, so the
    caller's random state is left as it was."""
    if images.dim() != 2 or images.shape[1] != NUM_PIXELS or labels.shape != images.shape[:1]:
        raise ValueError(f"images must be (N, {NUM_PIXELS}) and labels (N,), got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}")
    check_seed(seed)
    with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = DigitClassifier(**options).to(images.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        order = torch.Generator().manual_seed(seed)
        model.train()
        for epoch in range(epochs):
            batches = torch.randperm(images.shape[0], generator=order).to(images.device).split(batch_size)
            for batch in tqdm(batches, disable=None if progress else True, leave=False,
                              desc=f"classifier epoch {epoch + 1}/{epochs}"):
                loss = F.cross_entropy(model(images[batch]), labels[batch].to(images.device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return model.eval()


def default_path(data_dir: str | Path, dataset: str = "mnist") -> Path:
    return Path(data_dir) / "classifier" / f"{dataset}_cnn.pt"


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[DigitClassifier, dict]:
    """The classifier saved at path, in eval mode, and its checkpoint's record (test_accuracy, ...)."""
    checkpoint = checkpoints.load(path)
    if checkpoint.get("kind") != KIND:
        raise checkpoints.CheckpointError(f"{path} holds a {checkpoint.get('kind')!r}, not a {KIND} saved by "
                                          "digit_classifier. Delete it to train the classifier again.")
    try:
        model = DigitClassifier(**checkpoint["config"])
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise checkpoints.CheckpointError(f"{path} does not hold a classifier that can be rebuilt "
                                          f"({checkpoints.describe(error)}). Delete it to train it again.") from None
    record = {key: value for key, value in checkpoint.items() if key not in ("kind", "config", "state_dict")}
    return model.to(device).eval(), record


def save_classifier(model: DigitClassifier, path: str | Path, **record) -> None:
    """Write the classifier's config, weights and ``record`` (e.g. test_accuracy) to path, atomically."""
    checkpoints.save({"kind": KIND, "config": model.config(), "state_dict": model.state_dict(), **record}, path)


def digit_classifier(data_dir: str | Path, device: torch.device | str = "cpu", progress: bool = True, *,
                     dataset: str = "mnist", path: str | Path | None = None, epochs: int = 3,
                     seed: int = 0) -> DigitClassifier:
    """The classifier of ``dataset``'s images, in eval mode on device (``classifier_and_record``'s)."""
    return classifier_and_record(data_dir, device, progress, dataset=dataset, path=path, epochs=epochs,
                                 seed=seed)[0]


def classifier_and_record(data_dir: str | Path, device: torch.device | str = "cpu", progress: bool = True, *,
                          dataset: str = "mnist", path: str | Path | None = None, epochs: int = 3, seed: int = 0,
                          splits: Splits | None = None) -> tuple[DigitClassifier, dict]:
    """The classifier of ``dataset``'s images, in eval mode on device, and its record (test_accuracy, ...): loaded
    from path (by default <data_dir>/classifier/<dataset>_cnn.pt) when it is there; otherwise trained on the
    training split of ``splits`` (by default load_splits(data_dir, dataset): 50 000 images), evaluated on its
    test split, and saved there (atomically) with its test accuracy and training time. When it trains it says so
    on stderr first (a few minutes on a CPU, once per data directory), then its test accuracy."""
    path = Path(path) if path is not None else default_path(data_dir, dataset)
    if path.exists():
        return load_classifier(path, device)
    splits = splits if splits is not None else load_splits(data_dir, dataset)
    print(f"note: training a {dataset} classifier on the {splits.train.shape[0]} training images for the sample "
          f"metrics: a few minutes on a CPU, once per data directory (it is saved to {path})", file=sys.stderr)
    device = torch.device(device)
    started = time.perf_counter()
    model = train_classifier(splits.train.to(device), splits.train_labels, epochs=epochs, seed=seed,
                             progress=progress)
    seconds = time.perf_counter() - started
    record = {"test_accuracy": accuracy(model, splits.test.to(device), splits.test_labels), "train_seconds": seconds,
              "epochs": epochs, "seed": seed, "train_images": int(splits.train.shape[0]), "dataset": dataset}
    save_classifier(model, path, **record)
    print(f"{dataset} classifier: test accuracy {100 * record['test_accuracy']:.2f}% on {splits.test.shape[0]} test "
          f"images, trained in {seconds:.0f} s; saved to {path}", file=sys.stderr)
    return model, record
