"""One training loop for both models: Adam on minibatches, early stopping on the validation loss,
the best weights kept, and a resumable state saved at every epoch end and on interruption.

Every random choice comes from a seeded generator whose state is saved, and each epoch's order is a
fixed function of (seed, epoch), so an interrupted-and-resumed run ends with the same weights, bit
for bit on CPU, as one that was never interrupted.

Under torchrun (``cvae.distributed``) every process takes the same global batch of ``batch_size`` from the
epoch's order and computes the loss on its contiguous share of it, weighted so that DistributedDataParallel's
mean of the gradients is the gradient of the global batch's mean loss, exactly (up to summation order), also
for a last partial batch. Process r draws its noise from seed + r * NOISE_SEED_STRIDE, so only the CVAE's
noise differs from a single-process run. The processes agree every CHECK_EVERY steps and at each epoch end on
the global losses and on a stop request, the validation loss is all-reduced, and only rank 0 writes files.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import checkpoints, distributed
from .conditional_vae import ConditionalVAE
from .objectives import training_loss

CHECK_EVERY = 50  # steps between the (synchronizing) finiteness checks and progress-bar updates
FUSED_ADAM_DEVICES = ("cpu", "cuda")  # one fused kernel per step instead of one per parameter
NOISE_SEED_STRIDE = 1_000_003  # process r's noise generator starts from seed + r * stride (rank 0: the seed)


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


@contextmanager
def stop_on_signals(stop: StopFlag) -> Iterator[StopFlag]:
    """Inside, SIGINT and SIGTERM set ``stop`` (the loop then saves its state and stops); after, the handlers
    from before are back (the defaults, or the scripts' own: ``cli.run`` meets SIGTERM like Ctrl-C)."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in before:
        signal.signal(signum, stop)
    try:
        yield stop
    finally:
        for signum, handler in before.items():  # None: set outside Python, not restorable; the default then
            signal.signal(signum, handler if handler is not None else
                          signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)


@dataclass
class FitSettings:
    epochs: int = 50
    patience: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    objective: str = "elbo"  # what a CVAE is trained on (objectives.training_loss); the baseline ignores it
    alpha: float = 0.5
    iw_samples: int = 5  # samples of z per example for the "iwae" objective
    lr_decay: float = 1.0  # the learning rate of epoch e (from 0) is lr * lr_decay ** e
    kl_warmup: int = 0  # epochs over which the KL weight rises linearly from 0 to 1 (0: always 1)
    lr_halving: int = 0  # after warm-up, halve the learning rate after each run of this many epochs without a new
    # best validation loss (0: never)

    def loss(self, model: nn.Module, *batch: torch.Tensor, generator: torch.Generator,
             kl_weight: float = 1.0) -> torch.Tensor:
        return training_loss(model, *batch, generator=generator, objective=self.objective, alpha=self.alpha,
                             iw_samples=self.iw_samples, kl_weight=kl_weight)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of an epoch (counted from 0): exponential decay, lr * lr_decay ** epoch."""
        return self.lr * self.lr_decay ** epoch

    def kl_weight_at(self, epoch: int, step: int, num_batches: int) -> float:
        """The KL warm-up (Bowman et al. 2016): beta = min(1, t / (kl_warmup * num_batches)) at step t counted
        from the start of training, a function of (epoch, step) alone, so a resumed run agrees."""
        if self.kl_warmup == 0:
            return 1.0
        return min(1.0, (epoch * num_batches + step) / (self.kl_warmup * num_batches))


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the training examples in an epoch: a fixed function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


def shard(batch: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, float]:
    """This process's contiguous share of a global batch of indices, and the weight of its mean loss.

    Shares differ by at most one example; weight = share * world / global, so the mean over processes of the
    weighted losses (what DistributedDataParallel does to their gradients) is the global batch's mean loss.
    A process left without examples (a last batch smaller than the world) gets one with weight 0, so
    that it still takes part in the gradient all-reduce. In one process: (batch, 1.0).
    """
    part = batch.tensor_split(world)[rank]
    if part.numel() == 0:
        return batch[:1], 0.0
    return part, part.numel() * world / batch.numel()


class _Loss(nn.Module):
    """``settings.loss(model, ...)`` as one module's forward: the loss calls several methods of the model,
    and DistributedDataParallel all-reduces the gradients of what a forward through it has used."""

    def __init__(self, model: nn.Module, settings: FitSettings) -> None:
        super().__init__()
        self.model, self.settings = model, settings

    def forward(self, *batch: torch.Tensor, generator: torch.Generator, kl_weight: float = 1.0) -> torch.Tensor:
        return self.settings.loss(self.model, *batch, generator=generator, kl_weight=kl_weight)


def distributed_loss(model: nn.Module, settings: FitSettings) -> DistributedDataParallel:
    """The training loss behind DistributedDataParallel, which all-reduces the gradients of the trainable
    parameters (not the CVAE's frozen baseline). The GSNN objective does not use the recognition net, whose
    parameters DDP must then be told to expect no gradient for (they stay None, as in one process)."""
    device = next(model.parameters()).device
    return DistributedDataParallel(
        _Loss(model, settings), device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,  # the only buffers are constant masks
        find_unused_parameters=isinstance(model, ConditionalVAE) and settings.objective == "gsnn")


@torch.no_grad()
def validation_loss(model: nn.Module, data: tuple[torch.Tensor, ...], settings: FitSettings) -> float:
    """Mean training loss over a dataset (x, y[, y_hat]), in eval mode and with fixed noise.

    Under torchrun each process takes a contiguous share of the examples and the sums are all-reduced, so
    every process gets the same value (and takes the same early-stopping decision).
    """
    model.eval()
    device, n = data[0].device, data[0].shape[0]
    rank, world = distributed.rank(), distributed.world_size()
    generator = torch.Generator(device).manual_seed(settings.seed + rank * NOISE_SEED_STRIDE)
    mine = [t.tensor_split(world)[rank] for t in data]
    total = torch.zeros((), device=device)
    for start in range(0, mine[0].shape[0], settings.batch_size):
        batch = [t[start:start + settings.batch_size] for t in mine]
        total += settings.loss(model, *batch, generator=generator) * batch[0].shape[0]
    return distributed.all_reduce_sum(total).item() / n


def _fresh_state(seed: int) -> dict:
    return {"epoch": 0, "step": 0, "best_val": math.inf, "bad_epochs": 0, "history": [],
            "finished": False, "partial_losses": torch.zeros(0), "seed": seed, "lr_scale": 1.0}


def train_loop(
    model: nn.Module,
    train: tuple[torch.Tensor, ...],
    val: tuple[torch.Tensor, ...],
    settings: FitSettings,
    best_path: Path | None,
    state_path: Path | None,
    stop: StopFlag | None = None,
    progress: bool = True,
    desc: str = "",
) -> list[dict]:
    """Train ``model`` on ``settings.loss`` (``objectives.training_loss``); return the per-epoch history.

    train, val: (x, y) tensors (N, x_dim), (N, y_dim) on the model's device, plus for a CVAE with a baseline
    the baseline's predictions y_hat (see ``objectives.training_loss``). The best weights (lowest validation
    loss) go to ``best_path``, or, without one, stay in memory and are loaded into the model at the end; the
    resumable state (weights, optimizer, epoch, step, early-stopping state, RNG state) goes to ``state_path``
    (when given) at each epoch end and when ``stop`` is requested. If ``state_path`` exists, training
    continues from it.
    """
    num_examples, device = train[0].shape[0], train[0].device
    rank, world = distributed.rank(), distributed.world_size()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=settings.lr, fused=device.type in FUSED_ADAM_DEVICES)
    noise = torch.Generator(device).manual_seed(settings.seed + rank * NOISE_SEED_STRIDE)

    state = _fresh_state(settings.seed)
    if state_path is not None and state_path.exists():
        state = _resume(state_path, model, optimizer, noise)
    if state["finished"]:
        return state["history"]
    loss_of = partial(settings.loss, model) if world == 1 else distributed_loss(model, settings)
    progress = progress and rank == 0

    def save_state(epoch: int, step: int, losses: torch.Tensor) -> None:
        state.update(epoch=epoch, step=step, partial_losses=losses.cpu(), model=model.state_dict(),
                     optimizer=optimizer.state_dict(), noise_rng=noise.get_state())
        if world > 1:  # every process's noise state, for an exact resumption with as many processes
            state["noise_rngs"] = distributed.gather_tensors(noise.get_state()).view(world, -1)
        if rank == 0 and state_path is not None:
            checkpoints.save(state, state_path)

    num_batches = math.ceil(num_examples / settings.batch_size)
    best_weights = None
    for epoch in range(state["epoch"], settings.epochs):
        started = time.perf_counter()
        first_step = state["step"] if epoch == state["epoch"] else 0
        order = epoch_order(num_examples, settings.seed, epoch).to(device)
        for group in optimizer.param_groups:  # a function of the epoch and the saved state, so a resumed run agrees
            group["lr"] = settings.lr_at(epoch) * state["lr_scale"]
        losses = torch.empty(num_batches, device=device)
        losses[:first_step] = state["partial_losses"].to(device)[:first_step]
        model.train()
        bar = tqdm(total=num_batches, initial=first_step, disable=None if progress else True, leave=False,
                   desc=f"{desc} epoch {epoch + 1}/{settings.epochs}")
        checked = first_step
        for step in range(first_step, num_batches):
            batch, weight = shard(order[step * settings.batch_size:(step + 1) * settings.batch_size], rank, world)
            kl_weight = settings.kl_weight_at(epoch, step, num_batches)
            loss = loss_of(*(t[batch] for t in train), generator=noise, kl_weight=kl_weight) * weight
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[step] = loss.detach()
            stopping = False
            if step + 1 - checked >= CHECK_EVERY or step + 1 == num_batches:
                if world > 1:  # the global batches' losses, and a stop request that reached any process
                    losses[checked:step + 1], stopping = _agree(losses[checked:step + 1], stop)
                _check_finite(losses, checked, step + 1, epoch, best_path)
                bar.update(step + 1 - checked)
                bar.set_postfix(loss=f"{losses[:step + 1].mean().item():.2f}")
                checked = step + 1
            if stopping or (world == 1 and stop is not None and stop.requested):
                _check_finite(losses, checked, step + 1, epoch, best_path)
                save_state(epoch, step + 1, losses[:step + 1])
                bar.close()
                raise TrainingInterrupted(f"{desc}: stopped at epoch {epoch + 1}, step {step + 1}")
        bar.close()

        train_loss = losses.mean().item()
        val_loss = validation_loss(model, val, settings)
        warming_up = epoch + 1 < settings.kl_warmup  # the KL weight is below 1 through this epoch's end
        improved = val_loss < state["best_val"] or warming_up  # patience counts from the end of the warm-up
        if improved:
            state["best_val"], state["bad_epochs"] = val_loss, 0
            if best_path is None:
                best_weights = {key: value.clone() for key, value in model.state_dict().items()}
            elif rank == 0:
                checkpoints.save(model.checkpoint(), best_path)
        else:
            state["bad_epochs"] += 1
            if settings.lr_halving and state["bad_epochs"] % settings.lr_halving == 0:
                state["lr_scale"] /= 2
        state["history"].append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                                 "seconds": time.perf_counter() - started})
        if rank == 0:
            tqdm.write(f"{desc} epoch {epoch + 1}: train {train_loss:.3f}  val {val_loss:.3f}"
                       + ("  (best)" if improved else ""), file=sys.stderr)
        state["finished"] = state["bad_epochs"] >= settings.patience or epoch + 1 == settings.epochs
        save_state(epoch + 1, 0, losses[:0])
        if state["finished"]:
            break
    distributed.barrier()  # rank 0 has written the best checkpoint before any process reads it
    if best_path is None and best_weights is not None:
        model.load_state_dict(best_weights)
    return state["history"]


def _agree(losses: torch.Tensor, stop: StopFlag | None) -> tuple[torch.Tensor, bool]:
    """One all-reduce at a check point: the global batches' mean losses (the mean over processes of their
    weighted losses) and whether any process was asked to stop, so that all check, report and stop alike."""
    flag = torch.tensor([float(stop is not None and stop.requested)], device=losses.device)
    reduced = distributed.all_reduce_mean(torch.cat([losses, flag]))
    return reduced[:-1], bool(reduced[-1] > 0)


def _resume(state_path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            noise: torch.Generator) -> dict:
    """Load a resumable state into model, optimizer and noise; CheckpointError if it does not fit them."""
    state = checkpoints.load(state_path)
    state.setdefault("lr_scale", 1.0)  # states written before the learning-rate halving existed
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if missing := sorted(set(_fresh_state(0)) - set(state)):
            raise KeyError(f"no {', '.join(missing)}")
        if not state["finished"]:  # a finished stage draws no more noise
            noise.set_state(_noise_state(state))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise checkpoints.CheckpointError(
            f"{state_path} is not a training state for this model and configuration "
            f"({checkpoints.describe(error)}). "
            f"Delete it to restart this stage from scratch, or resume the run that wrote it."
        ) from None
    return state


def _noise_state(state: dict) -> torch.Tensor:
    """This process's saved noise state; a state resumes only with as many processes as wrote it."""
    states = state.get("noise_rngs", state["noise_rng"].unsqueeze(0))
    if len(states) != distributed.world_size():
        raise ValueError(f"it was written by {len(states)} process(es), this run has {distributed.world_size()}")
    return states[distributed.rank()].clone()  # a tensor of its own: Generator.set_state misreads a row view


def _check_finite(losses: torch.Tensor, start: int, stop: int, epoch: int, best_path: Path | None) -> None:
    window = losses[start:stop]
    bad = (~torch.isfinite(window)).nonzero()
    if bad.numel():
        step = start + int(bad[0, 0])
        if best_path is None:
            kept = "the model holds the weights of that step"
        elif best_path.exists():
            kept = f"the last good checkpoint {best_path} is kept"
        else:
            kept = f"no checkpoint had been saved yet ({best_path} does not exist)"
        raise NonFiniteLoss(
            f"the training loss became {losses[step].item()} at epoch {epoch + 1}, step {step + 1}. "
            f"Training stopped; {kept}. Start a new run with a smaller learning rate (--lr), or "
            "check the data."
        )
