"""Checks of the tensors users hand to the library: shapes, dtypes, finite values, the likelihood's support.

Each failure is a ValueError that names the argument, says what was found and what was expected.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from .settings import is_integer


def shape_of(size: int | tuple[int, ...]) -> tuple[int, ...]:
    """An example's shape from a model's x_dim or y_dim: an int d is (d,), a shape is itself."""
    return (size,) if isinstance(size, int) else tuple(size)


def check_matrix(value: object, name: str, columns: int, what: str, dtype: torch.dtype | None = None, *,
                 integer: bool = False) -> torch.Tensor:
    """value must be a floating-point tensor (N, columns) of finite numbers (of ``dtype``, the model's, when
    given), or with ``integer`` an integer tensor (N, columns) (class indices; any integer dtype but bool, and
    ``dtype`` is not asked for); returned unchanged. what: the name of the expected width in messages, e.g.
    "x_dim".
    """
    return check_array(value, name, columns, what, dtype, integer=integer)


def check_array(value: object, name: str, size: int | tuple[int, ...], what: str, dtype: torch.dtype | None = None,
                *, integer: bool = False, one_item: bool = False) -> torch.Tensor:
    """``check_matrix`` for examples of any shape: value must be a tensor (N, *shape_of(size)), size a model's x_dim
    or y_dim (an int: (N, size), as check_matrix; a shape such as (1, 28, 28): (N, 1, 28, 28)). one_item: value is
    one item of a Dataset as a batch of one, and a message gives a position within the item.
    """
    shape = shape_of(size)
    flat = isinstance(size, int)
    expected = f"(N, {what}={size})" if flat else f"(N, {', '.join(map(str, shape))}) ({what}={size})"
    if not isinstance(value, torch.Tensor):
        convert = "torch.long" if integer else "torch.float32"
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected} (or a numpy array), got a "
                         f"{type(value).__name__}. Convert it with torch.as_tensor({name}, dtype={convert}).")
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
    if value.dim() != 1 + len(shape) or tuple(value.shape[1:]) != shape:
        hint = f" (for one feature per example use {name}.reshape(-1, 1))" if value.dim() == 1 and shape == (1,) else ""
        raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}{hint}.")
    if value.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(value.shape)}): give at least one example.")
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        if one_item:
            where = f"column {bad[1]}" if flat else f"position {tuple(bad[1:])}"
        else:
            where = f"row {bad[0]}, column {bad[1]}" if flat else f"example {bad[0]}, position {tuple(bad[1:])}"
        raise ValueError(f"{name} holds a non-finite value, {value[tuple(bad)].item()} at {where}: every value must "
                         "be a finite number.")
    return value


def check_data(model: torch.nn.Module, x: object, y: object, names: tuple[str, str] = ("x", "y"), *,
               one_item: bool = False) -> None:
    """x (N, *x_shape) and y (N, *y_shape) (the model's x_dim and y_dim: (N, x_dim) for an int), finite, with y in
    the support of model.likelihood. x is of the model's dtype; so is y, unless the likelihood is discrete
    (``Likelihood.discrete``, Categorical): then y is an integer tensor of class indices. one_item: x and y are one
    item of a Dataset as a batch of one (``check_array``)."""
    dtype = next(model.parameters()).dtype
    check_array(x, names[0], model.x_dim, "x_dim", dtype, one_item=one_item)
    check_array(y, names[1], model.y_dim, "y_dim", dtype, integer=model.likelihood.discrete, one_item=one_item)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same number of rows (one per example), got "
                         f"{x.shape[0]} and {y.shape[0]}.")
    model.likelihood.check_support(y[0] if one_item else y, names[1])


def from_numpy(value: object, dtype: torch.dtype | None = None) -> object:
    """A numpy array as a tensor that shares its memory (torch.from_numpy; a copy only where torch cannot share it,
    e.g. another byte order), a floating one converted to ``dtype`` (the model's) when given; anything else
    unchanged."""
    if not isinstance(value, np.ndarray):
        return value
    with warnings.catch_warnings():  # a read-only array (e.g. a memmap opened "r"): nothing here writes to it
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        try:
            tensor = torch.from_numpy(value)
        except (TypeError, ValueError):  # a byte order torch does not share: a copy
            try:
                tensor = torch.as_tensor(np.asarray(value, dtype=value.dtype.newbyteorder("=")))
            except (TypeError, ValueError):  # e.g. an array of objects: the checks name it
                return value
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


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
