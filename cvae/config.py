"""The run configuration: every hyperparameter of a run, with the paper's defaults, and the checks of a saved one
(config.json is read back by evaluate.py, --resume, convergence.py and paper_table.py, and may have been edited)."""

from __future__ import annotations

import dataclasses
import math
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import torch

from .checkpoints import RunFileError, read_json
from .data import DATASETS
from .likelihoods import PIXEL_LIKELIHOODS
from .objectives import RUN_OBJECTIVES
from .quadrants import IMAGE_SIDE

# The largest seed: every seed derived from it (seed * 10 + k + 5 for the initial weights, seed * 1_000_003 + epoch
# for the order of an epoch, seed + rank * 1_000_003 for a process's noise) stays far inside the 64-bit range of
# torch's generators.
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 1_000_000  # below the stride of the data-order seeds (seed * 1_000_003 + epoch, cvae.training)
MAX_AR_WINDOW = 2 * IMAGE_SIDE - 1  # a window this wide already reaches every pixel from every other


@dataclass
class RunConfig:
    """Defaults reproduce the paper / Pyro tutorial set-up: MLPs 500-500, z of 200, Adam 1e-3,
    batch 128, at most 50 epochs with early stopping (patience 3) on the validation loss."""

    quadrants: list[int] = field(default_factory=lambda: [1, 2, 3])
    epochs: int = 50
    patience: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    z_dim: int = 200
    hidden: list[int] = field(default_factory=lambda: [500, 500])
    autoregressive: bool = False  # an Autoregression term in the generation net's logits (the paper has none)
    ar_window: int = 0  # its neighbourhood: every earlier pixel (0), or those in a window x window square
    seed: int = 0
    objective: str = "cvae"  # "cvae" (ELBO), "gsnn", "hybrid" or "iwae" (objectives.py)
    alpha: float = 0.5  # the ELBO's weight in the hybrid objective
    iw_samples: int = 5  # samples of z per image in the importance-weighted objective ("iwae")
    lr_decay: float = 1.0  # learning rate of epoch e (from 0): lr * lr_decay ** e
    preset: str = "paper"  # the named set of defaults the run started from (PRESETS)
    likelihood: str = "bernoulli"  # of y's pixels: "bernoulli" (the paper's) or "continuous-bernoulli"
    dataset: str = "mnist"
    binarize: bool = False
    data_dir: str = "data"
    train_subset: int | None = None
    num_samples: int = 100

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: object) -> RunConfig:
        """The configuration a dict (a saved config.json's "config") describes, after checking every value's type,
        range and name: a ValueError names the key and says what was wrong and what was expected. Unknown keys are
        refused, and so are missing ones, except those of LEGACY_DEFAULTS, which runs made before they existed
        lack (they take the value those runs were made with)."""
        if not isinstance(values, dict):
            raise ValueError(f"the configuration is {_shown(values)}, expected an object of settings such as "
                             '{"quadrants": [1, 2, 3], "epochs": 50, ...}')
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in values if key not in names]
        if unknown:
            raise ValueError(f"unknown key {_keys(unknown)} in the configuration: this version knows "
                             f"{', '.join(names)} (a newer version wrote it, or it was edited)")
        missing = [key for key in names if key not in values and key not in LEGACY_DEFAULTS]
        if missing:
            raise ValueError(f"key {_keys(missing)} missing from the configuration: every run of this program "
                             "records it")
        checked = {}
        for key in names:
            value = values.get(key, LEGACY_DEFAULTS.get(key))
            problem = _CHECKS[key](value)
            if problem:
                raise ValueError(f'"{key}" is {_shown(value)}, expected {problem}')
            checked[key] = float(value) if key in _REALS else list(value) if isinstance(value, list) else value
        return cls(**checked)

    @property
    def protocol(self) -> str:
        return "binarized" if self.binarize else "grayscale"


# Named sets of defaults (train.py --preset); options given beside a preset override its values.
PRESETS: dict[str, dict] = {
    "paper": {},  # the RunConfig defaults: the paper's set-up
    "strong": {"autoregressive": True},  # README, "A stronger configuration"
}

# The settings added after the first version, with the value the runs made before them were made with: a saved
# configuration may lack these (and only these).
LEGACY_DEFAULTS: dict[str, Any] = {"objective": "cvae", "alpha": 0.5, "iw_samples": 5, "lr_decay": 1.0,
                                   "preset": "paper", "autoregressive": False, "ar_window": 0,
                                   "likelihood": "bernoulli"}


def _shown(value: object) -> str:
    text = "null" if value is None else repr(value) if isinstance(value, str | bool | int | float) else \
        f"a {type(value).__name__} {value!r}"
    return text if len(text) <= 80 else text[:80] + "..."


