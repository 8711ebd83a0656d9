"""One job per directory: an exclusive lock on DIR/.cvae.lock, held for the whole job.

``fit(checkpoint_dir=...)`` holds it on its checkpoint directory, and the paper's commands (train.py, evaluate.py,
cvae-sohn convergence and autoregressive-baseline) on their run directory, before they read or write anything
there. A second job on the same directory stops at once with DirectoryInUse (the commands: an error, exit 2),
which names the directory and the process holding it, and changes nothing: two jobs would otherwise overwrite
each other's files, or one would resume the other's state.

The lock is ``fcntl.flock`` on the lock file, so it cannot go stale: the kernel releases it when the process that
holds it ends, however it ends (an exception, a signal, kill -9, the out-of-memory killer). A lock file left
behind by a killed job holds no lock; the next job takes it over. The holder writes its process id, host and
command into the file, for the message of a job that finds the directory in use, and removes the file when it
lets go (a job that locked a file removed meanwhile sees that it is no longer the one at the path, and locks
the new one). A directory that the job created for the lock, and that is still empty when it ends, goes too, so
a job that failed early leaves nothing behind.

Under torchrun only rank 0 takes the lock, and every process learns (one all-reduce) whether it got it, so that
all stop or all go on: no process waits for a peer that has left. flock is advisory, between jobs that take it;
on NFS, Linux emulates it with locks that the server sees, so it holds across machines there too.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import distributed, jsonfiles

LOCK_NAME = ".cvae.lock"


class DirectoryInUse(Exception):
    """Another job holds the directory's lock: the message names the directory and the job holding it."""


class _Held:
    def __init__(self, fd: int, path: Path, created: list[Path]) -> None:
        self.fd, self.path, self.created = fd, path, created

    def release(self) -> None:
        """Remove the lock file (while still holding it), let go, and remove the directories made for it if
        they are empty."""
        try:
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        _remove_empty(self.created)


def _make_directories(path: Path) -> list[Path]:
    """mkdir -p path; return the directories this call created, outermost first."""
    missing = []
    for part in (path, *path.parents):
        if part.exists() or part.is_symlink():
            break
        missing.append(part)
    created = []
    for part in reversed(missing):
        try:
            part.mkdir()
        except FileExistsError:  # made meanwhile by another job: not ours to remove
            continue
        created.append(part)
    return created


def _remove_empty(created: list[Path]) -> None:
    for part in reversed(created):
        try:
            part.rmdir()
        except OSError:  # not empty (the job wrote into it), or gone
            return


def _holder(fd: int) -> dict:
    try:
        info = jsonfiles.loads(os.pread(fd, 4096, 0))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _in_use(run_dir: Path, path: Path, holder: dict) -> DirectoryInUse:
    parts = [f"process {holder['pid']}" if isinstance(holder.get("pid"), int) else None,
             holder.get("command") if isinstance(holder.get("command"), str) else None,
             f"on {holder['host']}" if holder.get("host") not in (None, socket.gethostname()) else None]
    who = ", ".join(str(part) for part in parts if part)
    return DirectoryInUse(f"{run_dir} is in use by another job{f' ({who})' if who else ''}, which holds its lock "
                          f"{path}. Two jobs on one directory would overwrite each other's files, so this one did "
                          "nothing. Wait until that job has ended (or stop it), then run this command again, or "
                          "choose another directory.")


def _acquire(run_dir: Path, create: bool, command: str) -> _Held | None:
    """Lock run_dir (made first when create); None, without a lock, when run_dir is not a directory or (without
    create) no lock file can be made in it: the caller's own checks then refuse it (no run, not writable)."""
    created = _make_directories(run_dir) if create else []
    path = run_dir / LOCK_NAME
    while True:
        if not run_dir.is_dir():
            return None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the directory was removed meanwhile by the job that made it
            created += _make_directories(run_dir) if create else []
            continue
        except OSError:  # e.g. a read-only directory: this job can write nothing there, its own checks say so
            if create:
                raise
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            _remove_empty(created)
            raise _in_use(run_dir, path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # its holder removed this file as it let go: lock the one now at the path
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError:  # only the message of a second job would lack it (e.g. on a full disk)
        pass
    return _Held(fd, path, created)


@contextmanager
def hold(run_dir: str | Path, *, create: bool = False, command: str = "") -> Iterator[None]:
    """Hold run_dir's lock for the block; DirectoryInUse at once if another job holds it.

    create: make run_dir (and its parents) first, for a job that starts a run there; what was made is removed
    again at the end if it is still empty. Without create, a run_dir that is not a directory is not locked (the
    caller's own check says that it is not a run). command: what this job is, for the other job's message.
    """
    run_dir = Path(run_dir)
    held, error = None, None
    if distributed.is_main():
        try:
            held = _acquire(run_dir, create, command)
        except Exception as failure:  # every process must reach the agreement below
            error = failure
    if distributed.any_process(error is not None):
        if error is not None:
            raise error
        raise DirectoryInUse(f"rank 0 could not take the lock of {run_dir}; its message says why.")  # said by rank 0
    try:
        yield
    finally:
        if held is not None:
            held.release()
