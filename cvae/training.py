"""One training loop for both models: Adam on minibatches, early stopping on the validation loss,
the best weights kept, and a resumable state saved at every epoch end and on interruption.

Its parts: ``train_step`` (one optimizer step on one batch), ``EarlyStopping`` (the decision after each epoch,
with the learning-rate halving), ``TrainingState`` (what is saved and resumed), ``Processes`` (what differs
under torchrun), and ``train_loop``, which puts them together and calls the user's callbacks
(``cvae.callbacks``) on the main process.

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import checkpoints, distributed
from .callbacks import Callbacks
from .conditional_vae import ConditionalVAE
from .distributions import DiagonalGaussian
from .objectives import latent_kl, training_loss
from .precision import autocast, resolve
from .settings import TrainingSettings
from .streams import Stream, TensorBatches, epoch_order, shard  # noqa: F401 (epoch_order: cvae.training's, as before)

CHECK_EVERY = 50  # steps between the (synchronizing) finiteness checks and progress-bar updates
FUSED_ADAM_DEVICES = ("cpu", "cuda")  # one fused kernel per step instead of one per parameter
NOISE_SEED_STRIDE = 1_000_003  # process r's noise generator starts from seed + r * stride (rank 0: the seed)
KL_SEED_OFFSET = 1  # the validation KL's draws (mixture priors): seed + 1 + r * stride, apart from the loss's noise


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


def batch_loss(settings: TrainingSettings, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *rest: torch.Tensor,
               generator: torch.Generator, kl_weight: float = 1.0) -> torch.Tensor:
    """``objectives.training_loss`` of a batch (x, y[, y_hat]) with these settings; with sample_targets, of
    (x, b[, y_hat]) with b ~ Bernoulli(y) drawn from ``generator`` (``binarized``)."""
    if settings.sample_targets:
        y = binarized(y, generator)
    return training_loss(model, x, y, *rest, generator=generator, objective=settings.objective, alpha=settings.alpha,
                         iw_samples=settings.iw_samples, kl_weight=kl_weight, free_bits=settings.free_bits,
                         aux_weight=settings.aux_weight)


def binarized(y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Dynamic binarization (Salakhutdinov & Murray 2008): b_i ~ Bernoulli(y_i), each gray level read as the
    probability that the pixel is on; b = [u < y] with u ~ U[0, 1). Trained on such draws, a model maximizes
    E_b log p(b|x), the true likelihood of binarized outputs that the evaluation reports (cvae.paper.true_likelihood).
    The validation loss draws from a generator seeded afresh at each epoch, so it sees the same b every epoch."""
    return (torch.rand(y.shape, generator=generator, device=y.device, dtype=y.dtype) < y).to(y.dtype)


def train_step(loss_fn: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer,
               batch: Sequence[torch.Tensor], generator: torch.Generator, kl_weight: float = 1.0,
               weight: float = 1.0, precision: str = "fp32") -> torch.Tensor:
    """One optimizer step on one batch; returns its loss, detached.

    loss = weight * loss_fn(*batch, generator=generator, kl_weight=kl_weight), whose forward runs under
    ``precision``'s autocast (``cvae.precision``); zero_grad, backward and the optimizer's step run outside it.
    loss_fn: ``batch_loss`` bound to settings and a model, or its DistributedDataParallel form
    (``Processes.loss_function``); weight: this process's share of the global batch (``shard``).
    """
    with autocast(precision, batch[0].device):
        loss = loss_fn(*batch, generator=generator, kl_weight=kl_weight)
        if weight != 1.0:  # x * 1.0 is x: one multiply and its backward fewer in one process
            loss = loss * weight
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@dataclass
class EarlyStopping:
    """Early stopping on the validation loss (``validation_loss``: the loss that is trained, KL weight 1), and the
    learning-rate halving.

    An epoch improves when its validation loss is below the best so far (``best_val``), or when it ends within
    the KL warm-up (epoch + 1 < kl_warmup, counting epochs from 0), so patience counts from the warm-up's end.
    ``bad_epochs`` counts the epochs since the last improvement; training stops when it reaches ``patience``,
    and each time it reaches a multiple of ``lr_halving`` (0: never) the learning rate's factor ``lr_scale``
    is halved.
    """

    patience: int
    kl_warmup: int = 0
    lr_halving: int = 0
    best_val: float = math.inf
    bad_epochs: int = 0
    lr_scale: float = 1.0

    def update(self, epoch: int, val_loss: float) -> bool:
        """Take an epoch's validation loss (the epoch counted from 0); return whether the epoch improved."""
        improved = val_loss < self.best_val or epoch + 1 < self.kl_warmup
        if improved:
            self.best_val, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
            if self.lr_halving and self.bad_epochs % self.lr_halving == 0:
                self.lr_scale /= 2
        return improved

    @property
    def stop(self) -> bool:
        """Whether ``patience`` epochs in a row went without improvement."""
        return self.bad_epochs >= self.patience


