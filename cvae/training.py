"""One training loop for both models: Adam on minibatches, early stopping on the validation loss,
the best weights kept, and a resumable state saved at every epoch end and on interruption.

Every random choice comes from a seeded generator whose state is saved, and each epoch's order is a
fixed function of (seed, epoch), so an interrupted-and-resumed run ends with the same weights, bit
for bit on CPU, as one that was never interrupted.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpoints
from .objectives import training_loss

CHECK_EVERY = 50  # steps between the (synchronizing) finiteness checks and progress-bar updates
FUSED_ADAM_DEVICES = ("cpu", "cuda")  # one fused kernel per step instead of one per parameter


class TrainingInterrupted(Exception):
    """Training stopped on request (SIGINT / SIGTERM) after saving its resumable state."""


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class StopFlag:
    """Set (e.g. by a signal handler) to ask the loop to stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, *_: object) -> None:
        self.requested = True


@dataclass
class FitSettings:
    epochs: int = 50
    patience: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    objective: str = "cvae"  # what a CVAE is trained on (objectives.training_loss); the baseline ignores it
    alpha: float = 0.5

    def loss(self, model: nn.Module, *batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return training_loss(model, *batch, generator=generator, objective=self.objective, alpha=self.alpha)


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the training examples in an epoch: a fixed function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


@torch.no_grad()
def validation_loss(model: nn.Module, data: tuple[torch.Tensor, ...], settings: FitSettings) -> float:
    """Mean training loss over a dataset (x, y[, filled]), in eval mode and with fixed noise."""
    model.eval()
    device, n = data[0].device, data[0].shape[0]
    generator = torch.Generator(device).manual_seed(settings.seed)
    total = torch.zeros((), device=device)
    for start in range(0, n, settings.batch_size):
        batch = [t[start:start + settings.batch_size] for t in data]
        total += settings.loss(model, *batch, generator=generator) * batch[0].shape[0]
    return total.item() / n


def _fresh_state(seed: int) -> dict:
    return {"epoch": 0, "step": 0, "best_val": math.inf, "bad_epochs": 0, "history": [],
            "finished": False, "partial_losses": torch.zeros(0), "seed": seed}


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, ...],
    val: tuple[torch.Tensor, ...],
    settings: FitSettings,
    best_path: Path,
    state_path: Path,
    stop: StopFlag | None = None,
    progress: bool = True,
    desc: str = "",
) -> list[dict]:
    """Train ``model`` on ``settings.loss`` (``objectives.training_loss``); return the per-epoch history.

    train, val: (x, y) tensors (N, 784) on the model's device, plus for the CVAE the baseline's
    x_filled (see ``objectives.training_loss``). The best weights (lowest validation
    loss) go to ``best_path``; the resumable state (weights, optimizer, epoch, step, early-stopping
    state, RNG state) to ``state_path`` at each epoch end and when ``stop`` is requested. If
    ``state_path`` exists, training continues from it.
    """
    num_examples, device = train[0].shape[0], train[0].device
    # Adam's moments of weights whose input pixel is always 0 (MNIST's border) decay geometrically into
    # denormal floats after ~2 epochs, and denormal arithmetic made CPU epochs 2x slower. Flush them to zero.
    torch.set_flush_denormal(True)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=settings.lr, fused=device.type in FUSED_ADAM_DEVICES)
    noise = torch.Generator(device).manual_seed(settings.seed)

    state = _fresh_state(settings.seed)
    if state_path.exists():
        state = _resume(state_path, model, optimizer, noise)
    if state["finished"]:
        return state["history"]

    def save_state(epoch: int, step: int, losses: torch.Tensor) -> None:
        state.update(epoch=epoch, step=step, partial_losses=losses.cpu(), model=model.state_dict(),
                     optimizer=optimizer.state_dict(), noise_rng=noise.get_state())
        checkpoints.save(state, state_path)

    num_batches = math.ceil(num_examples / settings.batch_size)
    for epoch in range(state["epoch"], settings.epochs):
        started = time.perf_counter()
        first_step = state["step"] if epoch == state["epoch"] else 0
        order = epoch_order(num_examples, settings.seed, epoch).to(device)
        losses = torch.empty(num_batches, device=device)
        losses[:first_step] = state["partial_losses"].to(device)[:first_step]
        model.train()
        bar = tqdm(total=num_batches, initial=first_step, disable=not progress, leave=False,
                   desc=f"{desc} epoch {epoch + 1}/{settings.epochs}")
        checked = first_step
        for step in range(first_step, num_batches):
            batch = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            loss = settings.loss(model, *(t[batch] for t in train), generator=noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[step] = loss.detach()
            if step + 1 - checked >= CHECK_EVERY or step + 1 == num_batches:
                _check_finite(losses, checked, step + 1, epoch, best_path)
                bar.update(step + 1 - checked)
                bar.set_postfix(loss=f"{losses[:step + 1].mean().item():.2f}")
                checked = step + 1
            if stop is not None and stop.requested:
                _check_finite(losses, checked, step + 1, epoch, best_path)
                save_state(epoch, step + 1, losses[:step + 1])
                bar.close()
                raise TrainingInterrupted(f"{desc}: stopped at epoch {epoch + 1}, step {step + 1}")
        bar.close()

        train_loss = losses.mean().item()
        val_loss = validation_loss(model, val, settings)
        improved = val_loss < state["best_val"]
        if improved:
            state["best_val"], state["bad_epochs"] = val_loss, 0
            checkpoints.save(checkpoints.model_checkpoint(model), best_path)
        else:
            state["bad_epochs"] += 1
        state["history"].append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                                 "seconds": time.perf_counter() - started})
        tqdm.write(f"{desc} epoch {epoch + 1}: train {train_loss:.3f}  val {val_loss:.3f}"
                   + ("  (best)" if improved else ""), file=sys.stderr)
        state["finished"] = state["bad_epochs"] >= settings.patience or epoch + 1 == settings.epochs
        save_state(epoch + 1, 0, losses[:0])
        if state["finished"]:
            break
    return state["history"]


def _resume(state_path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            noise: torch.Generator) -> dict:
    """Load a resumable state into model, optimizer and noise; CheckpointError if it does not fit them."""
    state = checkpoints.load(state_path)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        noise.set_state(state["noise_rng"])
        if missing := sorted(set(_fresh_state(0)) - set(state)):
            raise KeyError(f"no {', '.join(missing)}")
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise checkpoints.CheckpointError(
            f"{state_path} is not a training state for this model and configuration "
            f"({checkpoints.describe(error)}). "
            f"Delete it to restart this stage from scratch, or resume the run that wrote it."
        ) from None
    return state


def _check_finite(losses: torch.Tensor, start: int, stop: int, epoch: int, best_path: Path) -> None:
    window = losses[start:stop]
    bad = (~torch.isfinite(window)).nonzero()
    if bad.numel():
        step = start + int(bad[0, 0])
        kept = (f"the last good checkpoint {best_path} is kept" if best_path.exists()
                else f"no checkpoint had been saved yet ({best_path} does not exist)")
        raise NonFiniteLoss(
            f"the training loss became {losses[step].item()} at epoch {epoch + 1}, step {step + 1}. "
            f"Training stopped; {kept}. Start a new run with a smaller learning rate (--lr), or "
            "check the data."
        )
