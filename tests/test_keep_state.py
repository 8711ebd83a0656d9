"""A finished run keeps its best checkpoints and history but not its resumable states (unless --keep-state), and
--resume of a finished run, or of a setting whose states are gone, trains nothing again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY, invoke, load_script, offline

from cvae import checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")
train_script = load_script("train")
STATES = ("q1/baseline_state.pt", "q1/cvae_state.pt", "q2/baseline_state.pt", "q2/cvae_state.pt")
TRAINED = ("q1/baseline.pt", "q1/cvae.pt", "q1/history.json", "q2/baseline.pt", "q2/cvae.pt", "q2/history.json")


def train(data: Path, out: Path, *extra: str) -> tuple[int, str]:
    return invoke(train_script.main, [*TINY, "--epochs", "2", "--quadrants", "1", "2", "--data-dir", str(data),
                                      "--out", str(out), *extra])


def resume(run: Path, *extra: str) -> tuple[int, str]:
    return invoke(train_script.main, ["--resume", str(run), "--device", "cpu", "--no-progress", *extra])


def contents(run: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def lean_run(mnist_files: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished, evaluated run made with the default: its resumable states deleted."""
    data_dir, md5s = mnist_files
    run = tmp_path_factory.mktemp("lean") / "run"
    with offline(md5s):
        status, err = train(data_dir, run)
    assert status == 0, err
    assert "deleted the resumable training states" in err
    return run


def test_a_finished_run_deletes_its_resumable_states(lean_run: Path) -> None:
    assert not [name for name in STATES if (lean_run / name).exists()]
    assert all((lean_run / name).is_file() for name in TRAINED)
    saved = json.loads((lean_run / "config.json").read_text())
    assert saved["finished"] is True and saved["keep_state"] is False


def test_keep_state_keeps_them(finished_run: Path) -> None:  # conftest's run is made with --keep-state
    assert all((finished_run / name).is_file() for name in STATES)
    assert json.loads((finished_run / "config.json").read_text())["keep_state"] is True


def copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_resume_of_a_finished_run_trains_nothing_and_evaluates(mnist_dir: Path, tmp_path: Path,
                                                               lean_run: Path) -> None:
    run = copy(lean_run, tmp_path / "run")
    (run / "results.json").unlink()
    trained = contents(run, TRAINED)
    status, err = resume(run)
    assert status == 0, err
    assert "nothing to train" in err and "epoch" not in err
    assert contents(run, TRAINED) == trained
    assert (run / "results.json").is_file()
    assert not [name for name in STATES if (run / name).exists()]


def test_resume_skips_the_settings_that_are_trained(mnist_dir: Path, tmp_path: Path, lean_run: Path) -> None:
    """A run stopped after config.json was rewritten unfinished: the settings with their checkpoints and history
    but no states are trained already."""
    run = copy(lean_run, tmp_path / "run")
    path = run / "config.json"
    checkpoints.write_json(path, json.loads(path.read_text()) | {"finished": False})
    trained = contents(run, TRAINED)
    status, err = resume(run, "--no-eval")
    assert status == 0, err
    assert "epoch" not in err
    assert contents(run, TRAINED) == trained
    assert json.loads(path.read_text())["finished"] is True


def test_a_run_made_with_keep_state_keeps_them_when_resumed(mnist_dir: Path, tmp_path: Path,
                                                            finished_run: Path) -> None:
    """--keep-state is recorded in config.json: a resumed run keeps its states; one recorded without deletes them."""
    run = copy(finished_run, tmp_path / "run")
    trained = contents(run, TRAINED)
    status, err = resume(run, "--no-eval")
    assert status == 0, err
    assert all((run / name).is_file() for name in STATES)
    path = run / "config.json"
    checkpoints.write_json(path, json.loads(path.read_text()) | {"keep_state": False})
    status, err = resume(run, "--no-eval")
    assert status == 0, err
    assert not [name for name in STATES if (run / name).exists()]
    assert contents(run, TRAINED) == trained
