"""What the commands share on the command line: argument types that reject bad values with a clear message,
device and precision selection, and the mapping of failures to one-paragraph errors and exit statuses (under
torchrun, from every process that has something of its own to say, and from rank 0 for what all of them agree on).

Torch-free: a command's --help imports nothing heavy. torch is imported by ``resolve_device`` when a command runs,
and ``run`` recognizes the failures of cvae's modules among the modules already imported (a failure of a module
that was never imported cannot have happened).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from .choices import IMAGE_SIDE, MAX_AR_WINDOW, MAX_EPOCHS, MAX_SEED, PRECISIONS

if TYPE_CHECKING:
    import torch

EXIT_USAGE = 2  # bad input: nothing was changed
EXIT_FAILED = 1  # the run itself failed (e.g. a non-finite loss)
EXIT_INTERRUPTED = 130
SEED_LIMIT = MAX_SEED + 1  # seeds are 0 .. 2^32 - 1: every generator seed built from one stays far inside 64 bits


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


def checked(what: str, kind: type, check: Callable[[object], str | None]) -> Callable[[str], object]:
    """A command-line value of kind int or float that ``check`` (a declaration's, e.g. cvae.settings') accepts;
    otherwise an argparse error saying what ``check`` expected."""
    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            value = None
        problem = check(value)  # None (not a number of that kind) fails every check
        if problem:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: {what} must be {problem}.")
        return value
    return parse


def positive_int(what: str) -> Callable[[str], int]:
    return lambda text: _integer(text, what, 1)


def seed(text: str) -> int:
    """--seed: 0 .. 2^32 - 1. Generators are seeded with seed * 1_000_003 + epoch (the data order), seed * 10 + k
    (initial weights), seed + r * 1_000_003 (noise, evaluation blocks): all stay far below torch's 2^64."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid: --seed must be an integer from 0 to {SEED_LIMIT - 1} (2^32 - 1), so that the "
            "generator seeds built from it (seed * 1000003 + epoch, seed * 10 + k) stay within the random "
            f"generator's 64-bit range. A seed from the clock fits as $(( $(date +%s) % {SEED_LIMIT} )).")
    return value


def epochs(text: str) -> int:
    """--epochs: 1 .. MAX_EPOCHS."""
    value = _integer(text, "--epochs", 1)
    if value > MAX_EPOCHS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid: --epochs must be at most {MAX_EPOCHS}: the data order of epoch e is drawn "
            "with the seed seed * 1000003 + e, so more epochs would repeat the orders of the next --seed (early "
            "stopping ends a run long before, see --patience).")
    return value


def non_negative_int(what: str) -> Callable[[str], int]:
    return lambda text: _integer(text, what, 0)


