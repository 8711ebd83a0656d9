"""Jobs and their run directories: one job per directory (an exclusive lock, released on any exit), numbers with
an upper bound checked before any work, a failed allocation that says what to lower, a run that failed before
its first checkpoint that does not block a retry, an interrupted evaluation that advises a command that works,
and a --out that is a broken symbolic link.

The runs are tiny (conftest's TINY options); the processes that must be real (signals, two jobs at once, the
two processes of a torchrun job) are started with conftest's `script_command` or by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, command_module, invoke, load_script, snapshot, unchanged, wait_for

import cvae.paper.experiment
import cvae.training
from cvae.paper import cli
from cvae.paper.config import RunConfig
from cvae.paper.models import CVAE, BaselineNet

pytestmark = pytest.mark.usefixtures("one_thread")
train_script, evaluate_script = load_script("train"), load_script("evaluate")
convergence_script, control_script = command_module("convergence"), command_module("autoregressive_baseline")
RUN = [*TINY, "--epochs", "1", "--patience", "5", "--quadrants", "2"]
EVALUATE = ["--device", "cpu", "--no-progress"]
LOCK = ".cvae.lock"


def last_line(err: str) -> str:
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


# ----------------------------------------------------------------------------- 1. one job per run directory
def test_two_jobs_on_one_run_directory(mnist_dir: Path, tmp_path: Path, script_command) -> None:
    """While train.py trains into a directory, a second train.py (--overwrite or --resume) and evaluate.py on
    it exit 2 naming the directory and the first job's process, and change nothing; the lock goes with the job."""
    out = tmp_path / "run"
    argv = [*TINY, "--epochs", "40", "--patience", "40", "--quadrants", "2", "--no-eval", "--data-dir", str(mnist_dir)]
    first = subprocess.Popen([*script_command("train.py"), *argv, "--out", str(out)], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(out / "q2" / "baseline_state.pt", first)
        first.send_signal(signal.SIGSTOP)  # a stable directory to compare, and a job that surely still holds it
        before = snapshot(out)
        for script, extra in [("evaluate.py", [str(out), *EVALUATE]),
                              ("train.py", ["--resume", str(out), *EVALUATE]),
                              ("train.py", [*argv, "--seed", "7", "--out", str(out), "--overwrite"])]:
            second = subprocess.run([*script_command(script), *extra], cwd=tmp_path, capture_output=True, text=True,
                                    timeout=120)
            assert second.returncode == cli.EXIT_USAGE, (script, second.stderr)
            line = last_line(second.stderr)
            assert line.startswith(f"error: {out} is in use by another job") and f"process {first.pid}" in line
            assert "train.py" in line and "did nothing" in line
        assert snapshot(out) == before
        first.send_signal(signal.SIGCONT)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
    assert first.returncode == cli.EXIT_INTERRUPTED, err
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 0
    assert not (out / LOCK).exists()  # the job's lock file went with it
    status, err = invoke(evaluate_script.main, [str(out), *EVALUATE, "--data-dir", str(mnist_dir)])
    assert status == cli.EXIT_USAGE and "has not finished training" in err  # free again: the next check speaks


def test_every_script_refuses_a_run_directory_in_use(mnist_dir: Path, tmp_path: Path, finished_run: Path) -> None:
    from cvae.paper import run_lock

    run = copy_run(finished_run, tmp_path)
    data = ["--data-dir", str(mnist_dir)]
    calls = [
        (train_script.main, ["--resume", str(run), *EVALUATE, *data]),
        (train_script.main, [*RUN, *data, "--out", str(run), "--overwrite"]),
        (evaluate_script.main, [str(run), *EVALUATE, *data]),
        (convergence_script.main, [str(run), "--samples", "1", "--test-subset", "5", "--device", "cpu", *data]),
    ]
    with run_lock.hold(run, command="a test"), unchanged(run):
        for main, argv in calls:
            status, err = invoke(main, argv)
            assert status == cli.EXIT_USAGE, err
            line = last_line(err)
            assert line.startswith(f"error: {run} is in use by another job (process {os.getpid()}, a test)"), line
    control = tmp_path / "control"
    with run_lock.hold(control, create=True):
        status, err = invoke(control_script.main, ["--quadrants", "3", "--epochs", "1", *data, *EVALUATE,
                                                   "--out", str(control)])
        assert status == cli.EXIT_USAGE and f"{control} is in use by another job" in last_line(err)
        assert os.listdir(control) == [LOCK]
    assert not control.exists()  # the directory the lock created, and nothing else, went with it


def test_the_lock_of_a_killed_job_is_free(mnist_dir: Path, tmp_path: Path, finished_run: Path) -> None:
    """kill -9 cannot release anything itself: the kernel drops the flock with the process, and the lock file
    it leaves behind is not "another file" in a fresh directory."""
    run = copy_run(finished_run, tmp_path)
    code = ("import sys, time; from pathlib import Path; from cvae.paper import run_lock\n"
            "with run_lock.hold(Path(sys.argv[1]), command='holder'):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline() == "held\n"
        status, err = invoke(evaluate_script.main, [str(run), *EVALUATE, "--data-dir", str(mnist_dir)])
        assert status == cli.EXIT_USAGE and f"process {holder.pid}, holder" in err, err
    finally:
        holder.kill()
        holder.wait()
    assert (run / LOCK).exists()  # left behind by kill -9
    (run / "q2" / ".per_image.pt.tmp999999999").write_bytes(b"half a file")  # and what a killed write leaves
    status, err = invoke(evaluate_script.main, [str(run), *EVALUATE, "--data-dir", str(mnist_dir)])
    assert status == 0, err
    assert not (run / LOCK).exists() and not (run / "q2" / ".per_image.pt.tmp999999999").exists()
    assert "removed 1 temporary file(s) that a killed job left" in err

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / LOCK).write_text('{"pid": 999999999}\n')  # what a job killed before writing anything leaves
    status, err = invoke(train_script.main, [*RUN, "--no-eval", "--data-dir", str(mnist_dir), "--out", str(fresh)])
    assert status == 0, err
    assert json.loads((fresh / "config.json").read_text())["finished"] is True


def test_torchrun_job_on_a_directory_in_use_stops_every_process(mnist_dir: Path, tmp_path: Path,
                                                                  finished_run: Path, script_command) -> None:
    """Only rank 0 takes the lock; the processes agree on its answer, so the other one stops too (no hang)."""
    from cvae.paper import run_lock

    run = copy_run(finished_run, tmp_path)
    with socket_port() as port:
        base = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "CVAE_DIST_TIMEOUT": "60"}
    argv = [*script_command("evaluate.py"), str(run), *EVALUATE, "--data-dir", str(mnist_dir)]
    with run_lock.hold(run, command="a test"), unchanged(run):
        procs = [subprocess.Popen(argv, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
        try:
            errs = [proc.communicate(timeout=120)[1] for proc in procs]
        finally:
            for proc in procs:
                proc.kill()
    assert [proc.returncode for proc in procs] == [cli.EXIT_USAGE] * 2, errs
    assert last_line(errs[0]).startswith(f"error: {run} is in use by another job (process {os.getpid()}")
    assert "error" not in errs[1], errs[1]  # rank 0 speaks for both


class socket_port:
    """A free TCP port on localhost (as a context manager, so that the socket is closed before use)."""

    def __enter__(self) -> int:
        import socket

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        return self.socket.getsockname()[1]

    def __exit__(self, *_: object) -> None:
        self.socket.close()


# ----------------------------------------------------------------------------- 6. numbers with an upper bound
WHOLE_TRAINING_SET = [arg for arg in RUN if arg not in ("--train-subset", "256")]  # 256 images: 10 256 - 10 000


@pytest.mark.parametrize("extra, needles", [
    (["--seed", "1700000000000000000"], ("--seed", "'1700000000000000000'", "4294967295", "generator")),
    (["--epochs", "10000000"], ("--epochs", "'10000000'", "1000000", "seed")),
    (["--hidden", "1000000000000"], ("--hidden 1000000000000", "parameters", "GiB", "Lower --hidden")),
    (["--z-dim", "10000000000000"], ("--z-dim 10000000000000", "parameters", "GiB", "Lower --hidden")),
    (["--objective", "iwae", "--iw-samples", "1000000000000"], ("--iw-samples 1000000000000", "GiB")),
    (["--autoregressive", "--ar-window", "99"], ("--ar-window", "'99'", "55")),
    (["--batch-size", "100000000000000000000"],
     ("--batch-size 100000000000000000000", "larger than the 256 training images")),
], ids=["seed", "epochs", "hidden", "z-dim", "iw-samples", "ar-window", "batch-size"])
def test_numbers_out_of_bounds_are_refused_before_any_work(mnist_dir: Path, tmp_path: Path, extra: list[str],
                                                           needles: tuple[str, ...]) -> None:
    base = WHOLE_TRAINING_SET if "--batch-size" in extra else RUN
    with unchanged(tmp_path):
        status, err = invoke(train_script.main, [*base, "--data-dir", str(mnist_dir), "--out",
                                                 str(tmp_path / "new"), *extra])
    assert status == cli.EXIT_USAGE, err
    line = last_line(err)
    assert "error: " in line and all(needle in line for needle in needles), line
    assert not (tmp_path / "new").exists()


def test_the_control_script_bounds_its_numbers(mnist_dir: Path, tmp_path: Path) -> None:
    for extra in (["--seed", str(2 ** 64)], ["--epochs", str(10 ** 7)]):
        status, err = invoke(control_script.main, ["--data-dir", str(mnist_dir), "--out", str(tmp_path / "new"),
                                                   *EVALUATE, *extra])
        assert status == cli.EXIT_USAGE and extra[0] in last_line(err), err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("k, autoregressive", [(1, False), (3, True)])
def test_the_memory_estimate_counts_the_parameters(k: int, autoregressive: bool) -> None:
    config = RunConfig(quadrants=[k], hidden=[16, 8], z_dim=4, autoregressive=autoregressive, ar_window=5)
    baseline = BaselineNet(k, config.hidden)
    model = CVAE(baseline, config.z_dim, config.hidden, autoregressive, 5)
    counts = cvae.paper.experiment.parameter_counts(config, k)
    assert counts == (sum(p.numel() for p in baseline.parameters()),
                      sum(p.numel() for p in model.parameters() if p.requires_grad))


CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")


def test_a_failed_allocation_says_what_to_lower_and_a_retry_runs(mnist_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory at the first training step: exit 1 with what to lower; the directory it leaves (a
    config.json, no checkpoint) does not make the same command refuse to run again."""
    argv = [*RUN, "--no-eval", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run")]
    real = cvae.training.training_loss

    def no_memory(*_: object, **__: object) -> torch.Tensor:
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(cvae.training, "training_loss", no_memory)
    status, err = invoke(train_script.main, argv)
    assert status == cli.EXIT_FAILED, err
    line = last_line(err)
    assert line.startswith("error: out of memory") and "can't allocate memory" in line
    assert all(option in line for option in ("--batch-size", "--hidden", "--z-dim")), line
    monkeypatch.setattr(cvae.training, "training_loss", real)
    status, err = invoke(train_script.main, argv)
    assert status == 0, err
    assert "saved no checkpoint" in err  # said, not silent
    assert json.loads((tmp_path / "run/config.json").read_text())["finished"] is True


def test_a_failed_allocation_in_evaluation_says_what_to_lower(mnist_dir: Path, tmp_path: Path, finished_run: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_run(finished_run, tmp_path)

    def no_memory(*_: object, **__: object) -> None:
        raise MemoryError

    monkeypatch.setattr(cvae.paper.experiment, "sharded_per_image_cll", no_memory)
    with unchanged(run):
        status, err = invoke(evaluate_script.main, [str(run), *EVALUATE, "--data-dir", str(mnist_dir)])
    assert status == cli.EXIT_FAILED, err
    line = last_line(err)
    assert line.startswith("error: out of memory") and "--num-samples" in line and "intact" in line, line


def test_a_run_with_checkpoints_is_still_protected(tmp_path: Path, mnist_dir: Path, finished_run: Path) -> None:
    """The retry rule frees only a directory without any checkpoint: an unfinished run that saved one is kept."""
    run = copy_run(finished_run, tmp_path)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(saved | {"finished": False}))
    for name in ("results.json", "results.csv", "results.md"):
        (run / name).unlink()
    with unchanged(run):
        status, err = invoke(train_script.main, [*RUN, "--data-dir", str(mnist_dir), "--out", str(run)])
    assert status == cli.EXIT_USAGE and "already holds a run" in err, err


# ----------------------------------------------------------------------------- 9. interrupted evaluation
def slow_evaluation_command(mnist_files: tuple[Path, dict[str, str]], script: str, mark: Path) -> list[str]:
    """script_command's, with the evaluation made to wait (after touching mark) until a signal comes."""
    _, md5s = mnist_files
    code = (f"import runpy, sys, time, torch; import cvae.paper.data, cvae.paper.experiment\n"
            f"cvae.paper.data.MNIST_MD5 = {md5s!r}\n"
            "torch.set_num_threads(1)\n"
            "def slow(*args, **kwargs):\n"
            f"    open({str(mark)!r}, 'w').close(); time.sleep(600)\n"
            "cvae.paper.experiment.sharded_per_image_cll = slow\n"
            f"sys.argv = sys.argv[1:]; runpy.run_path({str(ROOT / script)!r}, run_name='__main__')\n")
    return [sys.executable, "-c", code, script]


def interrupt_evaluation(command: list[str], mark: Path, signum: signal.Signals, cwd: Path) -> tuple[int, str]:
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(mark, proc)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupted_evaluation_in_train_advises_evaluate(mnist_files: tuple[Path, dict[str, str]], mnist_dir: Path,
                                                         tmp_path: Path, signum: signal.Signals) -> None:
    out, mark = tmp_path / "run", tmp_path / "evaluating"
    command = [*slow_evaluation_command(mnist_files, "train.py", mark), *RUN, "--data-dir", str(mnist_dir),
               "--out", str(out)]
    status, err = interrupt_evaluation(command, mark, signum, tmp_path)
    assert status == cli.EXIT_INTERRUPTED, err
    line = last_line(err)
    assert line.startswith(f"interrupted: the evaluation of {out} was stopped") and \
        f"Evaluate it with: python evaluate.py {out}" in line, line
    status, err = invoke(evaluate_script.main, [str(out), *EVALUATE, "--data-dir", str(mnist_dir)])
    assert status == 0, err  # the advice works
    assert (out / "results.json").exists()


def test_sigterm_during_evaluate_says_so(mnist_files: tuple[Path, dict[str, str]], mnist_dir: Path, tmp_path: Path,
                                        finished_run: Path) -> None:
    run, mark = copy_run(finished_run, tmp_path), tmp_path / "evaluating"
    command = [*slow_evaluation_command(mnist_files, "evaluate.py", mark), str(run), *EVALUATE,
               "--data-dir", str(mnist_dir)]
    with unchanged(run):
        status, err = interrupt_evaluation(command, mark, signal.SIGTERM, tmp_path)
    assert status == cli.EXIT_INTERRUPTED, err
    assert last_line(err).startswith("interrupted. Every file already written is complete")


# ----------------------------------------------------------------------------- 9. a broken link as --out
@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_broken_symbolic_link_as_out(mnist_dir: Path, tmp_path: Path, kind: str) -> None:
    link = tmp_path / "link"
    if kind == "dangling":
        link.symlink_to(tmp_path / "gone")
        needle = f"a symbolic link to {tmp_path / 'gone'}, which does not exist"
    else:
        link.symlink_to(tmp_path / "other")
        (tmp_path / "other").symlink_to(link)
        needle = "a loop of symbolic links"
    for main, argv in ((train_script.main, [*RUN, "--data-dir", str(mnist_dir)]),
                       (control_script.main, ["--data-dir", str(mnist_dir), *EVALUATE])):
        for out in (link, link / "sub"):
            status, err = invoke(main, [*argv, "--out", str(out)])
            assert sorted(os.listdir(tmp_path)) == (["link"] if kind == "dangling" else ["link", "other"])
            assert status == cli.EXIT_USAGE, err
            line = last_line(err)
            assert line.startswith("error: --out") and needle in line and "Free some space" not in line, line
