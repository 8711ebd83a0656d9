"""Bad input to train.py and evaluate.py: a one-paragraph error that says what was wrong, exit status 2,
and nothing already on disk changed.

Every case runs in a workspace holding a finished run (``run``, settings 1 and 2) and the synthetic data
(``data``); after the call, both trees must be byte-identical and nothing new may have appeared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, invoke, load_script, unchanged

from cvae import checkpoints
from cvae.paper.models import CVAE, BaselineNet

pytestmark = pytest.mark.usefixtures("one_thread")
train_script, evaluate_script = load_script("train"), load_script("evaluate")


@dataclass
class Workspace:
    root: Path
    data: Path
    run: Path

    def damage_data(self, name: str, how: str) -> None:
        """Make the data a private copy, then truncate or alter one of its IDX files."""
        copy = self.root / "data"
        shutil.copytree(self.data, copy)
        self.data = copy
        path = copy / "MNIST" / "raw" / name
        blob = bytearray(path.read_bytes())
        if how == "truncate":
            del blob[len(blob) // 2:]
        else:
            blob[-1] ^= 0xFF
        path.write_bytes(bytes(blob))

    def replace_classifier(self, checkpoint: dict) -> None:
        """Make the data a private copy, then put another checkpoint where the evaluation's classifier is cached."""
        copy = self.root / "data"
        shutil.copytree(self.data, copy)
        self.data = copy
        torch.save(checkpoint, copy / "classifier" / "mnist_cnn.pt")

    def edit_config(self, **changes: object) -> None:
        path = self.run / "config.json"
        saved = json.loads(path.read_text())
        saved.update(changes)
        path.write_text(json.dumps(saved))


class _Unsafe:
    """Unpickles into a call of os.system: what a malicious checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch '{self.marker}'",)


def _model(kind: str, k: int = 2, hidden: tuple[int, ...] = (16, 16), z_dim: int = 4) -> dict:
    baseline = BaselineNet(k, hidden)
    return (baseline if kind == "baseline" else CVAE(baseline, z_dim, hidden)).checkpoint()


def _missing_key() -> dict:
    checkpoint = _model("cvae")
    checkpoint["state_dict"].pop(next(iter(checkpoint["state_dict"])))
    return checkpoint


@dataclass
class Case:
    """prepare(ws) damages the workspace; argv(ws) gives the arguments after the script's base ones
    (later options win, so a case can replace --data-dir or --out); every needle must be in the error."""

    name: str
    argv: Callable[[Workspace], list[str]]
    needles: tuple[str, ...]
    prepare: Callable[[Workspace], object] = lambda ws: None
    skip: bool = False


def args(*extra: str) -> Callable[[Workspace], list[str]]:
    return lambda ws: list(extra)


def on_run(*extra: str) -> Callable[[Workspace], list[str]]:
    """evaluate.py's arguments: the workspace's run, then extra."""
    return lambda ws: [str(ws.run), *extra]


def resume(*extra: str) -> Callable[[Workspace], list[str]]:
    """The run's own command again, with --resume added: what a user continuing it would type."""
    return lambda ws: ["--resume", str(ws.run), "--out", str(ws.run), *extra]


def truncate(relative: str) -> Callable[[Workspace], object]:
    return lambda ws: (ws.run / relative).write_bytes((ws.run / relative).read_bytes()[:1000])


def put(relative: str, make: Callable[[Workspace], object]) -> Callable[[Workspace], object]:
    """Replace a file of the run by torch.save(make(ws))."""
    return lambda ws: torch.save(make(ws), ws.run / relative)


def copy(source: str, target: str) -> Callable[[Workspace], object]:
    return lambda ws: shutil.copy(ws.run / source, ws.run / target)