class _Loss(nn.Module):
    """``batch_loss(settings, model, ...)`` as one module's forward: the loss calls several methods of the model,
    and DistributedDataParallel all-reduces the gradients of what a forward through it has used."""

    def __init__(self, model: nn.Module, settings: TrainingSettings) -> None:
        super().__init__()
        self.model, self.settings = model, settings

    def forward(self, *batch: torch.Tensor, generator: torch.Generator, kl_weight: float = 1.0) -> torch.Tensor:
        return batch_loss(self.settings, self.model, *batch, generator=generator, kl_weight=kl_weight)


class Processes:
    """This process among the ``world`` processes of a torchrun job (``cvae.distributed``), and what training does
    across them. In a single process (rank 0 of a world of 1) every method leaves things as they are."""

    def __init__(self) -> None:
        self.rank, self.world = distributed.rank(), distributed.world_size()

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that writes files and prints."""
        return self.rank == 0

    def noise(self, device: torch.device, seed: int) -> torch.Generator:
        """This process's noise generator, seeded with seed + rank * NOISE_SEED_STRIDE (rank 0: the seed)."""
        return torch.Generator(device).manual_seed(seed + self.rank * NOISE_SEED_STRIDE)

    def shard(self, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This process's share of a global batch of indices, and its loss's weight (see ``shard``)."""
        return (batch, 1.0) if self.world == 1 else shard(batch, self.rank, self.world)

    def share(self, data: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """This process's contiguous share of the examples of every tensor of a dataset."""
        return [t.tensor_split(self.world)[self.rank] for t in data]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the processes."""
        return distributed.all_reduce_sum(tensor)

    def loss_function(self, model: nn.Module, settings: TrainingSettings) -> Callable[..., torch.Tensor]:
        """``batch_loss`` bound to ``settings`` and ``model``; under torchrun behind DistributedDataParallel, which
        all-reduces the gradients of the trainable parameters (not the CVAE's frozen baseline). The GSNN objective
        does not use the recognition net, whose parameters DDP must then be told to expect no gradient for (they
        stay None, as in one process)."""
        if self.world == 1:
            return partial(batch_loss, settings, model)
        device = next(model.parameters()).device
        return DistributedDataParallel(
            _Loss(model, settings), device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False,  # the only buffers are constant masks
            find_unused_parameters=isinstance(model, ConditionalVAE) and settings.objective == "gsnn")

    def stop_now(self, stop: StopFlag) -> bool:
        """Whether to honour a stop request at this step: in one process as soon as it is made; several processes
        stop together, at a check point (``agree``)."""
        return self.world == 1 and stop.requested

    def agree(self, losses: torch.Tensor, stop: StopFlag) -> tuple[torch.Tensor, bool]:
        """The global batches' mean losses (the mean over processes of their weighted losses) and whether any
        process was asked to stop, in one all-reduce, so that all check, report and stop alike."""
        if self.world == 1:
            return losses, stop.requested
        flag = torch.tensor([float(stop.requested)], device=losses.device)
        reduced = distributed.all_reduce_mean(torch.cat([losses, flag]))
        return reduced[:-1], bool(reduced[-1] > 0)

    def noise_states(self, noise: torch.Generator) -> torch.Tensor | None:
        """Every process's noise state, one row per rank (None in one process)."""
        if self.world == 1:
            return None
        return distributed.gather_tensors(noise.get_state()).view(self.world, -1)

    def own_noise_state(self, saved: dict) -> torch.Tensor:
        """This process's noise state in a saved training state, which resumes only with as many processes as
        wrote it."""
        states = saved.get("noise_rngs", saved["noise_rng"].unsqueeze(0))
        if len(states) != self.world:
            raise ValueError(f"it was written by {len(states)} process(es), this run has {self.world}")
        return states[self.rank].clone()  # a tensor of its own: Generator.set_state misreads a row view

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (e.g. a stop request of rank 0's callbacks), on every process."""
        return distributed.any_process(flag)

    def barrier(self) -> None:
        """Wait until every process is here."""
        distributed.barrier()


@torch.no_grad()
def validation_loss(model: nn.Module, data: tuple[torch.Tensor, ...] | Stream, settings: TrainingSettings) -> float:
    """Mean training loss over a dataset (x, y[, y_hat]), in eval mode, with fixed noise, and with the forward
    in ``settings.precision`` (resolved for the device, ``cvae.precision.resolve``).

    Under torchrun each process takes a contiguous share of the examples and the sums are all-reduced, so
    every process gets the same value (and takes the same early-stopping decision). data may also be a Dataset or
    DataLoader read batch by batch (``cvae.streams.Stream``): a Dataset in the same batches as tensors, a
    DataLoader in its own.
    """
    return validation_metrics(model, data, settings)[0]


@torch.no_grad()
def validation_metrics(model: nn.Module, data: tuple[torch.Tensor, ...] | Stream, settings: TrainingSettings,
                       kl: bool = False) -> tuple[float, float | None]:
    """``validation_loss``, and with ``kl`` (for a ConditionalVAE) the mean KL(q(z|x,y) || p(z|x)) over the same
    examples (``validation_kl``; None otherwise). The KL's draws (a mixture prior's) come from a generator of their
    own, so the loss is the same with or without it."""
    model.eval()
    processes = Processes()
    if isinstance(data, Stream):
        device, n = data.device, None
        batches = data.sequential(settings.batch_size, (processes.rank, processes.world))
    else:
        device, n = data[0].device, data[0].shape[0]
        mine = processes.share(data)
        batches = ([t[start:start + settings.batch_size] for t in mine]
                   for start in range(0, mine[0].shape[0], settings.batch_size))
    generator = processes.noise(device, settings.seed)
    arithmetic = resolve(settings.precision, device)
    total = torch.zeros((), device=device)
    kl = kl and isinstance(model, ConditionalVAE)
    if kl:
        kl_generator = processes.noise(device, settings.seed + KL_SEED_OFFSET)
        kl_total = torch.zeros((), device=device)
    count = 0
    for batch in batches:
        with autocast(arithmetic, device):
            total += batch_loss(settings, model, *batch, generator=generator) * batch[0].shape[0]
            if kl:
                kl_total += validation_kl(settings, model, *batch, generator=kl_generator).sum()
        count += batch[0].shape[0]
    if n is None:  # a stream's examples: a Dataset's length, or what the DataLoaders gave
        n = data.size if data.loader is None else int(processes.sum(torch.tensor(float(count), device=device)).item())
    if not kl:
        return processes.sum(total).item() / n, None
    loss, kl_sum = processes.sum(torch.stack([total, kl_total])).tolist()
    return loss / n, kl_sum / n


def validation_kl(settings: TrainingSettings, model: ConditionalVAE, x: torch.Tensor, y: torch.Tensor,
                  *rest: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """KL(q(z|x,y) || p(z|x)) of each example of a batch (x, y[, y_hat]), (N,): in closed form for a Gaussian prior,
    on one draw z ~ q(z|x,y) from ``generator`` for a mixture (``objectives.latent_kl``); with sample_targets q
    sees b ~ Bernoulli(y), drawn from ``generator``, as in training."""
    if settings.sample_targets:
        y = binarized(y, generator)
    context = model.context(x, rest[0] if rest else None)
    posterior, prior = model.posterior(x, y), model.prior(x, context)
    z = None if isinstance(prior, DiagonalGaussian) else posterior.rsample((1,), generator=generator)
    return latent_kl(posterior, prior, z).mean(0)


@dataclass
class TrainingState:
    """Where a training run stands: what an interrupted run needs to go on as if it had never stopped.

    The position (``epoch`` and ``step`` within it, counted from 0, and the losses of that epoch's steps so far),
    the early-stopping state, the per-epoch history and whether training has finished. It is saved, with the
    model's, the optimizer's and the noise generator's states, as one flat dict (``checkpoints.save``) whose keys
    are those of ``REQUIRED`` plus lr_scale, model, optimizer, noise_rng and, under torchrun, noise_rngs. With an
    ``owner`` (what the training is: ``fit`` records its data's fingerprint, its settings and the model's record),
    the state is resumed only by the same training.
    """

    REQUIRED = ("epoch", "step", "best_val", "bad_epochs", "history", "finished", "partial_losses", "seed")

    seed: int
    early_stopping: EarlyStopping
    owner: dict | None = None  # what the state belongs to (fit: the data, the settings, the model), checked on resume
    epoch: int = 0
    step: int = 0
    partial_losses: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    history: list[dict] = field(default_factory=list)
    finished: bool = False

    def save(self, path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, noise: torch.Generator,
             processes: Processes) -> None:
        """Write the state to ``path`` (rank 0, when a path is given); every process must take part."""
        stopping = self.early_stopping
        state = {"epoch": self.epoch, "step": self.step, "best_val": stopping.best_val,
                 "bad_epochs": stopping.bad_epochs, "history": self.history, "finished": self.finished,
                 "partial_losses": self.partial_losses, "seed": self.seed, "lr_scale": stopping.lr_scale,
                 "model": model.state_dict(), "optimizer": optimizer.state_dict(), "noise_rng": noise.get_state()}
        if self.owner is not None:
            state["owner"] = self.owner
        if (noise_states := processes.noise_states(noise)) is not None:  # for an exact resumption under torchrun
            state["noise_rngs"] = noise_states
        if processes.is_main and path is not None:
            checkpoints.save(state, path)

    def resume(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, noise: torch.Generator,
               processes: Processes) -> None:
        """Continue from the state saved at ``path``: load it into this state, the model, the optimizer and the
        noise generator; CheckpointError if it does not fit them."""
        saved = checkpoints.load(path)
        if self.owner is not None and saved.get("owner") != self.owner:
            difference = _difference(saved.get("owner"), self.owner)
            raise checkpoints.CheckpointError(
                f"{path} is the state of another training: {difference}. Its directory belongs to that training: "
                f"give this one a directory of its own, or delete {path.parent} to start afresh there.")
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if missing := sorted(set(self.REQUIRED) - set(saved)):
                raise KeyError(f"no {', '.join(missing)}")
            if not saved["finished"]:  # a finished stage draws no more noise
                noise.set_state(processes.own_noise_state(saved))
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise checkpoints.CheckpointError(
                f"{path} is not a training state for this model and configuration "
                f"({checkpoints.describe(error)}). "
                f"Delete it to restart this stage from scratch, or resume the run that wrote it."
            ) from None
        self.epoch, self.step, self.partial_losses = saved["epoch"], saved["step"], saved["partial_losses"]
        self.history, self.finished, self.seed = saved["history"], saved["finished"], saved["seed"]
        stopping = self.early_stopping
        stopping.best_val, stopping.bad_epochs = saved["best_val"], saved["bad_epochs"]
        stopping.lr_scale = saved.get("lr_scale", 1.0)  # states written before the learning-rate halving existed


def train_loop(
    model: nn.Module,
    train: tuple[torch.Tensor, ...] | Stream,
    val: tuple[torch.Tensor, ...] | Stream,
    settings: TrainingSettings,
    best_path: Path | None,
    state_path: Path | None,
    stop: StopFlag | None = None,
    progress: bool = True,
    desc: str = "",
    callbacks: Sequence[object] | None = None,
    owner: dict | None = None,
) -> list[dict]:
    """Train ``model`` on ``batch_loss`` (``objectives.training_loss``); return the per-epoch history.

    train, val: (x, y) tensors (N, x_dim), (N, y_dim) on the model's device, plus for a CVAE with a baseline
    the baseline's predictions y_hat (see ``objectives.training_loss``); or a Dataset or DataLoader read batch by
    batch (``cvae.streams.Stream``, which ``fit`` makes). The batches of an epoch come from ``TensorBatches`` (the
    tensors) or the Stream; a DataLoader's epochs resume from their start only: its state is saved at epoch ends,
    and a stop request within an epoch leaves the state of the last epoch end. The best weights (lowest validation
    loss) go to ``best_path``, or, without one, stay in memory and are loaded into the model at the end; the
    resumable state (weights, optimizer, epoch, step, early-stopping state, RNG state) goes to ``state_path``
    (when given) at each epoch end and when ``stop`` is requested. If ``state_path`` exists, training
    continues from it.

    callbacks: objects with some of on_train_start, on_epoch_end and on_train_end (``cvae.callbacks``), called
    on the main process; an on_epoch_end that returns a true value stops training after that epoch, and the
    stop is saved with the state (as finished). Without callbacks nothing more is computed.

    owner: what this training is (``TrainingState.owner``); a state at ``state_path`` of another is refused. A
    validation loss that is not finite stops training (NonFiniteLoss) with the best weights in the model.
    """
    source = train if isinstance(train, Stream) else TensorBatches(train, settings.batch_size, settings.seed)
    device = source.device
    processes = Processes()
    if isinstance(source, Stream):
        source.check_processes(processes)
    stop = stop if stop is not None else StopFlag()  # one that is never requested
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=settings.lr, weight_decay=settings.weight_decay,
                                 fused=device.type in FUSED_ADAM_DEVICES)
    noise = processes.noise(device, settings.seed)
    arithmetic = resolve(settings.precision, device)
    state = TrainingState(settings.seed, EarlyStopping(settings.patience, settings.kl_warmup, settings.lr_halving),
                          owner)
    hooks = Callbacks(callbacks, processes.is_main)
    if state_path is not None and state_path.exists():
        state.resume(state_path, model, optimizer, noise, processes)
        if state.step and not source.resumes_mid_epoch:
            raise checkpoints.CheckpointError(
                f"{state_path} is the state of a training stopped within epoch {state.epoch + 1}, which a DataLoader "
                "(whose order is its own) cannot resume: resume it with the data it was trained on, or delete "
                f"{state_path.parent} to start afresh")
    hooks.train_start(state.epoch)
    if state.finished:
        hooks.train_end(state.history)
        return state.history
    loss_fn = processes.loss_function(model, settings)
    progress = progress and processes.is_main

    def save_state(epoch: int, step: int, losses: torch.Tensor) -> None:
        state.epoch, state.step, state.partial_losses = epoch, step, losses.cpu()
        state.save(state_path, model, optimizer, noise, processes)

    num_batches = source.num_batches
    best_weights = None
    for epoch in range(state.epoch, settings.epochs):  # each epoch starts at state.step (0 unless resumed)
        started = time.perf_counter()
        for group in optimizer.param_groups:  # a function of the epoch and the saved state, so a resumed run agrees
            group["lr"] = settings.lr_at(epoch) * state.early_stopping.lr_scale
        batches = source.epoch(epoch, state.step, processes)
        losses = torch.empty(num_batches, device=device)
        losses[:state.step] = state.partial_losses.to(device)[:state.step]
        model.train()
        bar = tqdm(total=num_batches, initial=state.step, disable=None if progress else True, leave=False,
                   desc=f"{desc} epoch {epoch + 1}/{settings.epochs}")
        checked = state.step
        for step, (batch, weight) in enumerate(batches, start=state.step):
            losses[step] = train_step(loss_fn, optimizer, batch, noise,
                                      settings.kl_weight_at(epoch, step, num_batches), weight, arithmetic)
            if step + 1 - checked >= CHECK_EVERY or step + 1 == num_batches or processes.stop_now(stop):
                # a check point: agree across processes, check finiteness, show progress, honour a stop request
                losses[checked:step + 1], stopping = processes.agree(losses[checked:step + 1], stop)
                _check_finite(losses, checked, step + 1, epoch, best_path)
                bar.update(step + 1 - checked)
                bar.set_postfix(loss=f"{losses[:step + 1].mean().item():.2f}")
                checked = step + 1
                if stopping:
                    bar.close()
                    if not source.resumes_mid_epoch:  # the state of the last epoch end stays
                        raise TrainingInterrupted(f"{desc}: stopped at epoch {epoch + 1}, step {step + 1}; with a "
                                                  f"DataLoader the saved state is that of the end of epoch {epoch} "
                                                  "(resuming trains this epoch again from its start)")
                    save_state(epoch, step + 1, losses[:step + 1])
                    raise TrainingInterrupted(f"{desc}: stopped at epoch {epoch + 1}, step {step + 1}")
        bar.close()

        train_loss = losses.mean().item()
        if hooks:  # with the validation KL for the callbacks' metrics
            val_loss, val_kl = validation_metrics(model, val, settings, kl=True)
        else:
            val_loss, val_kl = validation_loss(model, val, settings), None
        if not math.isfinite(val_loss):  # no weights of this epoch may become the best
            kept = _keep_best(model, best_weights, best_path, processes)
            raise NonFiniteLoss(f"{desc}: the validation loss became {val_loss} at epoch {epoch + 1}. Training "
                                f"stopped; {kept}. Train again with a smaller learning rate (lr), or check the data.")
        improved = state.early_stopping.update(epoch, val_loss)
        if improved:
            if best_path is None:
                best_weights = {key: value.clone() for key, value in model.state_dict().items()}
            elif processes.is_main:
                checkpoints.save(model.checkpoint(), best_path)
        state.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                              "seconds": time.perf_counter() - started})
        if processes.is_main:
            tqdm.write(f"{desc} epoch {epoch + 1}: train {train_loss:.3f}  val {val_loss:.3f}"
                       + ("  (best)" if improved else ""), file=sys.stderr)
        requested = False
        if hooks:  # rank 0's callbacks may ask to stop: every process stops
            metrics = {**state.history[-1], "lr": optimizer.param_groups[0]["lr"]}
            if val_kl is not None:  # a ConditionalVAE's
                metrics |= {"kl_weight": settings.kl_weight_at(epoch, num_batches - 1, num_batches), "val_kl": val_kl}
            requested = processes.any(hooks.epoch_end(epoch + 1, metrics))
        state.finished = state.early_stopping.stop or epoch + 1 == settings.epochs or requested
        save_state(epoch + 1, 0, losses[:0])
        if state.finished:
            break
    processes.barrier()  # rank 0 has written the best checkpoint before any process reads it
    if best_weights is not None:
        model.load_state_dict(best_weights)
    hooks.train_end(state.history)
    return state.history


def _keep_best(model: nn.Module, best_weights: dict | None, best_path: Path | None, processes: Processes) -> str:
    """Load the best weights so far into the model, where there are any; say what the model holds."""
    processes.barrier()
    if best_weights is not None:
        model.load_state_dict(best_weights)
    elif best_path is not None and best_path.exists():
        model.load_state_dict(checkpoints.load(best_path, next(model.parameters()).device)["state_dict"])
    else:
        return "no epoch had a finite validation loss, so the model holds that epoch's weights"
    return "the model holds the weights of the best epoch before it"


def _difference(saved: object, expected: dict) -> str:
    """What differs between the owner a state records and this training's, in a few words."""
    if not isinstance(saved, dict):
        return "it records no owner (an earlier version wrote it, or another program)"
    parts = []
    for key, what in (("data", "its data differ"), ("model", "its model differs"), ("settings", "")):
        if saved.get(key) == expected.get(key):
            continue
        if key == "settings" and isinstance(saved.get(key), dict):
            changed = [f"{name} {saved[key].get(name)!r} (now {value!r})" for name, value in expected[key].items()
                       if saved[key].get(name) != value]
            parts.append("its settings differ: " + ", ".join(changed))
        else:
            parts.append(what or "its settings differ")
    return "; ".join(parts) or "it records another owner"


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
