"""Checks of the tensors users hand to the library: shapes, dtypes, finite values, the likelihood's support.

Each failure is a ValueError that names the argument, says what was found and what was expected.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


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


def check_num_samples(num_samples: object) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    return num_samples


def check_generator(generator: object, device: torch.device) -> None:
    """None, or a torch.Generator on the kind of device the draws are made on (the model's)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got a {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the model is on {device}, where the draws are "
                         f"made: give a generator there, torch.Generator({str(device)!r}).manual_seed(seed)")
