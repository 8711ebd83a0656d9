"""A run directory's layout and its saved configuration: where each setting's files are, and config.json read back.

Run directory layout:
    config.json                 the RunConfig, the environment (versions, machine) and the status ("finished",
                                "keep_state": whether the resumable states stay once it is)
    q{k}/baseline.pt, cvae.pt   best checkpoints (lowest validation loss) for k input quadrants
    q{k}/*_state.pt             resumable training states (deleted when the run is finished, unless --keep-state)
    q{k}/history.json           per-epoch losses of both models, written once both are trained
    q{k}/tensorboard/{baseline,cvae}/  TensorBoard logs of each stage's epochs (train --tensorboard)
    q{k}/per_image.pt           per-image values on the test set: the negative CLL of every estimator, the true
                                likelihood of binarized outputs and the sample metrics (cvae.paper.sample_evaluation)
    results.{json,csv,md}       the tables;  samples_q{k}.png, training_curves.png  the figures
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cvae.checkpoints import RunFileError

from .cli import UserError
from .config import read_run_config


@dataclass(frozen=True)
class SettingPaths:
    root: Path

    @property
    def baseline(self) -> Path:
        return self.root / "baseline.pt"

    @property
    def cvae(self) -> Path:
        return self.root / "cvae.pt"

    @property
    def baseline_state(self) -> Path:
        return self.root / "baseline_state.pt"

    @property
    def cvae_state(self) -> Path:
        return self.root / "cvae_state.pt"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def tensorboard(self) -> Path:
        """The TensorBoard logs of the stages (train --tensorboard): tensorboard/baseline, tensorboard/cvae."""
        return self.root / "tensorboard"

    @property
    def per_image(self) -> Path:
        return self.root / "per_image.pt"


def setting_paths(run_dir: Path, k: int) -> SettingPaths:
    return SettingPaths(Path(run_dir) / f"q{k}")


def read_run(run_dir: Path) -> dict:
    """The saved config.json of a run directory, or a UserError saying why it is not a run."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (it has no config.json). Give the "
                            "directory that train.py --out wrote.")
    try:
        return read_run_config(path)
    except RunFileError as error:
        raise UserError(str(error)) from None
