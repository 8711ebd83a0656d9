"""Where the networks run: a device named as the user names it, resolved to a ``torch.device``.

    resolve("auto")          # cuda if available, else mps, else cpu
    resolve("cuda:1")        # a ValueError that says so when there is no such device
    resolve(torch.device("cpu"))

``fit(device=...)`` and the commands' ``--device`` (``cvae.paper.cli.resolve_device``) both resolve here.
"""

from __future__ import annotations

import torch

KINDS = ("cuda", "mps", "cpu")  # what auto tries, in this order


def available() -> dict[str, bool]:
    """Which kinds of device this machine has (torch's view)."""
    mps = getattr(torch.backends, "mps", None)
    return {"cpu": True, "cuda": torch.cuda.is_available(), "mps": bool(mps and mps.is_available())}


def resolve(device: str | torch.device, given_as: str = "device") -> torch.device:
    """The device of a name: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N", "mps", or a torch.device.

    A device that is not known, or not on this machine, is a ValueError that says what to give instead;
    ``given_as`` is how the caller's user gave it, for the message: "device" (a keyword argument,
    device='cuda') or a command-line flag ("--device": --device cuda).
    """
    shown = (lambda value: f"{given_as} {value}") if given_as.startswith("-") else \
        (lambda value: f"{given_as}={value!r}")
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device
    else:
        raise ValueError(f"{given_as} must be 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device, got a "
                         f"{type(device).__name__}")
    found = available()
    if name == "auto":
        return torch.device(next(kind for kind in KINDS if found[kind]))
    kind = name.split(":")[0]
    if kind not in found:
        quoted = f"{given_as} {name!r}" if given_as.startswith("-") else shown(name)
        raise ValueError(f"{quoted} is not a device name: use auto, cpu, cuda (or cuda:N) or mps.")
    if not found[kind]:
        raise ValueError(f"{shown(name)} was asked for, but {kind} is not available on this machine (torch sees no "
                         f"such device). Use {shown('cpu')} or {shown('auto')}.")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        resolved = None
    if resolved is None or (kind == "cuda" and (resolved.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"{shown(name)} is not a device on this machine: use cpu, mps, cuda or cuda:N with N below "
                         f"{torch.cuda.device_count()} (the number of CUDA devices).")
    return resolved
