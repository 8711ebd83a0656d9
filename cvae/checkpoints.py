"""Saving and loading: atomic writes for every artifact, and checkpoints that load with weights_only=True.

A checkpoint is a plain dict of tensors, numbers, strings and lists: ``{"model", "state_dict"}`` for a trained
model (its record, cvae.records), plus the optimizer, epoch, step, early-stopping state and RNG states for a
resumable training state. Nothing in it needs arbitrary unpickling, and anything that would is refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from . import jsonfiles
from .inputs import check_device


class CheckpointError(Exception):
    """A checkpoint is missing, truncated, unsafe, or does not match the run's configuration."""


class RunFileError(ValueError):
    """A file of a run (config.json, results.json, history.json) is unreadable, foreign or edited: the message names
    the file and what is wrong in it, in one paragraph."""


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
    tmp = temporary_path(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: ``.NAME.tmpPID`` beside it (see
    remove_stale_temporaries)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def write_text(path: str | Path, text: str) -> None:
    """Write text as UTF-8 (whatever the locale), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_texts(files: dict[Path, str]) -> None:
    """Write several text files (UTF-8) as one unit: every text goes to its temporary file first, and only when
    all are written and synced are they renamed into place, in order. If any write fails, none of the files is
    replaced and no temporary file is left."""
    temporaries = {}
    try:
        for path, text in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporaries[path] = tmp = temporary_path(path)
            tmp.write_text(text, encoding="utf-8")
            _fsync(tmp)
        for path, tmp in temporaries.items():
            os.replace(tmp, path)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path, what: str = "file",
              remedy: str = "Restore it from a copy, or re-run the command that writes it.",
              limit: int = jsonfiles.MAX_BYTES) -> Any:
    """The JSON value in a UTF-8 file, read with bounds (``cvae.jsonfiles``: at most limit bytes, nesting, one value
    per key); RunFileError (naming the file, ending with remedy) if it breaks one, or is not UTF-8 or not JSON.
    OSError (missing, unreadable) goes through."""
    path = Path(path)
    try:
        return jsonfiles.read(path, limit)
    except jsonfiles.JSONProblem as problem:
        raise RunFileError(f"{path} is unreadable, {problem}: it is truncated, corrupt, or not the {what} this "
                           f"program writes. {remedy}") from None


# What torch's C++ writer says when a write fails: it raises RuntimeError, not OSError, for a full disk.
_WRITE_FAILED = ("PytorchStreamWriter failed", "file write failed", "unexpected pos", "iostream error",
                 "inline_container")
NEARLY_FULL = 1 << 20  # free bytes below which a failed write is put down to a full filesystem


def _drop_tracebacks(error: BaseException | None) -> None:
    """Drop the tracebacks of error and of the errors it was raised from or during: torch's frames in them hold
    its writer, whose open file would keep the space of the removed temporary file in use for as long as the
    error is kept."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


def save(obj: dict, path: str | Path) -> None:
    """torch.save, atomically. A write that fails (torch raises RuntimeError for a full disk, a missing permission)
    is an OSError: the system's error when torch names it or opening the file meets it (EACCES, EROFS, ...), ENOSPC
    when the filesystem is full, EIO otherwise; the file already at ``path`` is left as it was."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as error:
            try:  # the temporary file still takes its space here
                stats = os.statvfs(tmp.parent)
                full = stats.f_bavail * stats.f_frsize < NEARLY_FULL
            except OSError:
                full = False
            if not full and not any(marker in str(error) for marker in _WRITE_FAILED):
                raise
            _drop_tracebacks(error)
            system = _system_error(error, tmp)
            if system is not None and system.errno != errno.ENOSPC:  # a cause of its own: not the disk
                raise OSError(system.errno, f"{system.strerror} (torch could not write the checkpoint: "
                              f"{describe(error)})", str(path)) from error
            if full or system is not None:
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (torch could not write the checkpoint: "
                              f"{describe(error)})", str(path)) from error
            raise OSError(errno.EIO, f"torch could not write the checkpoint ({describe(error)}): the disk may be "
                          "full, over quota or failing", str(path)) from error


_STRERROR = re.compile(r"strerror: ([^.\n]+)")  # torch's "open file failed with strerror: Permission denied"
_ERRNOS = {os.strerror(code): code for code in errno.errorcode}


def _system_error(error: RuntimeError, tmp: Path) -> OSError | None:
    """The system's error behind torch's RuntimeError: the one its message names, or the one opening the file for
    writing meets now (a missing permission, a read-only filesystem); None when neither tells."""
    named = _STRERROR.search(str(error))
    if named and named.group(1).strip() in _ERRNOS:
        code = _ERRNOS[named.group(1).strip()]
        return OSError(code, os.strerror(code))
    try:
        with open(tmp, "ab"):
            pass
    except OSError as system:
        return system
    return None


_TEMPORARY = re.compile(r"\..+\.tmp([0-9]+)")


def _alive(pid: int) -> bool:
    """Whether pid is a live process on this machine (or not one to judge: 0, or this process)."""
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (OverflowError: above any process id)
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(directory: str | Path, min_age_s: float = 0.0) -> list[Path]:
    """Remove the temporary files ``.NAME.tmpPID`` (see atomic_path) under directory, recursively, that a process
    killed before its rename left: those whose PID is not a live process on this machine (and, with min_age_s,
    not modified for that long). Returns the removed paths; a missing directory has none."""
    removed = []
    now = time.time()
    for root, _, names in os.walk(directory):
        for name in names:
            match = _TEMPORARY.fullmatch(name)
            path = Path(root) / name
            if not match or _alive(int(match.group(1))):
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.is_symlink() or not path.is_file() or now - path.stat().st_mtime < min_age_s:
                    continue
                path.unlink()
                removed.append(path)
    return removed


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """torch.load with weights_only=True; a clear CheckpointError for a missing, corrupt or unsafe file, and a
    ValueError for a map_location that this machine does not have (CUDA missing), which no file could help."""
    path = Path(path)
    if isinstance(map_location, str | torch.device):
        map_location = check_device(map_location, "map_location")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file: the path names a folder where "
                              "train.py writes a checkpoint file. Give the run directory train.py wrote (its "
                              f"checkpoints are files such as q1/cvae.pt), or move that directory away.")
    if not path.is_file():
        if path.exists():
            raise CheckpointError(f"checkpoint {path} is not a regular file. Give the run directory train.py "
                                  "wrote, or re-run training.")
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
