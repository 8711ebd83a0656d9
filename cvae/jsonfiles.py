"""Reading a JSON file with bounds: its size, its nesting, and one value per key.

Every JSON file the package reads back (a run's config.json, results.json and history.json, train --config's file
of options, a run directory's lock) goes through ``read``: at most ``limit`` bytes are read (so that a device such
as /dev/zero, or a file that never ends, is refused instead of filling the memory), the bytes must be UTF-8 and
JSON, objects nested at most MAX_DEPTH deep (a deeper one would exhaust Python's recursion) and no object may hold a
key twice (json.loads would keep the last value silently). Each refusal is a JSONProblem, a ValueError whose
message says what is wrong in words that follow the file's name ("PATH is ..."); the caller adds the name and the
remedy.

Torch-free: train --config reads its file before torch is needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_BYTES = 16 << 20  # far above any file this package writes except a long history.json (``read``'s limit)
MAX_DEPTH = 32  # the files this package writes nest 4 levels at most


class JSONProblem(ValueError):
    """A JSON file that is too large, not UTF-8, not JSON, nested too deeply or with a key twice: str() says which,
    worded to follow the file's name."""


def read(path: str | Path, limit: int = MAX_BYTES) -> Any:
    """The JSON value in the file at path, read with the bounds of the module's docstring. A JSONProblem says what
    is wrong with it; OSError (missing, unreadable, a directory) goes through."""
    with open(path, "rb") as handle:
        blob = handle.read(limit + 1)
    if len(blob) > limit:
        raise JSONProblem(f"larger than {_size(limit)}, far larger than a JSON file of this program (or a device "
                          "that never ends, such as /dev/zero)")
    return loads(blob)


def loads(blob: bytes) -> Any:
    """The JSON value of bytes, checked as ``read`` checks a file's (except for the size)."""
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JSONProblem(f"not UTF-8 text (byte {error.start} is not)") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except JSONProblem:
        raise
    except json.JSONDecodeError as error:
        raise JSONProblem(f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    except RecursionError:
        raise JSONProblem(f"nested too deeply (objects or lists inside one another more than {MAX_DEPTH} levels "
                          "deep)") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise JSONProblem(f"not valid JSON ({error})") from None
    if depth(value) > MAX_DEPTH:
        raise JSONProblem(f"nested too deeply (objects or lists inside one another more than {MAX_DEPTH} levels "
                          "deep)")
    return value


def depth(value: Any) -> int:
    """How deep objects and lists nest in a JSON value (a scalar 0, {} or [] 1), counted without recursion and up
    to MAX_DEPTH + 1."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                break
            pending.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise JSONProblem(f'not one value per key (an object holds the key "{_short(key)}" twice; which value '
                              "counts depends on the program that reads it)")
        value[key] = item
    return value


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:60] + "..."


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"