def quadrants(text: str) -> int:
    if text not in ("1", "2", "3"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid: the number of input quadrants must be 1, 2 or 3 (the model "
            "sees k of the four quadrants of a digit and predicts the rest), e.g. --quadrants 1 2 3.")
    return int(text)


def odd_window(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not (text.isdecimal() and (int(text) == 0 or int(text) % 2 == 1)):
            raise argparse.ArgumentTypeError(f"{what} {text!r} is not valid: give an odd width such as 5, or 0 for "
                                             "every earlier pixel.")
        if int(text) > MAX_AR_WINDOW:
            raise argparse.ArgumentTypeError(
                f"{what} {text!r} is not valid: give an odd width of at most {MAX_AR_WINDOW} (a window of "
                f"{MAX_AR_WINDOW} already covers the whole {IMAGE_SIDE}x{IMAGE_SIDE} image), or 0 for every "
                "earlier pixel.")
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
    """auto: cuda, then mps, then cpu (``cvae.devices.resolve``, which fit uses too). A named device that is not
    available is a UserError."""
    from cvae import devices

    try:
        return devices.resolve(name, given_as="--device")
    except ValueError as error:
        raise UserError(str(error)) from None


def program(command: str) -> str:
    """The name a command's usage line shows: the root script run (train.py), ``python -m cvae train`` or
    ``cvae-sohn train``."""
    name = Path(sys.argv[0]).name
    if name == "__main__.py":
        return f"python -m cvae {command}"
    return name if name.endswith(".py") else f"{name} {command}"


def start_torch() -> None:
    """Set torch's numerics for a command that trains or evaluates; call it first, before the data is loaded and
    before any torch operation."""
    import torch

    # Flush denormal floats to zero. Adam's moments of weights whose input pixel is rarely non-zero decay into
    # denormals after a few epochs, and denormal arithmetic made CPU training epochs 2x slower. Set before torch
    # starts its OpenMP threads, because those threads inherit the setting only when they are created (setting it
    # later reaches the calling thread alone). Set by the commands, not on import: a program that only imports
    # cvae keeps torch's numerics as they were.
    torch.set_flush_denormal(True)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (default: auto)")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="of the networks' matrix products in the evaluation: fp32, or bf16 (autocast; every "
                        "sum stays float32); auto picks bf16 where the device multiplies it natively and fast (a "
                        "CUDA GPU with bf16, a CPU with AMX, an AMD CPU with AVX512-BF16), fp32 elsewhere (default: "
                        "auto)")


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation's options beyond the CLL (cvae.paper.sample_evaluation): --binarizations T and --sample-k K."""
    parser.add_argument("--binarizations", type=positive_int("--binarizations"), default=1, metavar="T",
                        help="draws b ~ Bernoulli(t) per test image for the true CLL of binarized outputs, "
                        "-E_b log p(b|x), computed where the Bernoulli score of grayscale targets t is no "
                        "log-probability (not with --binarize or the continuous Bernoulli). With one draw the "
                        "estimate is unbiased and its standard error over images includes the binarization noise; "
                        "more draws lower that noise (default: 1)")
    parser.add_argument("--sample-k", type=non_negative_int("--sample-k"), default=10, metavar="K",
                        help="predictions per test image for the samples judged as samples: the best-of-K squared "
                        "error, a classifier's plausibility, diversity and distinct labels of the completed images, "
                        "the CVAE's KL(q||p) and active units; 0 leaves them out. The classifier is trained on the "
                        "data set's training split when first needed (a few minutes, once per data directory) "
                        "(default: 10)")


def _imported(name: str) -> ModuleType | None:
    """The module of that name, the experiment's (cvae.paper) or else the library's (cvae), if it was imported (None
    otherwise), to look at without importing it."""
    return sys.modules.get(f"{__package__}.{name}") or sys.modules.get(f"cvae.{name}")


def _raised(error: BaseException, *classes: str) -> bool:
    """Whether error is an instance of one of classes ("module.Class" within cvae), looked up among the modules
    already imported: an error of a class whose module was never imported cannot have been raised."""
    for name in classes:
        module, _, cls = name.rpartition(".")
        found = getattr(_imported(module), cls, None)
        if found is not None and isinstance(error, found):
            return True
    return False


def _say(message: str, every_process: bool = False) -> None:
    """Print to stderr: under torchrun from rank 0 only (what every process would say alike), or with
    every_process from each process, prefixed with its rank."""
    distributed = _imported("distributed")  # without it, no process group: one process
    if every_process and distributed is not None and distributed.active():
        print(f"[rank {distributed.rank()}] {message.lstrip()}", file=sys.stderr)
    elif distributed is None or distributed.is_main():
        print(message, file=sys.stderr)


def lost_peer_message(error: RuntimeError) -> str:
    """A collective's failure, said plainly: which process, what the backend said (first sentence), what to do."""
    from cvae import distributed

    cause = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip().splitlines()[0]).split(". ")[0]
    return (f"error: process {distributed.rank()} of {distributed.world_size()} lost contact with the others "
            f"({cause}). Another process of this torchrun job exited or did not answer within "
            f"{distributed.timeout_seconds():.0f} s (the process-group timeout, {distributed.TIMEOUT_ENV}); "
            "its own output says why. Files already written are complete; an interrupted training "
            f"continues with: {distributed.command('train.py')} --resume RUN_DIR")


