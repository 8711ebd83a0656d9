"""``fit``: train a ConditionalVAE (or the deterministic ``Regressor`` baseline) on your data, from Python.

    history = fit(model, train=(x_train, y_train), val=(x_val, y_val), epochs=50, objective="elbo")

Adam on minibatches, early stopping on the validation loss with the best weights kept (``cvae.training``). The
data are tensors, numpy arrays, or a torch Dataset or DataLoader of (x, y) pairs read batch by batch
(``cvae.streams``). Tensors are checked first (shapes, dtypes, finite values, the likelihood's support), and with
a baseline its predictions are computed once per example, since it is frozen; a Dataset or DataLoader has its
first and last items checked first and every batch as it is read, and the baseline's predictions computed per
batch.
"""

from __future__ import annotations

import atexit
import inspect
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import checkpoints, devices, distributed, locks
from .callbacks import Callbacks
from .conditional_vae import ConditionalVAE
from .inputs import check_data, from_numpy
from .regressor import Regressor
from .settings import NAMES, TrainingSettings
from .streams import Stream, is_stream
from .streams import fingerprint as data_fingerprint
from .training import train_loop


@torch.no_grad()
def predictions(baseline: nn.Module, x: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """A frozen baseline's prediction y_hat for a whole dataset (or a batch of a stream), in blocks: (N, y_dim)."""
    baseline.eval()
    return torch.cat([baseline(part) for part in x.split(block)])


def fit(model: ConditionalVAE | Regressor, train: tuple[torch.Tensor, torch.Tensor] | Dataset | DataLoader,
        val: tuple[torch.Tensor, torch.Tensor] | Dataset | DataLoader, *, settings: TrainingSettings | None = None,
        checkpoint_dir: str | Path | None = None, progress: bool = True, callbacks: Sequence[object] | None = None,
        device: str | torch.device | None = None, **options: Any) -> list[dict]:
    """Train ``model`` in place; return the per-epoch history [{"epoch", "train_loss", "val_loss", "seconds"}].

    Every training setting (a field of ``cvae.settings.TrainingSettings``: its help says what each does) is a keyword
    argument here, listed with its default by ``help(fit)``. The defaults are the ``anti_collapse`` set (patience 6,
    kl_warmup 10, lr_halving 2, the rest the paper's); ``settings=TrainingSettings()`` starts from the paper's
    set-up instead, and keyword arguments override either.

    train, val: (x, y) with x (N, x_dim) and y (N, y_dim), float tensors (moved to the model's device and dtype);
    under a Categorical likelihood y holds integer class indices (moved to the device, kept integer). With shapes
    for x_dim and y_dim, x (N, *x_shape) and y (N, *y_shape). numpy arrays are taken as tensors (torch.from_numpy,
    no copy where it can share them).

    train and val may also be a torch Dataset of (x, y) pairs (x of shape x_shape, y of y_shape, tensors or numpy
    arrays) or a DataLoader of batches of them, read batch by batch and never whole (``cvae.streams``). From a
    Dataset, fit reads the batches the tensors would give: ``batch_size`` examples in the order of (seed, epoch)
    (``epoch_order``; validation in order), collated by torch's default collate, so that a run is reproducible and
    resumes within an epoch. A DataLoader is read as it is (its batch size, order, workers, pinned memory; its
    sampler's set_epoch(epoch) called where it has one); its order is its own, so with ``checkpoint_dir`` the state
    is saved at epoch ends only and an interrupted fit resumes from the end of the last whole epoch. Every batch is
    checked as tensors are, and a failure names the item's index in the Dataset (the batch and row of a
    DataLoader); the first and last items are checked before training.
    device: where to train: "auto" (cuda if available, else mps, else cpu), "cpu", "cuda", "cuda:N", "mps" or a
    torch.device; the model is moved there (in place) and the data with it. None: where the model is.
    precision (a training setting): "fp32", "bf16" (autocast; the losses stay float32) or "auto" (bf16 where the
    device multiplies it natively and fast, ``cvae.precision``).
    objective: for a ConditionalVAE, "elbo" (eq. 4), "gsnn" (eq. 9), "hybrid" (eq. 10, weight ``alpha`` on the
    ELBO) or "iwae" (the importance-weighted bound with ``iw_samples`` samples); a Regressor is trained on its
    exact log-likelihood. Losses are in nats per example. After training the model holds the weights of the
    epoch with the lowest validation loss after the KL warm-up (see below).

    Against a latent that the decoder learns to ignore (posterior collapse), the defaults warm the KL term up
    over ``kl_warmup`` epochs (its weight rising linearly from 0 to 1; Bowman et al. 2016) and, after the
    warm-up, halve the learning rate after every ``lr_halving`` epochs without a new best validation loss.
    The validation loss is the true objective (KL weight 1); early stopping (``patience``) counts from the end
    of the warm-up, whose epochs are not candidates for the best weights (the model is still changing what it
    uses z for) except its last, which stands until a later epoch does better. With ConditionalVAE's default
    mixture prior this reaches the true likelihood of examples/multimodal_regression.py; kl_warmup=0,
    lr_halving=0, patience=3 is the paper's plain training.

    With ``checkpoint_dir`` the best weights (best.pt) and a resumable state (state.pt, at each epoch end) are
    written there, and the same call again continues an interrupted fit from that state (it loses at most one
    epoch); on a finished fit it trains nothing and returns its history. The directory belongs to one training:
    its data (tensors: a digest of their values; a Dataset or DataLoader: of its kind, length, batching and first
    and last items, not a full pass), settings and model.

    callbacks: objects with some of on_train_start(epoch), on_epoch_end(epoch, metrics) and on_train_end(history)
    (``cvae.callbacks``: CSVLogger, TensorBoardLogger); metrics hold the history's row, the learning rate and, for a
    ConditionalVAE, the KL weight and the validation KL. An on_epoch_end that returns True stops training after
    that epoch (a stop saved in checkpoint_dir's state: the same call again does not train past it).

    Under torchrun (``torchrun --nproc_per_node N script.py``, the script calling fit) fit joins the process
    group (gloo on the CPU, nccl with each process on the GPU of its LOCAL_RANK) and trains with
    DistributedDataParallel, each process computing its share of every batch (``batch_size`` is the global
    batch); rank 0 alone writes checkpoint_dir, prints and calls the callbacks. The result agrees with one
    process's up to the order of sums and, for a ConditionalVAE, the noise (each process draws its own). A Dataset
    is shared out the same way (each process reads its share of every batch); a DataLoader for train needs a
    DistributedSampler (each process its own batches, as many on every process).

    Once the arguments are checked, denormal floats are flushed to zero for the rest of the process
    (``torch.set_flush_denormal(True)``).
    """
    if not isinstance(model, (ConditionalVAE, Regressor)):
        raise ValueError(f"model must be a ConditionalVAE or a Regressor, got a {type(model).__name__}")
    settings = _settings(model, settings, options)
    hooks = Callbacks(callbacks)  # checked before anything is done
    target = devices.resolve(device) if device is not None else next(model.parameters()).device
    if distributed.launched() and not torch.distributed.is_initialized():  # under torchrun: join the processes
        target = distributed.init_from_env(target)
        atexit.register(distributed.shutdown)  # leave the group when the script ends
    model.to(target)
    parameter = next(model.parameters())
    baseline = model.baseline if isinstance(model, ConditionalVAE) else None
    pairs = []
    for name, pair in (("train", train), ("val", val)):
        if is_stream(pair):  # read batch by batch: its first and last items checked now, every batch when read
            stream = Stream(pair, name, model, batch_size=settings.batch_size, seed=settings.seed,
                            extra=None if baseline is None else partial(predictions, baseline))
            stream.check_ends()
            pairs.append(stream)
            continue
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{name} must be a pair (x, y) of tensors (or numpy arrays), or a torch Dataset or "
                             f"DataLoader of (x, y) pairs, got {type(pair).__name__}")
        # floating tensors to the model's device and dtype; integer ones (a Categorical's class indices) to its
        # device only, keeping their dtype
        pair = [(t.to(parameter.device, parameter.dtype) if t.is_floating_point() else t.to(parameter.device))
                if isinstance(t, torch.Tensor) else t for t in map(from_numpy, pair)]
        check_data(model, *pair, names=(f"{name}[0] (x)", f"{name}[1] (y)"))
        pairs.append(tuple(pair))
    train, val = pairs
    # Flush denormal floats to zero: Adam's moments of the weights of rarely active inputs (e.g. pixels that are
    # almost always 0) decay into denormals after a few epochs, and denormal arithmetic made CPU epochs 2x slower.
    # Torch's OpenMP threads take the setting only if it is made before they start, so the commands also set it
    # at their start; here it reaches at least the calling thread.
    torch.set_flush_denormal(True)
    if baseline is not None:  # once per example of tensors (a stream's per batch, as it is read)
        train, val = [pair if isinstance(pair, Stream) else (*pair, predictions(baseline, pair[0]))
                      for pair in (train, val)]
    if checkpoint_dir is None:
        return train_loop(model, train, val, settings, None, None, progress=progress, desc=type(model).__name__,
                          callbacks=hooks.given)
    # the directory's state belongs to this training only: the same data, settings and model resume it
    owner = {"data": fingerprint(*_parts(train), *_parts(val)), "settings": settings.to_dict(),
             "model": model.record()}
    best_path, state_path = Path(checkpoint_dir) / "best.pt", Path(checkpoint_dir) / "state.pt"
    with locks.hold(checkpoint_dir, create=True, command="fit"):  # one training per directory
        history = train_loop(model, train, val, settings, best_path, state_path, progress=progress,
                             desc=type(model).__name__, callbacks=hooks.given, owner=owner)
        model.load_state_dict(checkpoints.load(best_path, parameter.device)["state_dict"])
    return history


