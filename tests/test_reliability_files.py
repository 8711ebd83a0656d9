"""Faults in what is read and written (issue 14): data that must be the verified data, a real full disk,
edited or foreign run files, memory bounded for any S, UTF-8 whatever the locale and result files replaced as
one unit, cvae-sohn table's refusals, and the smaller ones (a checkpoint that is a directory, stale temporaries,
an unreadable data directory)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, command_module, invoke

from cvae import CVAE, BaselineNet, QuadrantTask, checkpoints, estimators, settings
from cvae.paper import cli, comparison, data, report
from cvae.paper import config as run_config
from cvae.paper.config import PRESETS, RunConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- 2. the data are the verified data
def idx(arr: np.ndarray) -> bytes:
    return struct.pack(f">I{arr.ndim}I", 0x0800 | arr.ndim, *arr.shape) + arr.astype(np.uint8).tobytes()


def install(data_dir: Path, dataset: str, monkeypatch: pytest.MonkeyPatch, n_train: int = 12,
            n_test: int = 6, blobs: dict[str, bytes] | None = None) -> dict[str, np.ndarray]:
    """Four IDX files of random images under data_dir, the MD5 table of `dataset` patched to them."""
    rng = np.random.default_rng(3)
    arrays = {"train-images-idx3-ubyte": rng.integers(1, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(1, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    raw = data_dir / data._TV_CLASS[dataset] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    blobs = {name: idx(arr) for name, arr in arrays.items()} | (blobs or {})
    for name, blob in blobs.items():
        (raw / name).write_bytes(blob)
    table = "MNIST_MD5" if dataset == "mnist" else "FASHION_MNIST_MD5"
    monkeypatch.setattr(data, table, {name: hashlib.md5(blob).hexdigest() for name, blob in blobs.items()})
    return arrays


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_a_processed_cache_beside_the_verified_files_changes_nothing(tmp_path, monkeypatch, dataset):
    """Older torchvision versions wrote processed/training.pt and test.pt, and torchvision loads them instead of
    the raw files when they exist: blank images there must not reach the model."""
    arrays = install(tmp_path, dataset, monkeypatch)
    processed = tmp_path / data._TV_CLASS[dataset] / "processed"
    processed.mkdir()
    for name, n in (("training.pt", 12), ("test.pt", 6)):
        torch.save((torch.zeros(n, 28, 28, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64)), processed / name)
    splits = data.load_splits(tmp_path, dataset, num_val=4)
    train = torch.from_numpy(arrays["train-images-idx3-ubyte"].reshape(12, 784)).float() / 255
    assert torch.equal(splits.train, train[:8]) and torch.equal(splits.val, train[8:])
    assert torch.equal(splits.test, torch.from_numpy(arrays["t10k-images-idx3-ubyte"].reshape(6, 784)).float() / 255)
    assert torch.equal(splits.test_labels, torch.arange(6) % 10)
    assert splits.train.dtype == torch.float32 and splits.train_labels.dtype == torch.int64


@pytest.mark.parametrize("damage", ["magic", "dims", "length", "labels"])
def test_a_malformed_idx_file_is_refused_even_with_a_matching_md5(tmp_path, monkeypatch, damage):
    images = np.zeros((12, 28, 28), np.uint8)
    bad = {"magic": struct.pack(">I3I", 0x0D03, 12, 28, 28) + images.tobytes(),
           "dims": struct.pack(">I3I", 0x0803, 12, 27, 29) + images.tobytes(),
           "length": idx(images)[:-5]}
    name = "train-labels-idx1-ubyte" if damage == "labels" else "train-images-idx3-ubyte"
    blob = idx(np.full(12, 11)) if damage == "labels" else bad[damage]
    install(tmp_path, "mnist", monkeypatch, blobs={name: blob})
    with pytest.raises(data.DataError) as error:
        data.load_splits(tmp_path, num_val=4)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw" / name) in message and "IDX" in message


def test_importing_cvae_data_does_not_import_torchvision():
    code = "import sys, cvae.paper.data; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "False"


def test_an_unreadable_data_directory_is_a_clear_error_with_exit_2(tmp_path, monkeypatch, capsys):
    install(tmp_path, "mnist", monkeypatch)
    raw = tmp_path / "MNIST" / "raw"
    raw.chmod(0)
    try:
        if os.access(raw, os.R_OK):  # root reads it anyway: fail the way the kernel would for anyone else
            def denied(path: Path) -> str:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            monkeypatch.setattr(data, "_md5", denied)
        assert data.main(["--data-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Permission denied" in err and str(raw) in err and "--data-dir" in err
        with pytest.raises(data.DataError):  # what train.py and evaluate.py report with exit 2
            data.load_splits(tmp_path)
    finally:
        raw.chmod(0o755)


# ----------------------------------------------------------------------------- 3. a full disk
@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "256k"):
    path.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                 capture_output=True, text=True, check=False)
    except OSError as error:
        pytest.skip(f"cannot mount a size-capped tmpfs here ({error}); the same code path is tested with a "
                    "patched torch.save")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-capped tmpfs here (needs root and mount permission: "
                    f"{mounted.stderr.strip()}); the same code path is tested with a patched torch.save")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=False)


def test_a_real_full_disk_is_an_os_error_that_leaves_the_old_checkpoint(tmp_path):
    with small_filesystem(tmp_path / "small") as small:
        target = small / "cvae.pt"
        checkpoints.save({"w": torch.ones(10)}, target)
        before = target.read_bytes()
        with pytest.raises(OSError) as error:
            checkpoints.save({"w": torch.ones(1_000_000)}, target)  # 4 MB on a 256 kB filesystem
        assert error.value.errno == errno.ENOSPC and "No space left on device" in str(error.value)
        assert target.read_bytes() == before and sorted(os.listdir(small)) == ["cvae.pt"]
        stats = os.statvfs(small)  # the temporary file's space is free again, although the error is still held
        assert stats.f_bavail * stats.f_frsize > 200_000
        status, err = invoke(lambda argv: checkpoints.save({"w": torch.ones(1_000_000)}, target), [])
        assert status == cli.EXIT_FAILED and "No space left on device" in err and "Traceback" not in err
        assert target.read_bytes() == before and sorted(os.listdir(small)) == ["cvae.pt"]


WRITE_FAILED = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                "file write failed")


@pytest.mark.parametrize("message", [WRITE_FAILED, "[enforce fail at inline_container.cc:672] . unexpected pos "
                                     "704 vs 598"])
@pytest.mark.parametrize("free", [0, 10**12])
def test_torch_write_failure_is_an_os_error(tmp_path, monkeypatch, message, free):
    target = tmp_path / "cvae.pt"
    checkpoints.save({"w": torch.ones(3)}, target)
    before = target.read_bytes()

    def failing(obj: object, f: Path) -> None:
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError(message)

    monkeypatch.setattr(torch, "save", failing)
    statvfs = os.statvfs(tmp_path)
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result(
        (*statvfs[:4], free // statvfs.f_frsize, *statvfs[5:])))
    with pytest.raises(OSError) as error:
        checkpoints.save({"w": torch.ones(3)}, target)
    assert isinstance(error.value.__cause__, RuntimeError)
    assert error.value.errno == (errno.ENOSPC if free == 0 else errno.EIO)
    assert str(target) in str(error.value)
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["cvae.pt"]
    status, err = invoke(lambda argv: checkpoints.save({"w": torch.ones(3)}, target), [])
    assert status == cli.EXIT_FAILED and "Traceback" not in err and "could not write" in err


def test_other_torch_errors_are_not_disguised(tmp_path, monkeypatch):
    def failing(obj: object, f: Path) -> None:
        raise RuntimeError("something else")

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(RuntimeError, match="something else"):
        checkpoints.save({"w": torch.ones(3)}, tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 4. edited or foreign run files
BAD_VALUES = [
    ("quadrants", [4], "1, 2 or 3"), ("quadrants", "123", "list"), ("quadrants", [], "list"),
    ("quadrants", [1, 1], "twice"), ("quadrants", [True], "1, 2 or 3"), ("epochs", 0, "at least 1"),
    ("epochs", 2.5, "at least 1"), ("epochs", True, "at least 1"), ("patience", None, "integer of at least 1"),
    ("batch_size", "128", "integer of at least 1"), ("lr", -1, "positive"), ("lr", "0.001", "number"),
    ("lr", float("nan"), "positive"), ("lr", float("inf"), "positive"), ("z_dim", 0, "positive integer"),
    ("hidden", [500, 0], "positive integers"), ("hidden", 500, "list"), ("hidden", [], "list"),
    ("autoregressive", 16, "true or false"), ("ar_window", 4, "odd"), ("ar_window", -1, "odd"),
    ("ar_window", 57, "odd"), ("epochs", 10**7, "at most 1000000"),
    ("seed", -1, "integer of at least 0"), ("seed", 2**64, "at most 4294967295"), ("objective", "vae", "'elbo'"),
    ("alpha", 1.5, "from 0 to 1"), ("iw_samples", 0, "integer of at least 1"), ("lr_decay", 0, "above 0"),
    ("lr_decay", 1.5, "above 0"), ("preset", "fast", "paper"), ("likelihood", "gaussian", "bernoulli"),
    ("dataset", "cifar10", "mnist"), ("binarize", "yes", "true or false"), ("data_dir", 5, "string"),
    ("data_dir", "", "string"), ("train_subset", 0, "positive integer"), ("num_samples", "100", "positive integer"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES)
def test_every_configuration_value_is_checked(key, value, expected):
    with pytest.raises(ValueError) as error:
        RunConfig.from_dict(RunConfig().to_dict() | {key: value})
    message = str(error.value)
    assert f'"{key}"' in message and expected in message, message


def test_unknown_and_missing_keys_are_refused_but_old_runs_keep_their_defaults():
    with pytest.raises(ValueError, match='unknown key "width"'):
        RunConfig.from_dict(RunConfig().to_dict() | {"width": 3})
    without = {key: value for key, value in RunConfig().to_dict().items() if key not in ("hidden", "seed")}
    with pytest.raises(ValueError, match='"hidden", "seed"'):
        RunConfig.from_dict(without)
    with pytest.raises(ValueError, match="an object"):
        RunConfig.from_dict(None)
    legacy = run_config.LEGACY_DEFAULTS
    first_version = {key: value for key, value in RunConfig().to_dict().items() if key not in legacy}
    assert RunConfig.from_dict(first_version) == RunConfig()  # a run of the first version: the paper's set-up
    # the experiment's options added after the first version, and every training setting but the first five
    training = {run_config.RUN_NAMES.get(name, name) for name in settings.NAMES} - set(run_config.FIRST_VERSION)
    assert set(legacy) == {"preset", "autoregressive", "ar_window", "likelihood"} | training
    assert set(run_config.FIRST_VERSION) == {"epochs", "patience", "batch_size", "lr", "seed"}
    for preset, values in PRESETS.items():
        config = RunConfig(**values, preset=preset, seed=settings.MAX_SEED, train_subset=256, lr=1)
        assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert isinstance(RunConfig.from_dict(RunConfig().to_dict() | {"lr": 1}).lr, float)


def saved_run(path: Path, **changes: object) -> Path:
    saved = {"config": RunConfig().to_dict(), "distributed": {"world_size": 1}, "finished": True} | changes
    path.write_text(json.dumps(saved), encoding="utf-8")
    return path


@pytest.mark.parametrize(("content", "expected"), [
    (b"{\"config\": ", "not valid JSON"), (b"\xff\xfe{}", "UTF-8"), (b"[1, 2]", "an object"),
    (b"{\"config\": null}", '"config"'), (b"{\"seed\": 1}", '"config"'), (b"{\"config\": {\"lr\": 1}}", '"quadrants"'),
    (json.dumps({"config": RunConfig().to_dict() | {"lr": "x"}}).encode(),
     '"lr" is \'x\', expected a positive finite number'),
])
def test_a_corrupt_or_foreign_config_file_names_the_file_and_the_problem(tmp_path, content, expected):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(checkpoints.RunFileError) as error:
        run_config.read_run_config(path)
    message = str(error.value)
    assert str(path) in message and expected in message and "\n" not in message, message


@pytest.mark.parametrize(("changes", "expected"), [({"finished": "yes"}, '"finished"'),
                                                   ({"distributed": [2]}, '"distributed"'),
                                                   ({"distributed": {"world_size": 0}}, '"world_size"')])
def test_the_rest_of_config_json_is_checked_too(tmp_path, changes, expected):
    with pytest.raises(checkpoints.RunFileError, match=expected):
        run_config.read_run_config(saved_run(tmp_path / "config.json", **changes))
    assert run_config.read_run_config(saved_run(tmp_path / "ok.json"))["config"] == RunConfig().to_dict()


# ----------------------------------------------------------------------------- 5. memory bounded for any S
def tiny_cvae() -> CVAE:
    torch.manual_seed(0)
    return CVAE(BaselineNet(3, hidden=(4,)), z_dim=2, hidden=(4,)).eval()


def tiny_images(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return QuadrantTask(3).split(torch.rand(n, 784, generator=torch.Generator().manual_seed(1)))


class Enough(Exception):
    pass


def peak_python_memory_of_an_estimate(monkeypatch, num_samples: int, calls: int = 50) -> int:
    """Peak bytes of Python objects allocated by cll_importance with num_samples samples of z, stopped after
    `calls` chunks (one sample of z per chunk: MAX_ROWS = the number of images)."""
    model, (x, y) = tiny_cvae(), tiny_images(3)
    monkeypatch.setattr(estimators, "MAX_ROWS", 3)
    made, real = [], model.log_likelihood

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        made.append(1)
        if len(made) > calls:
            raise Enough
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "log_likelihood", counted)
    tracemalloc.start()
    try:
        with pytest.raises(Enough):
            estimators.cll_importance(model, x, y, num_samples, progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_estimator_with_a_huge_number_of_samples_starts_in_bounded_memory(monkeypatch):
    """The chunks of samples are made one at a time: 2 million chunks made up front would hold 2 million slices
    (250 MB); made one at a time, the first 50 take under 100 kB of Python objects. Then S = 10^12, which a list
    of chunks could never hold (checked second, so that an eager implementation fails above instead of exhausting
    memory)."""
    assert peak_python_memory_of_an_estimate(monkeypatch, 2 * 10**6) < 5_000_000
    assert peak_python_memory_of_an_estimate(monkeypatch, 10**12) < 5_000_000


def test_partial_results_are_folded_so_memory_stays_bounded(monkeypatch):
    model, (x, y) = tiny_cvae(), tiny_images(3)
    monkeypatch.setattr(estimators, "MAX_ROWS", 3)  # one sample per chunk: 60 chunks
    functions = (estimators.cll_importance, estimators.cll_monte_carlo, estimators.negative_elbo)
    unfolded = {f: f(model, x, y, 60, torch.Generator().manual_seed(2)) for f in functions}
    monkeypatch.setattr(estimators, "PENDING_ELEMENTS", 12)  # at most 4 chunks of 3 images kept
    stacked, real_stack = [], torch.stack
    monkeypatch.setattr(torch, "stack", lambda tensors, *a, **k: stacked.append(len(tensors)) or real_stack(
        tensors, *a, **k))
    for f in functions:  # the same draws, summed in another order
        torch.testing.assert_close(f(model, x, y, 60, torch.Generator().manual_seed(2)), unfolded[f])
    assert stacked and max(stacked) <= 4


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("terminal", "progress", "shown"), [(True, True, True), (True, False, False),
                                                              (False, True, False)])
def test_long_evaluations_show_progress_on_a_terminal(monkeypatch, terminal, progress, shown):
    model, (x, y) = tiny_cvae(), tiny_images()
    monkeypatch.setattr(estimators, "PROGRESS_WORK", 10)
    stream = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    estimators.cll_monte_carlo(model, x, y, 40, progress=progress)
    assert ("samples of z" in stream.getvalue() and "/120" in stream.getvalue()) == shown, stream.getvalue()
    monkeypatch.setattr(estimators, "PROGRESS_WORK", 10**9)  # small work: no bar
    stream.seek(0), stream.truncate()
    estimators.cll_monte_carlo(model, x, y, 40)
    assert stream.getvalue() == ""


# ----------------------------------------------------------------------------- 7. UTF-8, result files as one unit
def results(num_samples: int = 2) -> dict:
    cell = {key: {"mean": 1.0, "sem": 0.1} for key in ("nn", "cvae_elbo", "cvae_mc", "cvae_is", "gap")}
    return {"dataset": "mnist", "protocol": "grayscale", "likelihood": "bernoulli", "objective": "cvae",
            "alpha": 0.5, "seed": 0, "preset": "paper", "num_samples": num_samples, "test_examples": 3,
            "2": cell | {"seconds": 1.5}}


def test_results_are_written_in_utf8_under_an_ascii_locale(tmp_path):
    report.write_results(tmp_path, results())
    code = ("import json, locale, sys; from pathlib import Path; from cvae.paper import report; "
            "print(locale.getpreferredencoding(False)); "
            "report.write_results(Path(sys.argv[1]), json.loads(sys.argv[2]))")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("LC_", "LANG", "PYTHONIOENCODING", "PYTHONUTF8"))}
    (tmp_path / "c").mkdir()
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c"), json.dumps(results())], cwd=ROOT,
                          env=env | {"LC_ALL": "C", "PYTHONUTF8": "0"}, capture_output=True, text=True, check=False)
    if proc.returncode == 0 and "utf" in proc.stdout.lower():
        pytest.skip(f"could not get a non-UTF-8 locale here ({proc.stdout.strip()})")
    assert proc.returncode == 0, proc.stderr
    for name in ("results.json", "results.csv", "results.md"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / name).read_bytes()
    assert "±".encode() in (tmp_path / "results.md").read_bytes()


def test_result_files_are_replaced_as_one_unit(tmp_path, monkeypatch):
    report.write_results(tmp_path, results(2))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = Path.write_text

    def fail_on_markdown(self: Path, text: str, *args: object, **kwargs: object) -> int:
        if "results.md" in self.name:
            real(self, "half", encoding="utf-8")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fail_on_markdown)
    with pytest.raises(OSError, match="No space left on device"):
        report.write_results(tmp_path, results(7))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # none replaced, no temporaries
    monkeypatch.setattr(Path, "write_text", real)
    report.write_results(tmp_path, results(7))
    assert json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))["num_samples"] == 7
    assert "S=7" in (tmp_path / "results.md").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- 8. cvae-sohn table
paper_script = command_module("table")


def fake_run(path: Path, seed: int = 0, objective: str = "cvae", config: dict | None = None,
             **fields: object) -> Path:
    """A run directory with what cvae-sohn table reads: config.json, results.json and q1/per_image.pt."""
    path.mkdir(parents=True)
    config = RunConfig(seed=seed, objective=objective).to_dict() | (config or {})
    saved_run(path / "config.json", config=config)
    cell = lambda mean: {"mean": mean, "sem": 0.5}  # noqa: E731
    result = {"dataset": config["dataset"], "protocol": "binarized" if config["binarize"] else "grayscale",
              "likelihood": config["likelihood"], "objective": objective, "alpha": 0.5, "seed": seed,
              "preset": config["preset"], "num_samples": 100, "test_examples": 4,
              "1": {"nn": cell(100.0 + seed), "cvae_elbo": cell(70.0), "cvae_mc": cell(80.0), "cvae_is": cell(65.0),
                    "gap": cell(35.0 + seed)}} | fields
    (path / "results.json").write_text(json.dumps(result), encoding="utf-8")
    per_image = torch.arange(4, dtype=torch.float64)
    checkpoints.save({"nn": per_image + 100, "cvae_is": per_image * 1.5 + 60}, path / "q1" / "per_image.pt")
    return path


def paper_table(*args: object) -> tuple[int, str]:
    return invoke(paper_script.main, [str(arg) for arg in args])


def test_paper_table_of_distinct_seeds_still_works(tmp_path):
    runs = [fake_run(tmp_path / f"seed{seed}", seed) for seed in range(2)] + [fake_run(tmp_path / "gsnn", 0, "gsnn")]
    status, err = paper_table(*runs, "--out", tmp_path / "table.md")
    assert status == 0, err
    assert "| CVAE (importance sampling) | 65.00 ± 0.00 (SE 0.50; 2 seeds) |" in \
        (tmp_path / "table.md").read_text(encoding="utf-8")


def test_paper_table_refuses_the_same_run_twice(tmp_path, monkeypatch):
    run = fake_run(tmp_path / "seed0")
    fake_run(tmp_path / "seed1", 1)
    (tmp_path / "link").symlink_to(run)
    monkeypatch.chdir(tmp_path)
    for second in (run, Path("seed0/"), Path("link"), Path("./seed1/../seed0")):
        status, err = paper_table("seed0", "seed1", second)
        assert status == 2 and "Traceback" not in err, err
        assert "the same run" in err and "seed0" in err and str(second) in err
    shutil.copytree(run, tmp_path / "copy")
    status, err = paper_table("seed0", "copy")
    assert status == 2 and "seed 0" in err and "seed0" in err and "copy" in err and "same configuration" in err


@pytest.mark.parametrize(("field", "value"), [("dataset", "fashion-mnist"), ("test_examples", 3),
                                              ("num_samples", 1000), ("likelihood", "continuous-bernoulli"),
                                              ("protocol", "binarized")])
def test_paper_table_refuses_runs_evaluated_under_different_protocols(tmp_path, field, value):
    config = {"dataset": value} if field == "dataset" else {"likelihood": value} if field == "likelihood" else \
        {"binarize": True} if field == "protocol" else {}
    a = fake_run(tmp_path / "a", 0)
    b = fake_run(tmp_path / "b", 1, config=config, **({field: value} if not config else {}))
    for args in ((a, b), ("--ablation", a, b)):
        status, err = paper_table(*args)
        assert status == 2 and "Traceback" not in err, err
        assert field in err and str(a) in err and str(b) in err and repr(value) in err, err


def test_paper_table_refuses_to_average_different_configurations_as_seeds(tmp_path):
    a, b = fake_run(tmp_path / "a", 0), fake_run(tmp_path / "wide", 1, config={"hidden": [1000, 1000]})
    status, err = paper_table(a, b)
    assert status == 2 and "hidden" in err and "[1000, 1000]" in err and "--ablation" in err, err
    status, err = paper_table("--ablation", a, b)
    assert status == 0, err


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda run: (run / "results.json").write_text("{\"dataset\": ", encoding="utf-8"), "not valid JSON"),
    (lambda run: (run / "results.json").write_text("[]", encoding="utf-8"), "an object"),
    (lambda run: (run / "results.json").write_text(json.dumps({"dataset": "mnist"}), encoding="utf-8"),
     '"protocol"'),
    (lambda run: (run / "results.json").write_text(
        (run / "results.json").read_text(encoding="utf-8").replace('"mean": 65.0', '"mean": "65"'), encoding="utf-8"),
     '"mean"'),
    (lambda run: (run / "config.json").write_text("{\"config\": null}", encoding="utf-8"), "config.json"),
    (lambda run: (run / "results.json").write_text(
        (run / "results.json").read_text(encoding="utf-8").replace('"seed": 1', '"seed": 5'), encoding="utf-8"),
     "another run"),
    (lambda run: (run / "results.json").unlink(), "evaluate the run first"),
    (lambda run: (run / "results.json").write_text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    (lambda run: (run / "results.json").write_text('{"seed": 1, "seed": 1}'), 'the key "seed" twice'),
    (lambda run: (run / "config.json").write_text('{"config": ' + "[" * 50 + "]" * 50 + "}"), "nested too deeply"),
])
def test_paper_table_names_a_corrupt_or_foreign_results_file(tmp_path, damage, expected):
    runs = [fake_run(tmp_path / "a", 0), fake_run(tmp_path / "b", 1)]
    damage(runs[1])
    status, err = paper_table(*runs)
    assert status == 2 and "Traceback" not in err and str(runs[1]) in err and expected in err, err
    assert len(err.strip().splitlines()) == 1


def test_comparable_runs_are_checked_before_any_table_is_made():
    base = {"run_dir": "a", "seed": 0, "objective": "cvae", "preset": "paper", "dataset": "mnist",
            "protocol": "grayscale", "likelihood": "bernoulli", "num_samples": 100, "test_examples": 10,
            "config": RunConfig().to_dict()}
    comparison.check_comparable([base, base | {"run_dir": "b", "seed": 1, "config": RunConfig(seed=1).to_dict()}])
    with pytest.raises(ValueError, match="num_samples"):
        comparison.check_comparable([base, base | {"run_dir": "b", "num_samples": 10, "seed": 1,
                                                   "config": RunConfig(seed=1).to_dict()}])


# ----------------------------------------------------------------------------- 9. smaller ones
def test_a_checkpoint_that_is_a_directory_is_called_one(tmp_path):
    (tmp_path / "cvae.pt").mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="is a directory") as error:
        checkpoints.load(tmp_path / "cvae.pt")
    assert "does not exist" not in str(error.value)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    (tmp_path / "q1").mkdir()
    stale = [tmp_path / f".config.json.tmp{dead}", tmp_path / "q1" / f".cvae_state.pt.tmp{dead}"]
    kept = [tmp_path / f".results.json.tmp{alive}", tmp_path / "q1" / "cvae.pt", tmp_path / f"notes.tmp{dead}",
            tmp_path / ".draft.tmpabc", tmp_path / f".x.tmp{dead}.bak"]
    for path in stale + kept:
        path.write_bytes(b"x")
    removed = checkpoints.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert checkpoints.remove_stale_temporaries(tmp_path / "missing") == []


def test_provisioning_removes_stale_temporaries_of_the_data(tmp_path, monkeypatch):
    install(tmp_path, "mnist", monkeypatch)
    stale = tmp_path / "MNIST" / "raw" / f".train-images-idx3-ubyte.tmp{dead_pid()}"
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))  # long ago
    data.provision(tmp_path, quiet=True)
    assert not stale.exists()


def test_seed_bound_keeps_every_derived_seed_in_the_generators_range():
    # training: seed * 10 + k + 5 (initial weights), seed * 1_000_003 + epoch (order), seed + rank * 1_000_003
    assert settings.MAX_SEED * 1_000_003 + 10**6 < 2**63 and math.isfinite(float(settings.MAX_SEED))
    torch.Generator().manual_seed(settings.MAX_SEED * 1_000_003 + 10**6)
    assert RunConfig.from_dict(RunConfig(seed=settings.MAX_SEED).to_dict()).seed == settings.MAX_SEED
    with pytest.raises(ValueError, match='"seed"'):
        RunConfig.from_dict(RunConfig(seed=settings.MAX_SEED + 1).to_dict())