def unfinished(k: int, damage: Callable[[Workspace], object]) -> Callable[[Workspace], object]:
    """The run made unfinished in setting k (config.json says unfinished, and q{k} has no history.json: --resume
    trains it from its resumable states), then damage(ws)."""
    def prepare(ws: Workspace) -> None:
        path = ws.run / "config.json"
        checkpoints.write_json(path, json.loads(path.read_text()) | {"finished": False})
        (ws.run / f"q{k}" / "history.json").unlink()
        damage(ws)
    return prepare


def unsafe(ws: Workspace) -> dict:
    return {"kind": _Unsafe(ws.root / "pwned")}


def options(content: str | bytes, name: str = "options.json") -> Callable[[Workspace], object]:
    """Write a file of options for --config (name) into the workspace's root."""
    def prepare(ws: Workspace) -> None:
        path = ws.root / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return prepare


def with_config(name: str = "options.json") -> Callable[[Workspace], list[str]]:
    return lambda ws: ["--config", str(ws.root / name)]


def saved_config(**changes: object) -> Callable[[Workspace], object]:
    """The run's config.json with values of its "config" changed (as a hand edit, or an older version, would)."""
    def prepare(ws: Workspace) -> None:
        path = ws.run / "config.json"
        saved = json.loads(path.read_text())
        saved["config"].update(changes)
        path.write_text(json.dumps(saved))
    return prepare


def saved_text(text: str) -> Callable[[Workspace], object]:
    return lambda ws: (ws.run / "config.json").write_text(text)


DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's recursion
NESTED_40 = '{"epochs": ' + "[" * 40 + "]" * 40 + "}"  # parses, but deeper than any file of a run
TWICE = '{"epochs": 2, "epochs": 3}'
BIG = "[" + "0, " * (6 << 20) + "0]"  # 18 MiB of valid JSON


