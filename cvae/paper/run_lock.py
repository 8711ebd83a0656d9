"""One job per run directory: the library's directory lock (``cvae.locks``), and the check of a directory path
given on the command line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from cvae.locks import LOCK_NAME, DirectoryInUse, hold  # noqa: F401 (the commands' lock, named here)

from .cli import UserError


def check_directory_path(path: str | Path, option: str) -> None:
    """Refuse a directory path that is, or lies under, a symbolic link leading nowhere (a dangling link, or a
    loop of links): the directory could not be created there ('File exists')."""
    path = Path(path)
    for part in (path, *path.parents):
        if not part.is_symlink() or part.exists():
            continue
        try:
            os.stat(part)
            loop = False
        except OSError as error:
            loop = error.errno == errno.ELOOP
        what = "a loop of symbolic links" if loop else \
            f"a symbolic link to {os.readlink(part)}, which does not exist"
        raise UserError(f"{option} {path}: {part} is {what}, so no directory can be made there. Remove or fix "
                        f"the link, or choose another {option}.")
