"""Shared fixtures: a tiny synthetic MNIST in torchvision's layout, the two scripts as modules, and
helpers to run them in-process and to snapshot a directory tree.

The synthetic data set has just over the 10 000 validation images `load_splits` keeps aside, so the
scripts run unchanged on it; `cvae.paper.data.MNIST_MD5` is patched to its hashes and both network routes
fail, so no test fetches anything or depends on data provisioned by hand.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from cvae.paper import data

ROOT = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_TEST = 10_000 + 256, 100  # load_splits keeps the last 10 000 training images for validation
# The smallest useful run: 4 steps of 64 images per epoch, tiny networks, S = 2.
TINY = ["--train-subset", "256", "--batch-size", "64", "--hidden", "16,16", "--z-dim", "4",
        "--num-samples", "2", "--device", "cpu", "--no-progress"]


def two_answer_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, 3), y (n, 2): one output linear in x, one bimodal given x."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator)
    sign = torch.randint(0, 2, (n, 1), generator=generator) * 2 - 1
    return x, torch.cat([2 * x[:, :1], sign * x[:, 1:2].abs()], dim=1) + 0.3 * torch.randn(n, 2, generator=generator)


SMALL_TRAIN, SMALL_VAL = two_answer_data(96, 0), two_answer_data(32, 1)  # the training tests' data


def _idx(arr: np.ndarray) -> bytes:
    magic = 0x0803 if arr.ndim == 3 else 0x0801
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def write_mnist(data_dir: Path, num_train: int = NUM_TRAIN, num_test: int = NUM_TEST,
                seed: int = 0) -> dict[str, str]:
    """Write four IDX files of digit-like random images into data_dir/MNIST/raw, and a tiny classifier where the
    evaluation looks for its classifier (``write_classifier``); return the files' MD5s."""
    rng = np.random.default_rng(seed)
    raw = data_dir / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", num_train), ("t10k", num_test)):
        labels = np.arange(n) % 10  # every class occurs in the first ten images
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 4:24, 4:24] = rng.integers(0, 256, (n, 20, 20)) * (rng.random((n, 20, 20)) < 0.2)
        images[np.arange(n), 6 + 2 * labels, 4:24] = 255  # a bar whose height tells the class
        arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"] = images, labels
    md5s = {}
    for name in data.FILES:
        blob = _idx(arrays[name])
        (raw / name).write_bytes(blob)
        md5s[name] = hashlib.md5(blob).hexdigest()
    write_classifier(data_dir, arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"],
                     arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"])
    return md5s


def write_classifier(data_dir: Path, train: np.ndarray, train_labels: np.ndarray, test: np.ndarray,
                     test_labels: np.ndarray, num_images: int = 256) -> None:
    """A tiny classifier (1 epoch on the first num_images training images), cached in data_dir as digit_classifier
    caches its own, so that the tiny runs' evaluations classify their samples without training the real one."""
    from cvae.paper.classifier import accuracy, default_path, save_classifier, train_classifier

    def tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(images.reshape(len(images), -1) / 255).float(), torch.from_numpy(labels).long()

    images, labels = tensors(train[:num_images], train_labels[:num_images])
    with _torch_threads(1):
        model = train_classifier(images, labels, epochs=1, batch_size=64, progress=False, channels=(2, 4), hidden=8)
        test_accuracy = accuracy(model, *tensors(test, test_labels))
    save_classifier(model, default_path(data_dir, "mnist"), test_accuracy=test_accuracy, epochs=1,
                    train_images=num_images, dataset="mnist")


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny networks run several times faster on one thread than on a busy machine's two."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="session")
def mnist_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    data_dir = tmp_path_factory.mktemp("mnist")
    return data_dir, write_mnist(data_dir)


def _offline(patch: pytest.MonkeyPatch, md5s: dict[str, str]) -> None:
    def no_network(*_: object) -> None:
        raise OSError("[Errno -3] Temporary failure in name resolution (tests are offline)")

    patch.setattr(data, "MNIST_MD5", md5s)
    patch.setattr(data, "_torchvision_download", no_network)
    patch.setattr(data, "_download_wheel", no_network)


@contextlib.contextmanager
def offline(md5s: dict[str, str]) -> Iterator[None]:
    """For fixtures wider than a test: the MD5 table patched, the network routes cut, one thread."""
    with pytest.MonkeyPatch.context() as patch, _torch_threads(1):
        _offline(patch, md5s)
        yield


@pytest.fixture
def mnist_dir(mnist_files: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The synthetic MNIST's data dir, with the MD5 table patched to it and the network routes cut."""
    data_dir, md5s = mnist_files
    _offline(monkeypatch, md5s)
    return data_dir


@functools.cache
def load_script(name: str) -> ModuleType:
    """Import train.py or evaluate.py from the repository root as a module (when first asked, so that
    this file imports nothing but cvae.paper.data and breaks no other test if the scripts cannot be imported)."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def command_module(name: str) -> ModuleType:
    """The module of a ``cvae-sohn`` command (cvae.paper.commands.NAME), with its main(argv)."""
    return importlib.import_module(f"cvae.paper.commands.{name}")


def invoke(main: Callable[..., int], argv: list[str], **kwargs: object) -> tuple[int, str]:
    """Run a script's main(argv) as its __main__ block does; return (exit status, stderr)."""
    from cvae.paper import cli

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.run(lambda: main(argv, **kwargs))
        except SystemExit as stop:  # argparse errors
            status = stop.code
    return status, stderr.getvalue()


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root -> its bytes (None for a directory)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="session")
def finished_run(mnist_files: tuple[Path, dict[str, str]],
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished, evaluated tiny run with settings 1 and 2 (2 epochs each), with its resumable states
    (--keep-state). Copy it before changing it."""
    data_dir, md5s = mnist_files
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    with offline(md5s):
        status, err = invoke(load_script("train").main, [*TINY, "--epochs", "2", "--quadrants", "1", "2",
                                                         "--keep-state", "--data-dir", str(data_dir), "--out",
                                                         str(run_dir)])
    assert status == 0, err
    return run_dir


@pytest.fixture
def script_command(mnist_files: tuple[Path, dict[str, str]]) -> Callable[[str], list[str]]:
    """The command line that runs a script as __main__ in a fresh interpreter, with the MD5 table
    patched to the synthetic data and one thread (signals and exit statuses are the real ones)."""
    _, md5s = mnist_files

    def command(script: str) -> list[str]:
        code = (f"import runpy, sys, torch; import cvae.paper.data; cvae.paper.data.MNIST_MD5 = {md5s!r}; "
                "torch.set_num_threads(1); "
                f"sys.argv = sys.argv[1:]; runpy.run_path({str(ROOT / script)!r}, run_name='__main__')")
        return [sys.executable, "-c", code, script]

    return command


@contextlib.contextmanager
def unchanged(*roots: Path) -> Iterator[None]:
    """Assert that the trees under roots are byte-identical after the block."""
    before = [snapshot(root) for root in roots]
    yield
    for root, was in zip(roots, before):
        assert snapshot(root) == was, f"files under {root} changed"


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until a subprocess has written path (failing if it exits first or takes too long)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited with {proc.returncode} before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)
