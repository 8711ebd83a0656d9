"""``fit``: train a ConditionalVAE (or the deterministic ``Regressor`` baseline) on tensors, from Python.

    history = fit(model, train=(x_train, y_train), val=(x_val, y_val), epochs=50, objective="elbo")

Adam on minibatches, early stopping on the validation loss with the best weights kept (``cvae.training``). The
inputs are checked first (shapes, dtypes, finite values, the likelihood's support), and with a baseline its
predictions are computed once per example, since it is frozen.
"""

from __future__ import annotations

import atexit
import hashlib
import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed
from torch import nn

from . import checkpoints, devices, distributed, locks
from .callbacks import Callbacks
from .conditional_vae import ConditionalVAE
from .inputs import check_data
from .regressor import Regressor
from .settings import NAMES, TrainingSettings
from .training import train_loop


@torch.no_grad()
def predictions(baseline: nn.Module, x: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """A frozen baseline's prediction y_hat for a whole dataset, computed once, in blocks: (N, y_dim)."""
    baseline.eval()
    return torch.cat([baseline(part) for part in x.split(block)])


def fit(model: ConditionalVAE | Regressor, train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor], *, settings: TrainingSettings | None = None,
        checkpoint_dir: str | Path | None = None, progress: bool = True, callbacks: Sequence[object] | None = None,
        device: str | torch.device | None = None, **options: Any) -> list[dict]:
    """Train ``model`` in place; return the per-epoch history [{"epoch", "train_loss", "val_loss", "seconds"}].

    Every training setting (a field of ``cvae.settings.TrainingSettings``: its help says what each does) is a keyword
    argument here, listed with its default by ``help(fit)``. The defaults are the ``anti_collapse`` set (patience 6,
    kl_warmup 10, lr_halving 2, the rest the paper's); ``settings=TrainingSettings()`` starts from the paper's
    set-up instead, and keyword arguments override either.

    train, val: (x, y) with x (N, x_dim) and y (N, y_dim), float tensors (moved to the model's device and dtype);
    under a Categorical likelihood y holds integer class indices (moved to the device, kept integer).
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
    epoch); on a finished fit it trains nothing and returns its history.

    callbacks: objects with some of on_train_start(epoch), on_epoch_end(epoch, metrics) and on_train_end(history)
    (``cvae.callbacks``: CSVLogger, TensorBoardLogger); metrics hold the history's row, the learning rate and, for a
    ConditionalVAE, the KL weight and the validation KL. An on_epoch_end that returns True stops training after
    that epoch (a stop saved in checkpoint_dir's state: the same call again does not train past it).

    Under torchrun (``torchrun --nproc_per_node N script.py``, the script calling fit) fit joins the process
    group (gloo on the CPU, nccl with each process on the GPU of its LOCAL_RANK) and trains with
    DistributedDataParallel, each process computing its share of every batch (``batch_size`` is the global
    batch); rank 0 alone writes checkpoint_dir, prints and calls the callbacks. The result agrees with one
    process's up to the order of sums and, for a ConditionalVAE, the noise (each process draws its own).

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
    pairs = []
    for name, pair in (("train", train), ("val", val)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{name} must be a pair (x, y) of tensors, got {type(pair).__name__}")
        # floating tensors to the model's device and dtype; integer ones (a Categorical's class indices) to its
        # device only, keeping their dtype
        pair = [(t.to(parameter.device, parameter.dtype) if t.is_floating_point() else t.to(parameter.device))
                if isinstance(t, torch.Tensor) else t for t in pair]
        check_data(model, *pair, names=(f"{name}[0] (x)", f"{name}[1] (y)"))
        pairs.append(tuple(pair))
    train, val = pairs
    # Flush denormal floats to zero: Adam's moments of the weights of rarely active inputs (e.g. pixels that are
    # almost always 0) decay into denormals after a few epochs, and denormal arithmetic made CPU epochs 2x slower.
    # Torch's OpenMP threads take the setting only if it is made before they start, so the commands also set it
    # at their start; here it reaches at least the calling thread.
    torch.set_flush_denormal(True)
    if isinstance(model, ConditionalVAE) and model.baseline is not None:
        train, val = [(*pair, predictions(model.baseline, pair[0])) for pair in (train, val)]
    if checkpoint_dir is None:
        return train_loop(model, train, val, settings, None, None, progress=progress, desc=type(model).__name__,
                          callbacks=hooks.given)
    # the directory's state belongs to this training only: the same data, settings and model resume it
    owner = {"data": fingerprint(*train, *val), "settings": settings.to_dict(), "model": model.record()}
    best_path, state_path = Path(checkpoint_dir) / "best.pt", Path(checkpoint_dir) / "state.pt"
    with locks.hold(checkpoint_dir, create=True, command="fit"):  # one training per directory
        history = train_loop(model, train, val, settings, best_path, state_path, progress=progress,
                             desc=type(model).__name__, callbacks=hooks.given, owner=owner)
        model.load_state_dict(checkpoints.load(best_path, parameter.device)["state_dict"])
    return history


def fingerprint(*tensors: torch.Tensor) -> str:
    """A digest of the tensors' shapes, dtypes and values (BLAKE2b), which tells one dataset from another."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        digest.update(f"{tuple(tensor.shape)} {tensor.dtype};".encode())
        digest.update(tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