def _keys(keys: list[str]) -> str:
    return ", ".join(f'"{key}"' for key in keys)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(minimum: int, maximum: float = math.inf, what: str = "") -> Callable[[object], str | None]:
    expected = what or ("a positive integer" if minimum == 1 else f"an integer from {minimum}")
    return lambda value: None if _is_int(value) and minimum <= value <= maximum else expected


def _real(accept: Callable[[float], bool], expected: str) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return None if number and accept(float(value)) else f"a number {expected}"
    return check


def _one_of(names: tuple | dict) -> Callable[[object], str | None]:
    return lambda value: None if isinstance(value, str) and value in names else \
        f"one of {', '.join(map(repr, names))}"


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _quadrants(value: object) -> str | None:
    if not isinstance(value, list) or not value:
        return "a non-empty list of input quadrant settings, e.g. [1, 2, 3]"
    if not all(_is_int(k) and k in (1, 2, 3) for k in value):
        return "a list of the settings 1, 2 or 3 (input quadrants), e.g. [1, 2, 3]"
    if len(set(value)) != len(value):
        return "each setting once (one appears twice), e.g. [1, 2, 3]"
    return None


def _hidden(value: object) -> str | None:
    ok = isinstance(value, list) and value and all(_is_int(width) and width > 0 for width in value)
    return None if ok else "a non-empty list of positive integers (hidden layer widths), e.g. [500, 500]"


def _window(value: object) -> str | None:
    ok = _is_int(value) and (value == 0 or (0 < value <= MAX_AR_WINDOW and value % 2 == 1))
    return None if ok else f"an odd window width up to {MAX_AR_WINDOW}, or 0 (every earlier pixel)"


def _directory(value: object) -> str | None:
    return None if isinstance(value, str) and value else "a non-empty string (the data directory)"


def _subset(value: object) -> str | None:
    return None if value is None or (_is_int(value) and value > 0) else "null (all images) or a positive integer"


_CHECKS: dict[str, Callable[[object], str | None]] = {
    "quadrants": _quadrants, "epochs": _integer(1, MAX_EPOCHS, f"an integer from 1 to {MAX_EPOCHS}"),
    "patience": _integer(1), "batch_size": _integer(1),
    "lr": _real(lambda v: 0 < v < math.inf, "that is positive and finite, e.g. 0.001"), "z_dim": _integer(1),
    "hidden": _hidden, "autoregressive": _boolean, "ar_window": _window,
    "seed": _integer(0, MAX_SEED, f"an integer from 0 to {MAX_SEED}"), "objective": _one_of(RUN_OBJECTIVES),
    "alpha": _real(lambda v: 0 <= v <= 1, "from 0 to 1"), "iw_samples": _integer(1),
    "lr_decay": _real(lambda v: 0 < v <= 1, "above 0 and at most 1"), "preset": _one_of(PRESETS),
    "likelihood": _one_of(PIXEL_LIKELIHOODS), "dataset": _one_of(DATASETS), "binarize": _boolean,
    "data_dir": _directory, "train_subset": _subset, "num_samples": _integer(1),
}
_REALS = ("lr", "alpha", "lr_decay")


def read_run_config(path: str | Path) -> dict:
    """A run's config.json, checked: an object whose "config" passes RunConfig.from_dict, whose "finished" (if
    there) is true or false and whose "distributed" (if there) is an object with a positive "world_size". Returns
    the saved dict; RunFileError (one paragraph naming the file, the key and the problem) otherwise. OSError
    (missing, unreadable) goes through."""
    path = Path(path)
    remedy = "Restore the file from a copy of the run, or start a new run with train.py --out."
    saved = read_json(path, "config.json", remedy)

    def refuse(problem: str) -> RunFileError:
        return RunFileError(f"{path} {problem}; it was not written by train.py, or it was edited. Restore the value "
                            "train.py wrote (or the file from a copy of the run), or start a new run with --out.")

    if not isinstance(saved, dict):
        raise refuse(f"holds {_shown(saved)}, expected an object with the run's \"config\"")
    if "config" not in saved:
        raise refuse(f'has no "config" (its keys: {_keys(list(saved)) or "none"})')
    try:
        RunConfig.from_dict(saved["config"])
    except ValueError as error:
        raise refuse(f'is wrong in its "config": {error}') from None
    if "finished" in saved and not isinstance(saved["finished"], bool):
        raise refuse(f'has "finished" {_shown(saved["finished"])}, expected true or false')
    if "distributed" in saved:
        spread = saved["distributed"]
        if not isinstance(spread, dict):
            raise refuse(f'has "distributed" {_shown(spread)}, expected an object such as {{"world_size": 1}}')
        if "world_size" in spread and not (_is_int(spread["world_size"]) and spread["world_size"] > 0):
            raise refuse(f'has "distributed": "world_size" {_shown(spread["world_size"])}, expected a positive '
                         "integer (the number of processes)")
    return saved


def environment() -> dict:
    """Library versions and machine, recorded beside the configuration of every run."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
