"""CVAE.from_run and BaselineNet.from_run: a finished run's best checkpoint of a setting in one call, and a clear
error for a directory that is not a run, a run that has not finished, and a setting the run did not train."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cvae import CVAE, BaselineNet
from cvae.paper.cli import UserError


def _same_weights(model: torch.nn.Module, checkpoint: Path) -> bool:
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    state = model.state_dict()
    return state.keys() == saved.keys() and all(torch.equal(state[name], saved[name]) for name in saved)


@pytest.mark.parametrize("k", [1, 2])
def test_loads_the_best_checkpoints_of_the_setting_in_eval_mode(finished_run: Path, k: int) -> None:
    cvae = CVAE.from_run(finished_run, k)
    baseline = BaselineNet.from_run(str(finished_run), k, device=torch.device("cpu"))
    assert type(cvae) is CVAE and type(baseline) is BaselineNet
    assert cvae.task.num_quadrants == baseline.task.num_quadrants == k
    assert _same_weights(cvae, finished_run / f"q{k}" / "cvae.pt")
    assert _same_weights(baseline, finished_run / f"q{k}" / "baseline.pt")
    assert not any(module.training for model in (cvae, baseline) for module in model.modules())
    assert all(p.device.type == "cpu" for p in cvae.parameters())
    assert cvae.z_dim == 4 and list(cvae.hidden) == [16, 16]  # the run's --z-dim and --hidden


@pytest.mark.parametrize("model", [CVAE, BaselineNet])
def test_a_directory_that_is_not_a_run_is_refused(tmp_path: Path, model: type) -> None:
    with pytest.raises(UserError, match="is not a run directory .*config.json"):
        model.from_run(tmp_path, 1)
    with pytest.raises(UserError, match="is not a run directory"):
        model.from_run(tmp_path / "nowhere", 1)


@pytest.mark.parametrize("model", [CVAE, BaselineNet])
def test_an_unfinished_run_is_refused(finished_run: Path, tmp_path: Path, model: type) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(saved | {"finished": False}))
    with pytest.raises(UserError, match=f"{run} has not finished training.*--resume {run}"):
        model.from_run(run, 1)


@pytest.mark.parametrize("model", [CVAE, BaselineNet])
def test_a_setting_the_run_did_not_train_is_refused_naming_those_it_did(finished_run: Path, model: type) -> None:
    with pytest.raises(UserError, match="did not train the setting with 3 input quadrants: it trained --quadrants 1 2"):
        model.from_run(finished_run, 3)
    with pytest.raises(ValueError, match="must be 1, 2 or 3"):
        model.from_run(finished_run, 4)