NO_CUDA, HAS_CUDA = "cuda is not available", torch.cuda.is_available()
TRAIN_CASES = [
    Case("quadrants-0", args("--quadrants", "0"), ("--quadrants", "'0'", "must be 1, 2 or 3")),
    Case("quadrants-4", args("--quadrants", "4"), ("--quadrants", "'4'", "must be 1, 2 or 3")),
    Case("quadrants-two", args("--quadrants", "two"), ("--quadrants", "'two'", "must be 1, 2 or 3")),
    Case("epochs-negative", args("--epochs", "-1"), ("--epochs", "'-1'", "integer of at least 1")),
    Case("epochs-fraction", args("--epochs", "1.5"), ("--epochs", "'1.5'", "integer of at least 1")),
    Case("batch-size-0", args("--batch-size", "0"), ("--batch-size", "'0'", "integer of at least 1")),
    Case("lr-0", args("--lr", "0"), ("--lr", "'0'", "positive finite number")),
    Case("lr-negative", args("--lr", "-0.001"), ("--lr", "'-0.001'", "positive finite number")),
    Case("lr-negative-exponent", args("--lr=-1e-3"), ("--lr", "'-1e-3'", "positive finite number")),
    Case("lr-nan", args("--lr", "nan"), ("--lr", "'nan'", "positive finite number")),
    Case("num-samples-0", args("--num-samples", "0"), ("--num-samples", "integer of at least 1")),
    Case("binarizations-0", args("--binarizations", "0"), ("--binarizations", "'0'", "integer of at least 1")),
    Case("sample-k-negative", args("--sample-k", "-1"), ("--sample-k", "'-1'", "integer of at least 0")),
    Case("z-dim-0", args("--z-dim", "0"), ("--z-dim", "'0'", "integer of at least 1")),
    Case("iw-samples-0", args("--iw-samples", "0"), ("--iw-samples", "'0'", "integer of at least 1")),
    Case("lr-decay-0", args("--lr-decay", "0"), ("--lr-decay", "'0'", "above 0 and at most 1")),
    Case("lr-decay-above-1", args("--lr-decay", "1.1"), ("--lr-decay", "'1.1'", "above 0 and at most 1")),
    Case("ar-window-even", args("--ar-window", "4"), ("--ar-window", "'4'", "odd width")),
    Case("free-bits-negative", args("--free-bits", "-0.5"), ("--free-bits", "'-0.5'", "a number >= 0")),
    Case("free-bits-not-elbo", args("--free-bits", "0.1", "--objective", "iwae"),
         ("--free-bits", "ELBO objective", "--objective iwae")),
    Case("aux-weight-no-term", args("--aux-weight", "1"), ("--aux-weight needs --autoregressive",)),
    Case("preset-unknown", args("--preset", "fast"), ("--preset", "'fast'", "paper", "strong")),
    Case("hidden-empty-layer", args("--hidden", "16,,16"), ("--hidden", "'16,,16'", "e.g. --hidden 500,500")),
    Case("hidden-word", args("--hidden", "wide"), ("--hidden", "'wide'", "positive integers")),
    Case("hidden-zero", args("--hidden", "0"), ("--hidden", "'0'", "positive integers")),
    Case("hidden-superscript", args("--hidden", "²"), ("--hidden", "positive integers")),
    Case("device-cuda", args("--device", "cuda"), (NO_CUDA, "--device cpu"), skip=HAS_CUDA),
    Case("device-unknown", args("--device", "tpu"), ("'tpu'", "auto, cpu, cuda")),
    Case("train-subset-too-large", args("--train-subset", "99999"), ("99999", "larger than the 256")),
    Case("train-subset-below-batch", args("--train-subset", "10"), ("smaller than --batch-size 64",)),
    Case("data-truncated", args(), ("t10k-images-idx3-ubyte", "MD5", "truncated or altered", "Delete it"),
         prepare=lambda ws: ws.damage_data("t10k-images-idx3-ubyte", "truncate")),
    Case("data-altered", args(), ("train-labels-idx1-ubyte", "MD5", "truncated or altered", "Delete it"),
         prepare=lambda ws: ws.damage_data("train-labels-idx1-ubyte", "alter")),
    Case("data-missing-offline", lambda ws: ["--data-dir", str(ws.root / "empty")],
         ("could not provision mnist", "Temporary failure in name resolution", "copy those files"),
         prepare=lambda ws: (ws.root / "empty").mkdir()),
    Case("out-holds-a-run", lambda ws: ["--out", str(ws.run)],
         ("already holds a run", "Nothing was changed", "--resume", "--overwrite")),
    Case("out-is-a-file", lambda ws: ["--out", str(ws.run / "results.md")], ("is a file", "another --out")),
    Case("out-under-a-file", lambda ws: ["--out", str(ws.run / "results.md" / "sub")],
         ("not a writable directory", "another --out")),
    Case("out-not-a-run", lambda ws: ["--out", str(ws.run / "q1")], ("not a run", "new or empty directory")),
    Case("resume-not-a-run", lambda ws: ["--resume", str(ws.run / "q1")], ("not a run directory", "config.json")),
    Case("resume-missing", lambda ws: ["--resume", str(ws.root / "nowhere")], ("not a run directory",)),
    Case("resume-and-overwrite", lambda ws: ["--resume", str(ws.run), "--overwrite"],
         ("--overwrite", "not allowed with argument --resume")),
    Case("resume-other-config", resume("--epochs", "5", "--hidden", "8"),
         ("--epochs 5 (the run has 2)", "--hidden [8] (the run has [16, 16])", "Leave those options out")),
    Case("resume-other-out", lambda ws: ["--resume", str(ws.run), "--out", str(ws.root / "x")],
         ("--out", "Leave those options out")),
    Case("resume-truncated-state", resume(), ("q1/baseline_state.pt", "cannot be loaded safely"),
         prepare=unfinished(1, truncate("q1/baseline_state.pt"))),
    Case("resume-unsafe-state", resume(), ("q1/cvae_state.pt", "arbitrary unpickling", "refused for safety"),
         prepare=unfinished(1, put("q1/cvae_state.pt", unsafe))),
    Case("resume-state-of-other-setting", resume(),
         ("q2/cvae_state.pt", "not a training state for this model", "size mismatch", "Delete it"),
         prepare=unfinished(2, copy("q1/cvae_state.pt", "q2/cvae_state.pt"))),
    # numbers that float32 or the code cannot hold, options that contradict each other (third round)
    Case("free-bits-1e39", args("--free-bits", "1e39"), ("--free-bits", "'1e39'", "at most 1e6")),
    Case("aux-weight-1e39", args("--aux-weight", "1e39"), ("--aux-weight", "'1e39'", "at most 1e6")),
    Case("lr-above-float32", args("--lr", "1e39"), ("--lr", "'1e39'", "float32", "3.4e38")),
    Case("lr-below-float32", args("--lr", "1e-50"), ("--lr", "'1e-50'", "float32", "1.2e-38")),
    Case("lr-decay-below-float32", args("--lr-decay", "1e-50"), ("--lr-decay", "'1e-50'", "1.2e-38")),
    Case("alpha-1e39", args("--alpha", "1e39"), ("--alpha", "'1e39'", "from 0 to 1")),
    Case("patience-huge", args("--patience", "10000000"), ("--patience", "'10000000'", "at most 1000000")),
    Case("kl-warmup-huge", args("--kl-warmup", "10000000"), ("--kl-warmup", "'10000000'", "at most 1000000")),
    Case("lr-halving-huge", args("--lr-halving", "10000000"), ("--lr-halving", "'10000000'", "at most 1000000")),
    Case("ar-window-no-term", args("--ar-window", "5"), ("--ar-window 5 needs --autoregressive", "--ar-window 0")),
    Case("kl-warmup-not-below-epochs", args("--kl-warmup", "2"),
         ("--kl-warmup 2 is not below --epochs 2", "whole objective", "more --epochs")),
    Case("continuous-bernoulli-binarize", args("--likelihood", "continuous-bernoulli", "--binarize"),
         ("--likelihood continuous-bernoulli with --binarize", "gray levels", "--no-binarize")),
    Case("continuous-bernoulli-sample-targets", args("--likelihood", "continuous-bernoulli", "--sample-targets"),
         ("--likelihood continuous-bernoulli with --sample-targets", "--no-sample-targets")),
    Case("sample-k-huge", args("--sample-k", "1000000000"), ("--sample-k 1000000000", "GiB", "smaller --sample-k")),
    Case("binarizations-huge", args("--binarizations", "1000000000"),
         ("--binarizations 1000000000", "GiB", "smaller --binarizations")),
    # --config files: bounded reading, and the same checks as the command line
    Case("config-dev-zero", args("--config", "/dev/zero"), ("--config /dev/zero", "larger than 16 MiB")),
    Case("config-too-large", with_config(), ("--config", "larger than 16 MiB"), prepare=options(BIG)),
    Case("config-deep", with_config(), ("--config", "nested too deeply"), prepare=options(DEEP)),
    Case("config-nested-40", with_config(), ("--config", "nested too deeply", "32 levels"),
         prepare=options(NESTED_40)),
    Case("config-key-twice", with_config(), ("--config", 'the key "epochs" twice'), prepare=options(TWICE)),
    Case("config-huge-integer", with_config(), ("--config", "not valid JSON"),
         prepare=options('{"epochs": ' + "9" * 5000 + "}")),
    Case("config-free-bits-1e39", with_config(), ("--config", '"free_bits" is 1e+39', "at most 1e6"),
         prepare=options('{"free_bits": 1e39}')),
    Case("config-ar-window-no-term", with_config(), ("--config", "--ar-window 5 needs --autoregressive"),
         prepare=options('{"ar_window": 5}')),
    # --resume of a config.json that cannot be read back, or holds what a new run would be refused
    Case("resume-free-bits-1e39", resume(), ("config.json", '"free_bits" is 1e+39', "at most 1e6"),
         prepare=unfinished(1, saved_config(free_bits=1e39))),
    Case("resume-lr-above-float32", resume(), ("config.json", '"lr" is 1e+39', "float32"),
         prepare=unfinished(1, saved_config(lr=1e39))),
    Case("resume-kl-warmup-not-below-epochs", resume(), ("config.json", '"kl_warmup" is 2, not below "epochs" 2'),
         prepare=unfinished(1, saved_config(kl_warmup=2))),
    Case("resume-deep", resume(), ("config.json is unreadable", "nested too deeply"), prepare=saved_text(DEEP)),
    Case("resume-key-twice", resume(), ("config.json is unreadable", 'the key "config" twice'),
         prepare=saved_text('{"config": {}, "config": {}}')),
]

