"""What train.py and evaluate.py share: argument types that reject bad values with a clear message,
device selection, and the mapping of failures to one-paragraph errors and exit statuses (under torchrun,
from every process that has something of its own to say, and from rank 0 for what all of them agree on)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

import torch

from . import distributed
from .checkpoints import CheckpointError
from .data import DataError
from .distributed import DistributedError
from .training import NonFiniteLoss, TrainingInterrupted

EXIT_USAGE = 2  # bad input: nothing was changed
EXIT_FAILED = 1  # the run itself failed (e.g. a non-finite loss)
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Bad input from the user: the message says what was wrong, what was expected, what to do."""


def _integer(text: str, what: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid: {what} must be an integer of at least {minimum}.")
    return value


def positive_int(what: str) -> Callable[[str], int]:
    return lambda text: _integer(text, what, 1)


def non_negative_int(what: str) -> Callable[[str], int]:
    return lambda text: _integer(text, what, 0)


def quadrants(text: str) -> int:
    if text not in ("1", "2", "3"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid: the number of input quadrants must be 1, 2 or 3 (the model "
            "sees k of the four quadrants of a digit and predicts the rest), e.g. --quadrants 1 2 3.")
    return int(text)


def _real(text: str, what: str, accept: Callable[[float], bool], expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not accept(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: {what} must be {expected}.")
    return value


def positive_float(what: str) -> Callable[[str], float]:
    return lambda text: _real(text, what, lambda v: 0 < v < float("inf"), "a positive finite number, e.g. 1e-3")


def unit_interval(what: str) -> Callable[[str], float]:
    return lambda text: _real(text, what, lambda v: 0 <= v <= 1, "a number from 0 to 1, e.g. 0.5")


def decay_factor(what: str) -> Callable[[str], float]:
    return lambda text: _real(text, what, lambda v: 0 < v <= 1, "a number above 0 and at most 1, e.g. 0.95")


def odd_window(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not (text.isdecimal() and (int(text) == 0 or int(text) % 2 == 1)):
            raise argparse.ArgumentTypeError(f"{what} {text!r} is not valid: give an odd width such as 5, or 0 for "
                                             "every earlier pixel.")
        return int(text)
    return parse


def hidden_sizes(text: str) -> list[int]:
    parts = text.replace("-", ",").split(",")
    if not all(part.strip().isdecimal() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid: hidden layer widths must be positive integers separated by "
            "commas, e.g. --hidden 500,500.")
    return [int(part) for part in parts]


def resolve_device(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu. A named device that is not available is a UserError."""
    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(mps and mps.is_available())}
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if available[d]))
    kind = name.split(":")[0]
    if kind not in available:
        raise UserError(f"--device {name!r} is not a device this program knows: use auto, cpu, "
                        "cuda (or cuda:N) or mps.")
    if not available[kind]:
        raise UserError(f"--device {name} was asked for, but {kind} is not available on this "
                        "machine (torch sees no such device). Use --device cpu or --device auto.")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or (kind == "cuda" and (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {name} is not a device on this machine: use cpu, mps, cuda or "
                        f"cuda:N with N below {torch.cuda.device_count()} (the number of CUDA devices).")
    return device


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")


def _say(message: str, every_process: bool = False) -> None:
    """Print to stderr: under torchrun from rank 0 only (what every process would say alike), or with
    every_process from each process, prefixed with its rank."""
    if every_process and distributed.active():
        print(f"[rank {distributed.rank()}] {message.lstrip()}", file=sys.stderr)
    elif distributed.is_main():
        print(message, file=sys.stderr)


def lost_peer_message(error: RuntimeError) -> str:
    """A collective's failure, said plainly: which process, what the backend said (first sentence), what to do."""
    cause = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip().splitlines()[0]).split(". ")[0]
    return (f"error: process {distributed.rank()} of {distributed.world_size()} lost contact with the others "
            f"({cause}). Another process of this torchrun job exited or did not answer within "
            f"{distributed.timeout_seconds():.0f} s (the process-group timeout, {distributed.TIMEOUT_ENV}); "
            "its own output says why. Files already written are complete; an interrupted training "
            f"continues with: {distributed.command('train.py')} --resume RUN_DIR")


def run(main: Callable[[], int]) -> int:
    """Call main(); turn the failures a user can cause or meet into a message and an exit status; leave
    the process group (under torchrun) at the end."""
    try:
        return main()
    except (UserError, DistributedError) as error:
        _say(f"error: {error}")
        return EXIT_USAGE
    except (DataError, CheckpointError) as error:
        _say(f"error: {error}", every_process=True)
        return EXIT_USAGE
    except TrainingInterrupted as stopped:
        _say(f"\ninterrupted: {stopped}")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # outside the training loop, which turns signals into TrainingInterrupted
        _say("\ninterrupted. Every file already written is complete (each is written to a temporary "
             "file and renamed into place); run the command again to redo what was left.")
        return EXIT_INTERRUPTED
    except NonFiniteLoss as error:
        _say(f"error: {error}")
        return EXIT_FAILED
    except OSError as error:  # a full disk, a missing permission, a directory where a file should be
        _say(f"error: could not read or write a file: {error}. Files already there are intact (each "
             "is written to a temporary file and renamed into place). Free some space or fix the "
             "path or its permissions, then run again (python train.py --resume RUN_DIR continues "
             "an interrupted training run).", every_process=True)
        return EXIT_FAILED
    except RuntimeError as error:
        if not distributed.lost_peer(error):
            raise
        _say(lost_peer_message(error), every_process=True)
        return EXIT_FAILED
    finally:
        distributed.shutdown()
