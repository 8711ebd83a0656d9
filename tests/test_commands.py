"""The command line as a package: the cvae-sohn dispatcher, a --help that starts without torch, numerics left
alone by `import cvae`, train's options built from the one declaration of the run options, train --config, and
the evaluation precision recorded with the results."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, command_module, invoke, load_script

from cvae.paper import cli, commands, experiment
from cvae.paper.config import RunConfig
from cvae.paper.experiment import fit_settings

pytestmark = pytest.mark.usefixtures("one_thread")
HEAVY = {"torch", "torchvision", "numpy", "scipy", "matplotlib"}


def python(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def imported(importtime: str) -> set[str]:
    """The modules that `python -X importtime` says were imported."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("command", [["train.py", "--help"], ["evaluate.py", "--help"], ["-m", "cvae", "--help"],
                                     ["-m", "cvae", "train", "--help"], ["-m", "cvae", "evaluate", "--help"]],
                         ids=" ".join)
def test_help_starts_without_torch(command: list[str]) -> None:
    proc = python("-X", "importtime", *command)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ")
    modules = imported(proc.stderr)
    assert "argparse" in modules  # the import log was read
    assert not {module.split(".")[0] for module in modules} & HEAVY


def test_help_lists_every_command_and_every_option_with_its_default() -> None:
    listing = python("-m", "cvae", "--help").stdout
    for name in commands.COMMANDS:
        assert f"    {name} " in listing or f"    {name}\n" in listing, name
    text = " ".join(python("train.py", "--help").stdout.split())  # argparse's line breaks undone
    for field in dataclasses.fields(RunConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
    assert text.count("(default: ") >= len(dataclasses.fields(RunConfig))
    for shown in ("--quadrants K [K ...]", "(default: 1 2 3)", "(default: 500,500)", "(default: 0.001)",
                  "(default: --no-binarize)", "--precision {auto,fp32,bf16}", "--config FILE", "--keep-state"):
        assert shown in text, shown


def test_an_unknown_command_is_refused() -> None:
    proc = python("-m", "cvae", "fit")
    assert proc.returncode == 2 and "invalid choice: 'fit'" in proc.stderr and "train" in proc.stderr


def test_import_leaves_denormals_alone_and_the_commands_flush_them(tmp_path: Path) -> None:
    denormal = "(torch.tensor([1e-39]) * 1.0).item() != 0"
    proc = python("-c", f"import torch, cvae; from cvae import ConditionalVAE, likelihoods; print({denormal})")
    assert proc.stdout.split() == ["True"], proc.stderr
    for command in ("train", "evaluate", "convergence"):  # set before the (missing) run directory is looked at
        argv = ["--resume", str(tmp_path)] if command == "train" else [str(tmp_path)]
        code = (f"import torch; from cvae.paper.commands import main; "
                f"status = main([{command!r}, *{argv!r}, '--device', 'cpu']); print(status, {denormal})")
        proc = python("-c", code)
        assert proc.stdout.split() == ["2", "False"], (command, proc.stdout, proc.stderr)


def test_the_training_options_reach_the_training_loop_by_name() -> None:
    config = RunConfig(epochs=7, patience=2, batch_size=32, lr=0.01, seed=5, objective="hybrid", alpha=0.25,
                       iw_samples=9, lr_decay=0.9, train_precision="bf16", kl_warmup=4)
    settings = fit_settings(config, torch.device("cpu"))
    assert (settings.epochs, settings.patience, settings.batch_size, settings.lr, settings.seed, settings.objective,
            settings.alpha, settings.iw_samples, settings.lr_decay, settings.precision, settings.kl_warmup) == \
        (7, 2, 32, 0.01, 5, "hybrid", 0.25, 9, 0.9, "bf16", 4)
    assert fit_settings(RunConfig(), torch.device("cpu")).precision == "fp32"  # training is float32 by default


def new_run(data: Path, out: Path, *extra: str) -> tuple[int, str]:
    return invoke(commands.main, ["train", *TINY, "--epochs", "1", "--quadrants", "2", "--no-eval",
                                  "--data-dir", str(data), "--out", str(out), *extra])


def saved_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["config"]


def test_the_cvae_training_options_reach_the_cvae_and_not_the_baseline(mnist_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def recording(model, train, val, settings, *rest, **more):
        seen.append((type(model).__name__, settings.kl_warmup, settings.sample_targets, settings.free_bits))
        return real(model, train, val, settings, *rest, **more)

    real = experiment.train_loop
    monkeypatch.setattr(experiment, "train_loop", recording)
    status, err = new_run(mnist_dir, tmp_path / "run", "--epochs", "2", "--kl-warmup", "1", "--sample-targets",
                          "--free-bits", "0.25")
    assert status == 0, err
    # the baseline has no KL term, and trains on the gray targets: the same NN whatever the CVAE's options
    assert seen == [("BaselineNet", 0, False, 0.0), ("CVAE", 1, True, 0.25)]


def test_config_starts_a_new_run_like_another(mnist_dir: Path, tmp_path: Path, finished_run: Path) -> None:
    status, err = new_run(mnist_dir, tmp_path / "again", "--config", str(finished_run / "config.json"), "--seed", "3")
    assert status == 0, err
    assert saved_config(tmp_path / "again") == saved_config(finished_run) | {"seed": 3, "epochs": 1, "quadrants": [2]}

    options = tmp_path / "options.json"
    options.write_text(json.dumps({"preset": "strong", "ar_window": 5, "z_dim": 8, "num_samples": 7}))
    status, err = new_run(mnist_dir, tmp_path / "strong", "--config", str(options), "--z-dim", "3")
    assert status == 0, err
    expected = RunConfig(quadrants=[2], epochs=1, batch_size=64, z_dim=3, hidden=[16, 16], autoregressive=True,
                         ar_window=5, preset="strong", data_dir=str(mnist_dir), train_subset=256, num_samples=2)
    assert saved_config(tmp_path / "strong") == expected.to_dict()  # TINY's --num-samples 2 beats the file's 7


@pytest.mark.parametrize("content, needles", [
    ('{"ar_window": 4}', ("--config", '"ar_window" is 4', "odd window", "beside --config")),
    ('{"width": 3}', ("--config", 'unknown key "width"')),
    ("[1, 2]", ("--config", "holds a JSON list", "object of options")),
    ('{"epochs": ', ("--config", "not a JSON file")),
])
def test_a_wrong_config_file_is_refused(mnist_dir: Path, tmp_path: Path, content: str,
                                        needles: tuple[str, ...]) -> None:
    options = tmp_path / "options.json"
    options.write_text(content)
    status, err = new_run(mnist_dir, tmp_path / "run", "--config", str(options))
    assert status == cli.EXIT_USAGE and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "run").exists()
    status, err = new_run(mnist_dir, tmp_path / "run", "--config", str(tmp_path / "missing.json"))
    assert status == cli.EXIT_USAGE and "cannot be read" in err


def test_config_with_resume_is_refused(mnist_dir: Path, tmp_path: Path, finished_run: Path) -> None:
    status, err = invoke(load_script("train").main, ["--resume", str(finished_run), "--config",
                                                     str(finished_run / "config.json")])
    assert status == cli.EXIT_USAGE
    assert "--config" in err and "--resume" in err and "give one of them" in err and "--out NEW_DIR" in err


def test_the_evaluation_precision_is_recorded(mnist_dir: Path, tmp_path: Path, finished_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert json.loads((run / "results.json").read_text())["precision"] in ("fp32", "bf16")  # train's, auto
    status, err = invoke(load_script("evaluate").main, [str(run), "--precision", "fp32", "--device", "cpu",
                                                        "--no-progress", "--num-samples", "2"])
    assert status == 0, err
    assert json.loads((run / "results.json").read_text())["precision"] == "fp32"
    assert "precision" not in saved_config(run)  # a choice of each evaluation, not of the run
    status, err = invoke(command_module("convergence").main, [str(run), "--precision", "fp32", "--device", "cpu",
                                                           "--samples", "1", "2", "--test-subset", "20"])
    assert status == 0, err
    saved = json.loads((run / "convergence_q1.json").read_text())
    assert saved["precision"] == "fp32" and list(saved["estimates"]) == ["1", "2"]
