"""Running under ``torchrun``: the process group and the few collectives the library needs.

``torchrun --nproc_per_node N train.py ...`` starts N copies of a script with WORLD_SIZE, RANK and
LOCAL_RANK in their environment. ``init_from_env`` joins them into a process group (nccl on CUDA, gloo on
CPU); without torchrun it does nothing and every helper below is a no-op, so a single process is
unaffected. Collectives time out after ``CVAE_DIST_TIMEOUT`` seconds (default 600), so a
process whose peer died or hangs exits with an error instead of waiting forever.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT_ENV = "CVAE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
# what gloo says when a peer crashed or stopped answering (a plain RuntimeError from DDP's backward hooks, a
# DistBackendError from the other collectives); nccl's watchdog aborts the process itself, with a log message
_LOST_PEER_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out")


class DistributedError(Exception):
    """The torchrun environment cannot be used (e.g. a device that the backends do not support)."""


def launched() -> bool:
    """Whether this process was started by torchrun (or anything else that sets its environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise DistributedError(f"{TIMEOUT_ENV}={text!r} is not valid: give the process-group timeout as a "
                               f"positive number of seconds, e.g. {TIMEOUT_ENV}=600.")
    return seconds


def init_from_env(device: torch.device) -> torch.device:
    """Join torchrun's process group and return this process's device; without torchrun, return ``device``.

    CUDA: each process takes the GPU of its LOCAL_RANK (backend nccl); CPU: backend gloo.
    """
    if not launched() or dist.is_initialized():
        return device
    if device.type not in ("cpu", "cuda"):
        raise DistributedError(f"torchrun runs on cpu (gloo) or cuda (nccl), not on {device.type}: "
                               "give --device cpu or --device cuda.")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=timedelta(seconds=timeout_seconds()))
    return device


def active() -> bool:
    """Whether this process is one of several in a process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the one process that writes files and prints (every process without torchrun)."""
    return rank() == 0


def _backend_device(tensor: torch.Tensor) -> torch.device:
    """Where a tensor must be for a collective: the current GPU under nccl, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``tensor`` over all processes (a new tensor on tensor's device)."""
    if not active():
        return tensor
    total = tensor.detach().to(_backend_device(tensor), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise mean of ``tensor`` over all processes."""
    return all_reduce_sum(tensor) / world_size() if active() else tensor


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any one (e.g. a stop request that reached one process)."""
    if not active():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)])).item() > 0)


def gather_tensors(tensor: torch.Tensor) -> torch.Tensor:
    """The concatenation, in rank order, of every process's 1-D ``tensor`` (lengths may differ), on every
    process; ``tensor`` itself in a single process."""
    if not active():
        return tensor
    device = _backend_device(tensor)
    lengths = all_reduce_sum(torch.nn.functional.one_hot(torch.tensor(rank()), world_size()) * tensor.numel())
    padded = torch.zeros(int(lengths.max()), dtype=tensor.dtype, device=device)  # all_gather needs equal sizes
    padded[:tensor.numel()] = tensor.to(device)
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(n)] for part, n in zip(parts, lengths)]).to(tensor.device)


def barrier() -> None:
    """Wait until every process is here (e.g. until rank 0 has written a file the others read)."""
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another process died or stopped responding."""
    return active() and isinstance(error, RuntimeError) and any(marker in str(error) for marker in _LOST_PEER_MARKERS)


def command(script: str) -> str:
    """How to run ``script`` the way this process was run: ``python train.py`` or its torchrun form."""
    if not active():
        return f"python {script}"
    return f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', world_size())} {script}"


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other processes (e.g. provisioning data into a shared
    directory); the others start it only once every process has reached it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
