"""Under torchrun: 2 processes on CPU (gloo) against 1, one thread each, on a synthetic MNIST with 1100 test
images (3 evaluation blocks of 500, so that both processes evaluate some and the last share is short).

The runs are tiny: setting 2, 256 training images in global batches of 85 (shares of 43 and 42 images; the
last batch has 1 image, so process 1 gets none and takes part with a zero-weighted image), 2 epochs a stage.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, invoke, load_script, offline, wait_for, write_mnist

from cvae.paper import cli

pytestmark = pytest.mark.usefixtures("one_thread")
train_script, evaluate_script = load_script("train"), load_script("evaluate")
RUN = [*TINY, "--batch-size", "85", "--epochs", "2", "--patience", "5", "--quadrants", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    data_dir = tmp_path_factory.mktemp("mnist1100")
    return data_dir, write_mnist(data_dir, num_test=1100)


@pytest.fixture(scope="module")
def launcher(mnist: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A script that runs `launcher SCRIPT ARGS` as __main__ with the MD5 table patched and one thread (what
    conftest's script_command does, as a file, for torchrun to start)."""
    path = tmp_path_factory.mktemp("launcher") / "launch.py"
    path.write_text(f"import runpy, sys, torch; import cvae.paper.data; cvae.paper.data.MNIST_MD5 = {mnist[1]!r}\n"
                    "torch.set_num_threads(1)\n"
                    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')\n")
    return path


def torchrun(launcher: Path, script: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(launcher), str(ROOT / script), *args]


def run_torchrun(launcher: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(torchrun(launcher, script, *args), env=ENV, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def per_image(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "q2" / "per_image.pt", weights_only=True)


@pytest.fixture(scope="module")
def one_process(mnist: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir, md5s = mnist
    out = tmp_path_factory.mktemp("one") / "run"
    with offline(md5s):
        status, err = invoke(train_script.main, [*RUN, "--data-dir", str(data_dir), "--out", str(out)])
    assert status == 0, err
    return out


@pytest.fixture(scope="module")
def two_processes(mnist: tuple[Path, dict[str, str]], launcher: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 2-process run (trained and evaluated) and its stderr."""
    out = tmp_path_factory.mktemp("two") / "run"
    result = run_torchrun(launcher, "train.py", *RUN, "--data-dir", str(mnist[0]), "--out", str(out))
    return out, result.stderr


def test_two_processes_train_like_one(one_process: Path, two_processes: tuple[Path, str]) -> None:
    """Same seed and global batch: the baseline (whose loss has no noise) ends with the same weights and losses,
    to floating-point tolerance; the CVAE's processes draw their own noise, so it is only checked to train."""
    two, err = two_processes
    one_weights, two_weights = state_dict(one_process / "q2/baseline.pt"), state_dict(two / "q2/baseline.pt")
    for key in one_weights:
        torch.testing.assert_close(two_weights[key], one_weights[key], rtol=1e-5, atol=1e-6)
    one_history = json.loads((one_process / "q2/history.json").read_text())
    two_history = json.loads((two / "q2/history.json").read_text())
    for a, b in zip(one_history["baseline"], two_history["baseline"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    assert len(two_history["cvae"]) == 2 and two_history["cvae"][1]["val_loss"] < two_history["cvae"][0]["val_loss"]
    saved = json.loads((two / "config.json").read_text())
    assert saved["finished"] is True
    assert saved["distributed"] == {"world_size": 2, "global_batch_size": 85, "per_process_batch_size": 43,
                                    "lr": 1e-3}
    assert json.loads((one_process / "config.json").read_text())["distributed"]["world_size"] == 1
    assert err.count("q2 baseline epoch 1:") == 1  # rank 0 reports, the other process is quiet


def test_two_processes_evaluate_like_one(mnist: tuple[Path, dict[str, str]], launcher: Path, tmp_path: Path,
                                         two_processes: tuple[Path, str]) -> None:
    """The per-image values gathered from 2 processes (by train.py, and by evaluate.py with another S) are
    those of 1 process, and so is the table."""
    data_dir, md5s = mnist
    two, _ = two_processes
    for name in ("one", "one_s3", "two_s3"):
        shutil.copytree(two, tmp_path / name)
    evaluate = ["--device", "cpu", "--no-progress", "--data-dir", str(data_dir)]
    for name, extra in (("one", []), ("one_s3", ["--num-samples", "3"])):
        with offline(md5s):
            status, err = invoke(evaluate_script.main, [str(tmp_path / name), *evaluate, *extra])
        assert status == 0, err
    run_torchrun(launcher, "evaluate.py", str(tmp_path / "two_s3"), *evaluate, "--num-samples", "3")

    for a, b in ((two, tmp_path / "one"), (tmp_path / "two_s3", tmp_path / "one_s3")):
        one, gathered = per_image(b), per_image(a)
        assert gathered.keys() == one.keys() and gathered["nn"].shape == (1100,)
        for key in one:
            torch.testing.assert_close(gathered[key], one[key])
        assert (a / "results.md").read_text() == (b / "results.md").read_text()
    assert not torch.equal(per_image(tmp_path / "one")["cvae_is"], per_image(tmp_path / "one_s3")["cvae_is"])


def test_interrupted_two_process_run_resumes_exactly(mnist: tuple[Path, dict[str, str]], launcher: Path,
                                                     tmp_path: Path, two_processes: tuple[Path, str]) -> None:
    """Ctrl-C (SIGINT to torchrun's process group) after the first epoch: both processes stop at the same step,
    rank 0 saves every process's state; resuming with torchrun ends as the uninterrupted 2-process run."""
    out = tmp_path / "run"
    argv = torchrun(launcher, "train.py", *RUN, "--data-dir", str(mnist[0]), "--out", str(out))
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(out / "q2" / "baseline_state.pt", proc)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "interrupted" in err, err[-3000:]
    if "stopped at epoch" in err:  # the signal came during training, not the evaluation
        assert f"continue with: torchrun --nproc_per_node 2 train.py --resume {out}" in err, err[-3000:]
    run_torchrun(launcher, "train.py", "--device", "cpu", "--no-progress", "--resume", str(out))
    for name in ("baseline.pt", "cvae.pt"):
        one, other = state_dict(two_processes[0] / "q2" / name), state_dict(out / "q2" / name)
        assert all(torch.equal(one[key], other[key]) for key in one), name
    for key, values in per_image(two_processes[0]).items():
        assert torch.equal(values, per_image(out)[key]), key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fault, cause, timeout", [
    (signal.SIGKILL, "by peer", 60),  # gloo sees the closed connection at once
    (signal.SIGSTOP, "Timed out waiting", 8),  # only the process group's timeout ends the wait
], ids=["killed", "stuck"])
def test_a_dead_or_stuck_process_stops_the_other_with_a_clear_error(
        mnist: tuple[Path, dict[str, str]], launcher: Path, tmp_path: Path, fault: signal.Signals,
        cause: str, timeout: int) -> None:
    """Process 1 is killed (or stopped) during training: process 0 exits 1 with a message instead of waiting
    forever. The two processes get torchrun's environment by hand, so that what is tested is the process
    group's own behaviour, not torchrun's agent (which would also stop the survivor on one node, not on another)."""
    base = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2", "CVAE_DIST_TIMEOUT": str(timeout)}
    argv = [sys.executable, str(launcher), str(ROOT / "train.py"), *RUN, "--epochs", "500", "--patience", "500",
            "--no-eval", "--data-dir", str(mnist[0]), "--out", str(tmp_path / "run")]
    procs = [subprocess.Popen(argv, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        wait_for(tmp_path / "run" / "q2" / "baseline_state.pt", procs[0])
        os.kill(procs[1].pid, fault)
        started = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        waited = time.monotonic() - started
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.communicate()
    assert procs[0].returncode == cli.EXIT_FAILED, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("[rank 0] error: process 0 of 2 lost contact with the others") and cause in line, err
    assert f"did not answer within {timeout} s" in line and "Traceback" not in err
    assert waited < (timeout if fault == signal.SIGSTOP else 0) + 30