def fingerprint(*data: torch.Tensor | Stream) -> str:
    """A digest of the data that tells one dataset from another (BLAKE2b): of tensors their shapes, dtypes and
    values; of a Dataset or DataLoader (a ``Stream``) its kind, length, batching and first and last items, which
    costs two reads, not a pass (``cvae.streams.fingerprint``)."""
    return data_fingerprint(*data)


def _parts(data: tuple[torch.Tensor, ...] | Stream) -> tuple:
    return (data,) if isinstance(data, Stream) else tuple(data)


def _settings(model: nn.Module, settings: TrainingSettings | None, options: dict[str, Any]) -> TrainingSettings:
    """fit's settings: ``settings`` (by default the anti_collapse set) with the keyword arguments over it, checked
    against the model: no KL term to warm up for a Regressor or the GSNN objective; the auxiliary loss needs an
    autoregressive term, free bits a Gaussian prior."""
    if settings is not None and not isinstance(settings, TrainingSettings):
        raise ValueError(f"settings must be a cvae.settings.TrainingSettings, got a {type(settings).__name__}")
    unknown = sorted(set(options) - set(NAMES))
    if unknown:
        raise ValueError(f"fit got an unknown argument {', '.join(map(repr, unknown))}; its training settings are "
                         f"{', '.join(NAMES)} (cvae.settings.TrainingSettings)")
    settings = (settings or TrainingSettings.named("anti_collapse")).replace(**options)
    if not isinstance(model, ConditionalVAE) or settings.objective == "gsnn":
        settings = settings.replace(kl_warmup=0)  # no KL term to warm up
    if settings.kl_warmup >= settings.epochs:
        warnings.warn(f"epochs={settings.epochs} ends within the KL warm-up (kl_warmup={settings.kl_warmup}): the "
                      "full ELBO is never trained, and the weights kept are the last epoch's. Give epochs above "
                      "kl_warmup, or a shorter kl_warmup (0: none).", UserWarning, stacklevel=3)
    half = next((p.dtype for p in model.parameters() if p.dtype in (torch.float16, torch.bfloat16)), None)
    if half is not None:
        raise ValueError(f"the model's parameters are {half}: Adam's updates (its eps of 1e-8, its second moments) "
                         "underflow or round away in half precision, and training diverges without a word. Keep the "
                         "model in float32 (model.float()) and train with precision='bf16' for speed.")
    if isinstance(model, ConditionalVAE):
        if settings.aux_weight and model.autoregression is None:
            raise ValueError("aux_weight needs a model with an autoregressive term (autoregression=...): without "
                             "one the auxiliary loss is the reconstruction term itself")
        if settings.free_bits and model.prior_components != 1:
            raise ValueError(f"free_bits needs a Gaussian prior p(z|x) (prior_components=1), the model has "
                             f"{model.prior_components} components")
    return settings


# help(fit) and editors show every training setting with fit's default
fit.__signature__ = inspect.signature(fit).replace(parameters=[
    *[p for p in inspect.signature(fit).parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD],
    *[inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=getattr(TrainingSettings.named("anti_collapse"),
                                                                              name)) for name in NAMES]])
