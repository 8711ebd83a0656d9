"""Checks of the tensors users hand to the library: shapes, dtypes, finite values, the likelihood's support.

Each failure is a ValueError that names the argument, says what was found and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .settings import is_integer


def check_matrix(value: object, name: str, columns: int, what: str, dtype: torch.dtype | None = None, *,
                 integer: bool = False) -> torch.Tensor:
    """value must be a floating-point tensor (N, columns) of finite numbers (of ``dtype``, the model's, when
    given), or with ``integer`` an integer tensor (N, columns) (class indices; any integer dtype but bool, and
    ``dtype`` is not asked for); returned unchanged. what: the name of the expected width in messages, e.g.
    "x_dim".
    """
    if not isinstance(value, torch.Tensor):
        convert = "torch.long" if integer else "torch.float32"
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, {what}={columns}), got a {type(value).__name__}. "
                         f"Convert it with torch.as_tensor({name}, dtype={convert}).")
    if integer:
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor of class indices (the likelihood is categorical), "
                             f"got dtype {value.dtype}. Convert it with {name}.long() once it holds whole numbers.")
    elif not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}. "
                         f"Convert it with {name}.float().")
    if dtype is not None and not integer and value.dtype != dtype:
        raise ValueError(f"{name} is {value.dtype} but the model is {dtype}: convert one of them, e.g. "
                         f"{name}.to({dtype}).")
    if value.dim() != 2 or value.shape[1] != columns:
        hint = f" (for one feature per example use {name}.reshape(-1, 1))" if value.dim() == 1 and columns == 1 else ""
        raise ValueError(f"{name} must have shape (N, {what}={columns}), got {tuple(value.shape)}{hint}.")
    if value.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(value.shape)}): give at least one example.")
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        raise ValueError(f"{name} holds a non-finite value, {value[bad[0], bad[1]].item()} at row {bad[0]}, column "
                         f"{bad[1]}: every value must be a finite number.")
    return value


def check_data(model: torch.nn.Module, x: object, y: object, names: tuple[str, str] = ("x", "y")) -> None:
    """x (N, model.x_dim) and y (N, model.y_dim), finite, with y in the support of model.likelihood. x is of the
    model's dtype; so is y, unless the likelihood is discrete (``Likelihood.discrete``, Categorical): then y is
    an integer tensor of class indices."""
    dtype = next(model.parameters()).dtype
    check_matrix(x, names[0], model.x_dim, "x_dim", dtype)
    check_matrix(y, names[1], model.y_dim, "y_dim", dtype, integer=model.likelihood.discrete)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same number of rows (one per example), got "
                         f"{x.shape[0]} and {y.shape[0]}.")
    model.likelihood.check_support(y, names[1])


def check_num_samples(num_samples: object, name: str = "num_samples") -> int:
    """num_samples as an int: a positive integer (Python's or numpy's), else a ValueError naming it."""
    if not is_integer(num_samples) or num_samples < 1:
        raise ValueError(f"{name} must be a positive integer, got {num_samples!r}")
    return int(num_samples)


def check_generator(generator: object, device: torch.device) -> torch.Generator | None:
    """generator: None, or a torch.Generator of the device's type (the draws are made on device); else a ValueError
    that says how to make one (a seed given in its place, a generator of another device)."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        hint = (f" To seed the draws, pass torch.Generator({_device_text(device)}).manual_seed({generator!r})."
                if is_integer(generator) else "")
        raise ValueError(f"generator must be a torch.Generator or None, got a {type(generator).__name__}.{hint}")
    if generator.device.type != device.type:
        raise ValueError(f"generator is a generator of {generator.device} but the draws are made on {device}: make "
                         f"it with torch.Generator({_device_text(device)}).")
    return generator


def _device_text(device: torch.device) -> str:
    return "" if device.type == "cpu" else repr(str(device))


def check_device(device: object, name: str = "device") -> torch.device:
    """device (a torch.device or its name) as a torch.device that this machine has; else a ValueError naming the
    argument and what is missing (not an error later that blames something else, such as the file being read)."""
    try:
        device = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError):
        raise ValueError(f"{name}={device!r} is not a device: give 'cpu', 'cuda', 'cuda:N' or 'mps'.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name}={str(device)!r}, but CUDA is not available on this machine (torch sees no CUDA "
                             "device): use 'cpu'.")
        if (device.index or 0) >= count:
            raise ValueError(f"{name}={str(device)!r}, but this machine has {count} CUDA device(s): use cuda:0 to "
                             f"cuda:{count - 1}, or 'cpu'.")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if not (mps and mps.is_available()):
            raise ValueError(f"{name}={str(device)!r}, but MPS is not available on this machine: use 'cpu'.")
    return device


def memory_bytes(device: torch.device) -> int | None:
    """The memory of a device (a CPU's or MPS's: the machine's RAM), or None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


class TooLarge(ValueError, MemoryError):
    """A call whose arguments ask for more memory than the device has, refused before it allocates: a ValueError (an
    argument to change) and a MemoryError (what the allocation would have met)."""


def check_fits(values: int, dtype: torch.dtype, device: torch.device, what: str, remedy: str) -> None:
    """A TooLarge error when ``values`` numbers of dtype (a lower bound on what a call allocates) exceed the
    device's memory: it says what (``what``: e.g. "num_samples=10**9 draws for 5 rows of x"), the GiB needed
    against the device's, and ``remedy``."""
    total = memory_bytes(device)
    needed = values * (torch.finfo(dtype).bits // 8 if dtype.is_floating_point else torch.iinfo(dtype).bits // 8)
    if total is not None and needed > total:
        raise TooLarge(f"{what} need at least {needed / 2**30:,.1f} GiB ({values:,} values of {dtype}), more than "
                         f"the {total / 2**30:,.1f} GiB of memory of {device}: {remedy}.")


@contextmanager
def naming(what: str) -> Iterator[None]:
    """Add a note to an allocation that fails in the block (MemoryError, or torch's out-of-memory RuntimeError):
    ``what`` asked for it (e.g. "num_samples=1000000 draws for 100 rows of x; draw fewer at a time"). The innermost
    note comes first."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if out_of_memory(error):
            error.add_note(what)
        raise


# what a failed allocation says: torch on the CPU and on CUDA (torch.cuda.OutOfMemoryError), MPS
OUT_OF_MEMORY_MARKERS = ("out of memory", "can't allocate memory", "Cannot allocate memory")


def out_of_memory(error: BaseException) -> bool:
    """Whether error is an allocation that failed (MemoryError, or torch's RuntimeError on any device)."""
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and any(marker in str(error) for marker in OUT_OF_MEMORY_MARKERS))