EVALUATE_CASES = [
    Case("num-samples-0", on_run("--num-samples", "0"), ("--num-samples", "'0'", "integer of at least 1")),
    Case("test-subset-0", on_run("--test-subset", "0"), ("--test-subset", "'0'", "integer of at least 1")),
    Case("binarizations-word", on_run("--binarizations", "two"), ("--binarizations", "'two'", "at least 1")),
    Case("sample-k-negative", on_run("--sample-k", "-1"), ("--sample-k", "'-1'", "integer of at least 0")),
    Case("device-cuda", on_run("--device", "cuda"), (NO_CUDA, "--device cpu"), skip=HAS_CUDA),
    Case("not-a-run", lambda ws: [str(ws.run / "q1")], ("not a run directory", "train.py --out")),
    Case("missing-dir", lambda ws: [str(ws.root / "nowhere")], ("not a run directory",)),
    Case("config-corrupt", on_run(), ("config.json is unreadable", "--out"),
         prepare=lambda ws: (ws.run / "config.json").write_text('{"config": {')),
    Case("unfinished", on_run(), ("has not finished training", "--resume"),
         prepare=lambda ws: ws.edit_config(finished=False)),
    Case("checkpoint-truncated", on_run(), ("q2/cvae.pt", "cannot be loaded safely", "truncated, corrupt"),
         prepare=truncate("q2/cvae.pt")),
    Case("checkpoint-garbage", on_run(), ("q1/baseline.pt", "cannot be loaded safely", "Re-run training"),
         prepare=lambda ws: (ws.run / "q1/baseline.pt").write_bytes(os.urandom(5000))),
    Case("checkpoint-missing", on_run(), ("q2/baseline.pt does not exist",),
         prepare=lambda ws: (ws.run / "q2/baseline.pt").unlink()),
    Case("checkpoint-unsafe", on_run(), ("q2/cvae.pt", "GLOBAL posix.system", "refused for safety"),
         prepare=put("q2/cvae.pt", unsafe)),
    Case("checkpoint-other-quadrants", on_run(),
         ("q2/cvae.pt", "another configuration", "num_quadrants is 1 but the run says 2"),
         prepare=copy("q1/cvae.pt", "q2/cvae.pt")),
    Case("checkpoint-other-hidden", on_run(),
         ("q2/baseline.pt", "another configuration", "hidden is [8] but the run says [16, 16]"),
         prepare=put("q2/baseline.pt", lambda ws: _model("baseline", hidden=(8,)))),
    Case("checkpoint-other-z-dim", on_run(), ("q1/cvae.pt", "another configuration", "z_dim is 3 but the run says 4"),
         prepare=put("q1/cvae.pt", lambda ws: _model("cvae", k=1, z_dim=3))),
    Case("checkpoint-other-kind", on_run(), ("q2/cvae.pt", "holds a BaselineNet", "not a CVAE"),
         prepare=put("q2/cvae.pt", lambda ws: _model("baseline"))),
    Case("checkpoint-missing-weights", on_run(),
         ("q2/cvae.pt", "does not hold the weights of the model it records", "Missing key(s)"),
         prepare=put("q2/cvae.pt", lambda ws: _missing_key())),
    Case("data-altered", on_run(), ("t10k-labels-idx1-ubyte", "MD5", "Delete it"),
         prepare=lambda ws: ws.damage_data("t10k-labels-idx1-ubyte", "alter")),
    Case("classifier-foreign", on_run(), ("mnist_cnn.pt", "not a digit_classifier", "Delete it"),
         prepare=lambda ws: ws.replace_classifier(_model("baseline"))),
    Case("sample-k-huge", on_run("--sample-k", "1000000000"), ("--sample-k 1000000000", "GiB", "smaller --sample-k")),
    Case("binarizations-huge", on_run("--binarizations", "1000000000"),
         ("--binarizations 1000000000", "GiB", "smaller --binarizations")),
    Case("config-deep", on_run(), ("config.json is unreadable", "nested too deeply"), prepare=saved_text(DEEP)),
    Case("config-key-twice", on_run(), ("config.json is unreadable", 'the key "finished" twice'),
         prepare=saved_text('{"finished": true, "finished": false}')),
]


