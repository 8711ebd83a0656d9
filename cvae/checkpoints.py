"""Saving and loading: atomic writes for every artifact, and checkpoints that load with weights_only=True.

A checkpoint is a plain dict of tensors, numbers, strings and lists: ``{"kind", "config", "state_dict"}``
for a trained model, plus the optimizer, epoch, step, early-stopping state and RNG states for a
resumable training state. Nothing in it needs arbitrary unpickling, and anything that would is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


class CheckpointError(Exception):
    """A checkpoint is missing, truncated, unsafe, or does not match the run's configuration."""


_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def describe(error: BaseException) -> str:
    """The informative part of a torch loading error, on one line (without torch's boilerplate, which
    suggests loading with weights_only=False)."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.strip().startswith(_TORCH_BOILERPLATE)]
    text = " ".join(lines[:2]).rstrip(" .") if lines else type(error).__name__
    return text if len(text) <= 300 else text[:300] + " [...]"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it over
    ``path`` (atomic on POSIX). If the block fails, ``path`` is left as it was and the temporary
    file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def save(obj: dict, path: str | Path) -> None:
    """torch.save, atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """torch.load with weights_only=True; a clear CheckpointError for a missing, corrupt or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: the run is unfinished, or the file was "
                              "moved or deleted. Give the directory train.py wrote, or re-run training.")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors here
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely: {describe(error)}. It is truncated, corrupt, or "
            "holds objects that only arbitrary unpickling could rebuild (refused for safety). "
            "Re-run training to recreate it."
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not the dict this library "
                              "writes. Point at a checkpoint train.py wrote, or re-run training.")
    return obj


# what a checkpoint written before an option existed was made with
CHECKPOINT_DEFAULTS = {"autoregressive": False, "ar_window": 0, "likelihood": "bernoulli"}


def expect_config(checkpoint: dict, expected: dict, path: str | Path) -> None:
    """Refuse a checkpoint whose configuration differs from what the run's configuration says."""
    config = CHECKPOINT_DEFAULTS | checkpoint.get("config", {})
    wrong = {key: (config.get(key), value) for key, value in expected.items()
             if config.get(key) != value}
    if wrong:
        details = ", ".join(f"{key} is {got!r} but the run says {want!r}"
                            for key, (got, want) in wrong.items())
        raise CheckpointError(
            f"checkpoint {path} was made for another configuration: {details}. "
            "Point at the run that made it, or re-run training."
        )
