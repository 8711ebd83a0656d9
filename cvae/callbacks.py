"""What the training loop calls as it goes: at the start, at the end of every epoch, at the end.

    from cvae.callbacks import CSVLogger, TensorBoardLogger

    class StopWhenKLVanishes:
        def on_epoch_end(self, epoch, metrics):
            return epoch > 10 and metrics["val_kl"] < 0.01   # True: stop after this epoch

    fit(model, train, val, callbacks=[CSVLogger("log.csv"), TensorBoardLogger("tb"), StopWhenKLVanishes()])

A callback is any object with some of these methods (each optional; ``Callback`` has all three doing nothing):

    on_train_start(epoch)         # before training; epoch: the epochs already done (0, or where a fit resumes)
    on_epoch_end(epoch, metrics)  # after each epoch (counted from 1); a true value stops training after it
    on_train_end(history)         # once training has ended (the epochs ran out, early stopping, or a stop request)

``metrics`` holds epoch, train_loss, val_loss and seconds (the row of fit's history), lr (the epoch's learning
rate), kl_weight (the KL term's weight at the epoch's last step: below 1 within the KL warm-up) and, for a
ConditionalVAE, val_kl: the mean KL(q(z|x,y) || p(z|x)) over the validation set, in nats per example (in closed form
for a Gaussian prior, on one draw of z ~ q per example for a mixture; near 0 when the latent is not used). Losses
are in nats per example.

A stop request is saved with the resumable state (``fit(checkpoint_dir=...)``): the same call again does not train
past it. An interrupted training does not call on_train_end; the resumed one calls on_train_start again. Under
torchrun the callbacks are called on rank 0 only; give every process the same callbacks (as a script that torchrun
starts does), because the validation KL is computed by all of them when any callback is given.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HOOKS = ("on_train_start", "on_epoch_end", "on_train_end")
TENSORBOARD_EXTRA = 'pip install "cvae-sohn[tensorboard]"'


class Callback:
    """A callback that does nothing: subclass it and override the methods you need (or write any object with some
    of them)."""

    def on_train_start(self, epoch: int) -> None:
        """Before training: ``epoch`` epochs are done already (0 unless a fit resumes from its checkpoint_dir)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> bool | None:
        """After epoch ``epoch`` (counted from 1); return True to stop training after it."""
        return None

    def on_train_end(self, history: list[dict]) -> None:
        """Once training has ended; ``history``: fit's per-epoch history."""


class Callbacks:
    """The callbacks of one training run, checked, and called on the main process only (``main``)."""

    def __init__(self, callbacks: Iterable[object] | None, main: bool = True) -> None:
        if callbacks is None:
            callbacks = ()
        if not isinstance(callbacks, (list, tuple)):
            raise ValueError(f"callbacks must be a list of callbacks (objects with some of {', '.join(HOOKS)}), "
                             f"got a {type(callbacks).__name__}; for one callback give [callback]")
        for index, callback in enumerate(callbacks):
            if isinstance(callback, type):
                raise ValueError(f"callbacks[{index}] is the class {callback.__name__}, not a callback: give an "
                                 f"instance, e.g. {callback.__name__}(...)")
            if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
                raise ValueError(f"callbacks[{index}] (a {type(callback).__name__}) has none of the methods "
                                 f"{', '.join(HOOKS)}")
        self.given = list(callbacks)
        self.main = main

    def __bool__(self) -> bool:
        """Whether any callback was given (on every process alike, also where they are not called)."""
        return bool(self.given)

    def _call(self, hook: str, *args: Any) -> list[Any]:
        if not self.main:
            return []
        return [getattr(callback, hook)(*args) for callback in self.given if callable(getattr(callback, hook, None))]

    def train_start(self, epoch: int) -> None:
        self._call("on_train_start", epoch)

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Call every callback's on_epoch_end (each with its own copy of metrics); whether any asked to stop."""
        if not self.main:
            return False
        answers = [callback.on_epoch_end(epoch, dict(metrics)) for callback in self.given
                   if callable(getattr(callback, "on_epoch_end", None))]
        return any(bool(answer) for answer in answers)

    def train_end(self, history: list[dict]) -> None:
        self._call("on_train_end", history)


class CSVLogger(Callback):
    """One row of metrics per epoch in a CSV file, written as each epoch ends (the header: the first epoch's
    metrics).

    A resumed fit appends to the file: on_train_start keeps the rows of the epochs already done and drops those
    after them (an epoch logged before an interruption that the resumed fit trains again), so no epoch has two
    rows. A fit that starts from scratch (epoch 0) therefore starts the file anew: give each fit its own file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fields: list[str] | None = None

    def _read(self) -> tuple[list[str] | None, list[dict[str, str]]]:
        if not self.path.is_file():
            return None, []
        with self.path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            return reader.fieldnames, list(reader)

    def on_train_start(self, epoch: int) -> None:
        fields, rows = self._read()
        kept = [row for row in rows if _epoch(row) is not None and _epoch(row) <= epoch]
        self._fields = list(fields) if fields and kept else None
        if self._fields is None:
            self.path.unlink(missing_ok=True)
        elif len(kept) != len(rows):
            self.path.write_text(_csv_text(self._fields, kept, header=True), encoding="utf-8")

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self._fields is None:  # the first row (or on_epoch_end without on_train_start): the file's header, if any
            self._fields = self._read()[0]
        header = self._fields is None
        if header:
            self._fields = list(metrics)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="", encoding="utf-8") as file:
            file.write(_csv_text(self._fields, [metrics], header))


def _epoch(row: dict[str, str]) -> int | None:
    try:
        return int(row.get("epoch") or "")
    except ValueError:
        return None


def _csv_text(fields: Sequence[str], rows: Sequence[dict], header: bool) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), restval="", extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class TensorBoardLogger(Callback):
    """Every metric as a TensorBoard scalar (tag: ``prefix`` + its name, e.g. val_loss; step: the epoch), with
    ``torch.utils.tensorboard``, written into ``log_dir`` as each epoch ends.

    TensorBoard is an optional extra: ``pip install "cvae-sohn[tensorboard]"`` (an ImportError saying so
    without it). The writer is opened when training starts, so that under torchrun only rank 0 writes; a resumed
    fit hides the events of the epochs it trains again (SummaryWriter's purge_step), so no epoch shows twice.
    """

    def __init__(self, log_dir: str | Path, prefix: str = "") -> None:
        self._summary_writer = summary_writer()
        self.log_dir, self.prefix = Path(log_dir), prefix
        self.writer = None

    def on_train_start(self, epoch: int) -> None:
        self.close()
        self.writer = self._summary_writer(str(self.log_dir), purge_step=epoch + 1)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            self.writer = self._summary_writer(str(self.log_dir))
        for name, value in metrics.items():
            if name != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(self.prefix + name, value, epoch)
        self.writer.flush()

    def on_train_end(self, history: list[dict]) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def summary_writer() -> type:
    """torch.utils.tensorboard's SummaryWriter; an ImportError naming the extra to install without TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(f"TensorBoard logging needs the tensorboard package, an optional extra of this library: "
                          f"{TENSORBOARD_EXTRA} (or pip install tensorboard). ({error})") from None
    return SummaryWriter