@pytest.fixture
def workspace(tmp_path: Path, mnist_dir: Path, finished_run: Path) -> Workspace:
    shutil.copytree(finished_run, tmp_path / "run")
    return Workspace(tmp_path, mnist_dir, tmp_path / "run")


def _check(ws: Workspace, main: Callable[..., int], case: Case, base: Callable[[Workspace], list[str]]) -> None:
    if case.skip:
        pytest.skip("this machine has the device the case asks for")
    case.prepare(ws)
    argv = [*base(ws), *case.argv(ws)]
    with unchanged(ws.root, ws.data):
        status, err = invoke(main, argv)
    assert status == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # the error is one paragraph, on one line, after any usage
    assert "error: " in line, err
    for needle in case.needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert not (ws.root / "pwned").exists()
    assert not (ws.root / "new").exists()


@pytest.mark.parametrize("case", TRAIN_CASES, ids=lambda c: c.name)
def test_train_refuses_bad_input(workspace: Workspace, case: Case) -> None:
    _check(workspace, train_script.main, case, lambda ws: [
        *TINY, "--epochs", "2", "--quadrants", "1", "2", "--data-dir", str(ws.data), "--out", str(ws.root / "new")])


@pytest.mark.parametrize("case", EVALUATE_CASES, ids=lambda c: c.name)
def test_evaluate_refuses_bad_input(workspace: Workspace, case: Case) -> None:
    def base(ws: Workspace) -> list[str]:
        return ["--device", "cpu", "--no-progress", "--data-dir", str(ws.data)]

    _check(workspace, evaluate_script.main, case, base)


def test_overwrite_replaces_only_what_train_wrote(workspace: Workspace) -> None:
    """--overwrite on a finished run: the run is replaced, a file of the user's beside it is kept."""
    notes = workspace.run / "notes.txt"
    notes.write_text("mine")
    status, err = invoke(train_script.main, [*TINY, "--epochs", "1", "--quadrants", "2", "--no-eval",
                                             "--data-dir", str(workspace.data), "--out", str(workspace.run),
                                             "--overwrite"])
    assert status == 0, err
    assert notes.read_text() == "mine"
    assert not (workspace.run / "q1").exists() and not (workspace.run / "results.json").exists()
    assert json.loads((workspace.run / "config.json").read_text())["config"]["quadrants"] == [2]


@pytest.mark.parametrize("script, argv, needle", [
    ("train.py", ["--quadrants", "4"], "argument --quadrants: '4' is not valid"),
    ("evaluate.py", ["nowhere"], "error: nowhere is not a run directory"),
])
def test_real_scripts_exit_2(tmp_path: Path, script: str, argv: list[str], needle: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
