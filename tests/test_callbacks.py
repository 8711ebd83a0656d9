"""Callbacks (``cvae.callbacks``) in the one training loop: what fit calls and with which metrics, a stop request
that a resumed fit honours, the weights unchanged by callbacks, CSVLogger and TensorBoardLogger (read back with
TensorBoard's own reader; skipped without the optional extra), and train --tensorboard."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMALL_TRAIN as TRAIN
from conftest import SMALL_VAL as VAL
from conftest import TINY, invoke

from cvae import ConditionalVAE, Regressor, fit
from cvae.callbacks import Callback, CSVLogger, TensorBoardLogger
from cvae.distributions import kl_divergence
from cvae.paper import cli, commands
from cvae.settings import TrainingSettings
from cvae.training import EarlyStopping, validation_loss, validation_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


FAST = {"batch_size": 32, "lr": 0.01, "progress": False}


def small_model(seed: int = 0, **options) -> ConditionalVAE:
    torch.manual_seed(seed)
    return ConditionalVAE(3, 2, z_dim=2, hidden=(16,), **options)


class Recorder(Callback):
    """Every call, in order; on_epoch_end answers ``stop_at(epoch)``."""

    def __init__(self, stop_at=lambda epoch: False) -> None:
        self.calls: list[tuple] = []
        self.stop_at = stop_at

    def on_train_start(self, epoch):
        self.calls.append(("start", epoch))

    def on_epoch_end(self, epoch, metrics):
        self.calls.append(("epoch", epoch, metrics))
        return self.stop_at(epoch)

    def on_train_end(self, history):
        self.calls.append(("end", len(history)))


def without_seconds(history: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "seconds"} for row in history]


# ------------------------------------------------------------------------------------------------ the hooks
def test_callbacks_are_called_at_the_start_every_epoch_end_and_the_end_with_the_metrics():
    recorder, only_epochs = Recorder(), []

    class OnlyEpochs:  # any object with some of the methods
        def on_epoch_end(self, epoch, metrics):
            only_epochs.append(epoch)

    history = fit(small_model(), TRAIN, VAL, epochs=3, kl_warmup=2, callbacks=[recorder, OnlyEpochs()], **FAST)
    assert [call[:2] for call in recorder.calls] == [("start", 0), ("epoch", 1), ("epoch", 2), ("epoch", 3),
                                                     ("end", 3)]
    assert only_epochs == [1, 2, 3]
    for (_, epoch, metrics), row in zip(recorder.calls[1:4], history):
        assert set(metrics) == {"epoch", "train_loss", "val_loss", "seconds", "lr", "kl_weight", "val_kl"}
        assert {key: metrics[key] for key in row} == row and metrics["epoch"] == epoch
        assert metrics["lr"] == 0.01 and metrics["val_kl"] > 0
    # the KL warm-up over 2 epochs of 3 batches: the weight at each epoch's last step
    assert [call[2]["kl_weight"] for call in recorder.calls[1:4]] == [pytest.approx(2 / 6), pytest.approx(5 / 6), 1.0]


def test_a_regressor_s_metrics_have_no_kl():
    recorder = Recorder()
    torch.manual_seed(0)
    fit(Regressor(3, 2, hidden=(16,)), TRAIN, VAL, epochs=2, callbacks=[recorder], **FAST)
    assert [set(call[2]) for call in recorder.calls[1:3]] == [{"epoch", "train_loss", "val_loss", "seconds", "lr"}] * 2


def test_the_learning_rate_in_the_metrics_is_the_epoch_s_after_halving():
    recorder = Recorder()
    history = fit(small_model(), TRAIN, VAL, epochs=8, kl_warmup=0, lr_halving=1, patience=8, lr=0.2, batch_size=32,
                  progress=False, callbacks=[recorder])
    stopping, expected = EarlyStopping(8, 0, 1), []
    for epoch, row in enumerate(history):
        expected.append(0.2 * stopping.lr_scale)
        stopping.update(epoch, row["val_loss"])
    rates = [call[2]["lr"] for call in recorder.calls if call[0] == "epoch"]
    assert rates == expected and rates[-1] < 0.2  # halved after an epoch without a new best


@pytest.mark.parametrize("components", [1, 8], ids=["gaussian prior", "mixture prior"])
def test_callbacks_change_neither_the_weights_nor_the_history(components: int):
    """The validation KL that callbacks get draws from a generator of its own: the run is the same bit for bit."""
    plain, watched = small_model(prior_components=components), small_model(prior_components=components)
    history = fit(plain, TRAIN, VAL, epochs=3, **FAST)
    watched_history = fit(watched, TRAIN, VAL, epochs=3, callbacks=[Recorder()], **FAST)
    assert without_seconds(history) == without_seconds(watched_history)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), watched.state_dict().values()))


def test_the_validation_kl_is_the_mean_kl_term_and_leaves_the_validation_loss_alone():
    model, settings = small_model(prior_components=1), TrainingSettings(batch_size=10)
    loss, kl = validation_metrics(model, VAL, settings, kl=True)
    assert loss == validation_loss(model, VAL, settings)
    with torch.no_grad():
        expected = kl_divergence(model.posterior(*VAL), model.prior(VAL[0])).mean().item()
    assert kl == pytest.approx(expected, rel=1e-5)
    assert validation_metrics(model, VAL, settings)[1] is None
    torch.manual_seed(0)
    assert validation_metrics(Regressor(3, 2, hidden=(4,)), VAL, settings, kl=True)[1] is None


@pytest.mark.parametrize("callbacks, says", [
    (Recorder, "callbacks must be a list"),
    ([CSVLogger], "is the class CSVLogger, not a callback: give an instance"),
    ([object()], "has none of the methods on_train_start, on_epoch_end, on_train_end"),
])
def test_callbacks_that_are_not_callbacks_are_refused_before_training(callbacks, says: str):
    with pytest.raises(ValueError, match=says):
        fit(small_model(), TRAIN, VAL, epochs=1, callbacks=callbacks if callbacks is not Recorder else Recorder(),
            **FAST)


# ------------------------------------------------------------------------------------------------ stopping
def test_a_callback_stops_training_and_a_resumed_fit_does_not_go_past_it(tmp_path: Path):
    model, recorder = small_model(), Recorder(stop_at=lambda epoch: epoch == 2)
    history = fit(model, TRAIN, VAL, epochs=6, patience=6, checkpoint_dir=tmp_path, callbacks=[recorder], **FAST)
    assert [row["epoch"] for row in history] == [1, 2] and recorder.calls[-1] == ("end", 2)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["finished"] and state["epoch"] == 2
    weights = {key: value.clone() for key, value in model.state_dict().items()}

    again = Recorder()  # the same call again, without the stopping callback: nothing more is trained
    assert fit(model, TRAIN, VAL, epochs=6, patience=6, checkpoint_dir=tmp_path, callbacks=[again], **FAST) == history
    assert again.calls == [("start", 2), ("end", 2)]
    assert all(torch.equal(weights[key], value) for key, value in model.state_dict().items())


def test_without_a_checkpoint_dir_a_stopped_fit_keeps_the_best_weights():
    stopped = small_model()
    history = fit(stopped, TRAIN, VAL, epochs=6, patience=6, kl_warmup=0,
                  callbacks=[Recorder(stop_at=lambda epoch: epoch == 3)], **FAST)
    plain = small_model()
    assert without_seconds(fit(plain, TRAIN, VAL, epochs=3, patience=6, kl_warmup=0, **FAST)) == \
        without_seconds(history)
    assert all(torch.equal(a, b) for a, b in zip(stopped.state_dict().values(), plain.state_dict().values()))


# ------------------------------------------------------------------------------------------------ CSVLogger
def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


class Crash(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.at:
            raise KeyboardInterrupt  # after CSVLogger wrote the epoch's row, before the state is saved


def test_csv_logger_writes_one_row_per_epoch(tmp_path: Path):
    path = tmp_path / "logs" / "fit.csv"
    history = fit(small_model(), TRAIN, VAL, epochs=3, callbacks=[CSVLogger(path)], **FAST)
    rows = read_csv(path)
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "seconds", "lr", "kl_weight", "val_kl"]
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert [float(row["val_loss"]) for row in rows] == [row["val_loss"] for row in history]

    fit(small_model(), TRAIN, VAL, epochs=2, callbacks=[CSVLogger(path)], **FAST)  # a new fit starts it anew
    assert [int(row["epoch"]) for row in read_csv(path)] == [1, 2]


def test_csv_logger_appends_on_resume_without_repeating_an_epoch(tmp_path: Path):
    path = tmp_path / "fit.csv"
    with pytest.raises(KeyboardInterrupt):  # interrupted in epoch 3's end: its row is written, its state is not
        fit(small_model(), TRAIN, VAL, epochs=4, patience=6, checkpoint_dir=tmp_path / "ck",
            callbacks=[CSVLogger(path), Crash(at=3)], **FAST)
    assert [int(row["epoch"]) for row in read_csv(path)] == [1, 2, 3]
    history = fit(small_model(), TRAIN, VAL, epochs=4, patience=6, checkpoint_dir=tmp_path / "ck",
                  callbacks=[CSVLogger(path)], **FAST)
    rows = read_csv(path)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert [float(row["val_loss"]) for row in rows] == [row["val_loss"] for row in history]
    uninterrupted = tmp_path / "uninterrupted.csv"
    fit(small_model(), TRAIN, VAL, epochs=4, patience=6, callbacks=[CSVLogger(uninterrupted)], **FAST)
    assert [(row["val_loss"], row["val_kl"]) for row in read_csv(uninterrupted)] == \
        [(row["val_loss"], row["val_kl"]) for row in rows]


# ------------------------------------------------------------------------------------------------ TensorBoard
def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in log_dir's event files, as TensorBoard reads them: {tag: [(step, value), ...]}."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    reader = event_accumulator.EventAccumulator(str(log_dir))
    reader.Reload()
    return {tag: [(event.step, event.value) for event in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def test_tensorboard_logger_logs_every_metric_of_every_epoch(tmp_path: Path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path / "tb")
    history = fit(small_model(), TRAIN, VAL, epochs=3, callbacks=[logger], **FAST)
    logged = scalars(tmp_path / "tb")
    assert set(logged) == {"train_loss", "val_loss", "seconds", "lr", "kl_weight", "val_kl"}
    for key in ("train_loss", "val_loss"):
        assert [step for step, _ in logged[key]] == [1, 2, 3]
        assert [value for _, value in logged[key]] == pytest.approx([row[key] for row in history], rel=1e-6)
    assert [value for _, value in logged["lr"]] == pytest.approx([0.01] * 3)
    assert logger.writer is None  # closed at the end


def test_tensorboard_logger_shows_each_epoch_once_after_a_resume(tmp_path: Path):
    pytest.importorskip("tensorboard")
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), TRAIN, VAL, epochs=4, patience=6, checkpoint_dir=tmp_path / "ck",
            callbacks=[TensorBoardLogger(tmp_path / "tb"), Crash(at=3)], **FAST)
    history = fit(small_model(), TRAIN, VAL, epochs=4, patience=6, checkpoint_dir=tmp_path / "ck",
                  callbacks=[TensorBoardLogger(tmp_path / "tb", prefix="cvae/")], **FAST)
    logged = scalars(tmp_path / "tb")
    assert [step for step, _ in logged["cvae/val_loss"]] == [3, 4]  # the resumed run's epochs
    assert [step for step, _ in logged["val_loss"]] == [1, 2]  # epoch 3's first logging was purged
    assert [value for _, value in logged["val_loss"] + logged["cvae/val_loss"]] == \
        pytest.approx([row["val_loss"] for row in history], rel=1e-6)


def test_without_tensorboard_the_logger_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r'pip install "cvae-sohn\[tensorboard\]"'):
        TensorBoardLogger("tb")


def run_train(data_dir: Path, out: Path, *extra: str) -> tuple[int, str]:
    return invoke(commands.main, ["train", *TINY, "--epochs", "2", "--quadrants", "2", "--no-eval",
                                  "--data-dir", str(data_dir), "--out", str(out), *extra])


def test_train_tensorboard_logs_both_stages_and_trains_the_same_weights(mnist_dir: Path, tmp_path: Path):
    pytest.importorskip("tensorboard")
    status, err = run_train(mnist_dir, tmp_path / "logged", "--tensorboard")
    assert status == 0, err
    history = json.loads((tmp_path / "logged" / "q2" / "history.json").read_text())
    for stage in ("baseline", "cvae"):
        logged = scalars(tmp_path / "logged" / "q2" / "tensorboard" / stage)
        assert [value for _, value in logged["val_loss"]] == \
            pytest.approx([row["val_loss"] for row in history[stage]], rel=1e-6)
        assert ("val_kl" in logged) == (stage == "cvae")
    status, err = run_train(mnist_dir, tmp_path / "plain")
    assert status == 0, err
    assert not (tmp_path / "plain" / "q2" / "tensorboard").exists()
    for name in ("baseline.pt", "cvae.pt"):
        logged, plain = (torch.load(tmp_path / run / "q2" / name, weights_only=True)["state_dict"]
                         for run in ("logged", "plain"))
        assert all(torch.equal(logged[key], plain[key]) for key in plain), name


def test_train_tensorboard_without_the_extra_is_refused_before_anything_is_done(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    status, err = run_train(tmp_path / "data", tmp_path / "run", "--tensorboard")
    assert status == cli.EXIT_USAGE and 'pip install "cvae-sohn[tensorboard]"' in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()