def out_of_memory_message(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = re.sub(r"^\[enforce fail at [^\]]*\]\s*(data\.\s*)?", "", lines[0]) if lines else type(error).__name__
    cause = cause if len(cause) <= 200 else cause[:200] + " [...]"
    notes = getattr(error, "__notes__", None)
    if notes:  # what asked for the memory (cvae.inputs.naming)
        return (f"error: out of memory ({cause.rstrip('. ')}) for {notes[-1].rstrip('. ')}; or free memory, or use "
                "a device with more. Files already written are intact (each is written to a temporary file and "
                "renamed into place).")
    return (f"error: out of memory ({cause.rstrip('. ')}). Lower what sets the size of the job: --batch-size, "
            "--hidden, --z-dim or --iw-samples for training (in a new run: --resume keeps a run's values), "
            "--num-samples or --test-subset for an evaluation; or free memory, or use a device with more. Files "
            "already written are intact (each is written to a temporary file and renamed into place).")


def _raise_keyboard_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a batch system's stop, torchrun stopping its workers) is met like Ctrl-C: the same message
    and status instead of a silent death. Inside the training loop both only set its stop flag."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def failure(error: BaseException) -> tuple[str, int, bool] | None:
    """How run() reports a failure: (message, exit status, whether every process says it under torchrun), or None
    for an error that is a bug (its traceback is shown)."""
    if isinstance(error, UserError) or _raised(error, "distributed.DistributedError", "locks.DirectoryInUse"):
        return f"error: {error}", EXIT_USAGE, False
    if _raised(error, "data.DataError", "checkpoints.CheckpointError", "checkpoints.RunFileError"):
        return f"error: {error}", EXIT_USAGE, True
    if _raised(error, "training.TrainingInterrupted"):
        return f"\ninterrupted: {error}", EXIT_INTERRUPTED, False
    if isinstance(error, KeyboardInterrupt):  # outside the training loop, which turns signals into TrainingInterrupted
        return ("\ninterrupted. Every file already written is complete (each is written to a temporary file and "
                "renamed into place); run the command again to redo what was left.", EXIT_INTERRUPTED, False)
    if isinstance(error, MemoryError):
        return out_of_memory_message(error), EXIT_FAILED, True
    if _raised(error, "training.NonFiniteLoss"):
        return f"error: {error}", EXIT_FAILED, False
    if isinstance(error, OSError):  # a full disk, a missing permission, a directory where a file should be
        how = " ".join(getattr(error, "__notes__", ())) or "run the command again"  # a command's own, e.g. --resume
        return (f"error: could not read or write a file: {error}. Files already there are intact (each is written "
                "to a temporary file and renamed into place). Free some space or fix the path or its permissions, "
                f"then {how}.", EXIT_FAILED, True)
    if isinstance(error, RuntimeError):
        distributed = _imported("distributed")
        if distributed is not None and distributed.lost_peer(error):
            return lost_peer_message(error), EXIT_FAILED, True
        from cvae.inputs import out_of_memory  # torch is imported by now: the error came from it

        if out_of_memory(error):
            return out_of_memory_message(error), EXIT_FAILED, True
    return None


def run(main: Callable[[], int]) -> int:
    """Call main(); turn the failures a user can cause or meet into a message and an exit status (``failure``);
    leave the process group (under torchrun) at the end."""
    for stream in (sys.stdout, sys.stderr):  # "±" on a console whose locale cannot show it: escaped, no traceback
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        with _sigterm_as_interrupt():
            return main()
    except (Exception, KeyboardInterrupt) as error:
        known = failure(error)
        if known is None:
            raise
        message, status, every_process = known
        _say(message, every_process)
        return status
    finally:
        distributed = _imported("distributed")
        if distributed is not None:
            distributed.shutdown()
