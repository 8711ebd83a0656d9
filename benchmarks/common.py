"""What the benchmarks share: the machine description, timing, the dense matmul reference, the data,
our training step exactly as ``cvae.training.fit`` runs it, and FLOP counting from layer shapes.

FLOP counting rule (per image, float32 multiply-adds counted as 2 FLOPs):
    forward of a Linear layer       = 2 * fan_in * fan_out
    backward of a Linear layer      = 2 x its forward (input gradient + weight gradient), except the
                                      first layer of a net whose input needs no gradient: 1 x its
                                      forward (weight gradient only)
    frozen layer (no_grad)          = forward only
Elementwise work (activations, likelihoods, KL, the optimizer) is not counted: it is a few percent of
the matmul FLOPs at these widths.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from cvae import precision
from cvae.paper import cli
from cvae.paper.data import load_splits
from cvae.paper.experiment import task_data
from cvae.paper.models import CVAE, BaselineNet
from cvae.paper.quadrants import QuadrantTask
from cvae.settings import TrainingSettings
from cvae.training import FUSED_ADAM_DEVICES, batch_loss, epoch_order, train_step

DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # the repository's data/, wherever we run from
FLOP_RULE = ("per image: forward = 2*fan_in*fan_out per Linear; training = forward + backward, backward = "
             "2x forward, except 1x (weight gradient only) for the first layer of a net whose input needs "
             "no gradient; frozen layers count forward only; elementwise work and the optimizer not counted")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> dict:
    """The CPU model (from lscpu), its bf16 instructions and what --precision auto picks on it, core and thread
    counts, library versions, and the load right now."""
    model = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    vendor, flags = precision.cpu_info()
    return {
        "cpu": model,
        "cpu_vendor": vendor,
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "precision_auto_on_cpu": dict(zip(("precision", "reason"), precision.cpu_choice())),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }


def start(threads: int | None) -> None:
    """What every benchmark does first, as the commands do (cvae.paper.cli.start_torch): flush denormals, before any
    torch operation starts the CPU threads (they inherit it only when created); then the thread count, if given."""
    cli.start_torch()
    if threads is not None:
        torch.set_num_threads(threads)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call of fn, with the device synchronized before and after."""
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, list[float]]:
    """Median and all of the wall-clock seconds of `repeats` calls of fn."""
    times = [timed(fn, device) for _ in range(repeats)]
    return statistics.median(times), times


def matmul_workload(m: int, k: int, n: int, device: torch.device,
                    seconds: float = 0.2) -> tuple[Callable[[], None], float]:
    """A float32 (m, k) @ (k, n) product repeated for about `seconds`, and its FLOPs (2 m k n per product):
    timing it gives the machine's dense matmul FLOP/s at that shape."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)

    def product() -> None:
        a @ b

    for _ in range(3):
        product()  # warm-up
    calls = max(1, int(seconds / max(timed(product, device), 1e-6)))

    def batch() -> None:
        for _ in range(calls):
            product()

    return batch, 2.0 * m * k * n * calls


def quadrant_data(k: int, device: torch.device, train_subset: int | None = None,
                  test_subset: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) of the training images (the first 50,000) and of the test images, headline (grayscale) protocol."""
    splits = load_splits(DATA_DIR)
    task = QuadrantTask(k)
    train = splits.train if train_subset is None else splits.train[:train_subset]
    test = splits.test if test_subset is None else splits.test[:test_subset]
    return {"train": task_data(train, task, False, device), "test": task_data(test, task, False, device)}


def our_models(k: int, device: torch.device, seed: int = 0) -> tuple[BaselineNet, CVAE]:
    """The default sizes (MLPs 500-500, z 200), untrained: the cost does not depend on the weights."""
    torch.manual_seed(seed)
    baseline = BaselineNet(k).to(device)
    frozen = BaselineNet(k).to(device)  # the CVAE freezes its baseline; keep the trainable one apart
    frozen.load_state_dict(baseline.state_dict())
    return baseline, CVAE(frozen).to(device)


@dataclass
class OurTrainer:
    """cvae.training.fit's inner loop in one process, without validation and checkpoints (denormals flushed by
    ``start``): gather a batch by the epoch's order, cvae.training.train_step on cvae.training.batch_loss
    (objectives.training_loss, the ELBO for the CVAE) with fused Adam (lr 1e-3), record the loss, check finiteness
    every 50 steps. data = (x, y) for the baseline, (x, y, filled) for the CVAE; precision: "fp32" or "bf16"
    (cvae.precision)."""

    model: nn.Module
    data: tuple[torch.Tensor, ...]
    batch_size: int
    seed: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        device = self.data[0].device
        self.settings = TrainingSettings(batch_size=self.batch_size, lr=1e-3, seed=self.seed)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(parameters, lr=1e-3, fused=device.type in FUSED_ADAM_DEVICES)
        self.noise = torch.Generator(device).manual_seed(self.seed)
        self.epoch = 0

    def run(self, steps: int | None = None) -> None:
        """`steps` steps (a whole epoch when None), in the order of a fresh epoch, wrapping if needed."""
        n, device = self.data[0].shape[0], self.data[0].device
        order = epoch_order(n, self.seed, self.epoch).to(device)
        self.epoch += 1
        num_steps = -(-n // self.batch_size) if steps is None else steps
        if num_steps * self.batch_size > n:
            order = order.repeat(-(-num_steps * self.batch_size // n))
        losses = torch.empty(num_steps, device=device)
        self.model.train()
        for step in range(num_steps):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            losses[step] = train_step(partial(batch_loss, self.settings, self.model), self.optimizer,
                                      [t[batch] for t in self.data], self.noise, precision=self.precision)
            if (step + 1) % 50 == 0 or step + 1 == num_steps:
                if not torch.isfinite(losses[:step + 1]).all():
                    raise RuntimeError("non-finite training loss in the benchmark")


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def training_flops(layers: Iterable[tuple[nn.Linear, str]]) -> int:
    """Training FLOPs per image of (layer, kind) pairs, kind in {"full", "no_input_grad", "frozen"}."""
    multiplier = {"full": 3, "no_input_grad": 2, "frozen": 1}
    return sum(2 * layer.in_features * layer.out_features * multiplier[kind] for layer, kind in layers)


def forward_flops(layers: Iterable[nn.Linear]) -> int:
    return sum(2 * layer.in_features * layer.out_features for layer in layers)


def first_layer_rule(net: nn.Module) -> list[tuple[nn.Linear, str]]:
    """A net whose input needs no gradient: its first Linear needs only the weight gradient."""
    layers = linears(net)
    return [(layer, "no_input_grad" if i == 0 else "full") for i, layer in enumerate(layers)]


def baseline_training_flops(baseline: BaselineNet) -> int:
    return training_flops(first_layer_rule(baseline.net))


def cvae_training_flops(model: CVAE) -> int:
    """Our CVAE step with the baseline's fill precomputed (as fit gets it): recognition and prior nets see
    no-gradient inputs; the generation net's x part (from_x) sees the fill, its z part needs the full backward."""
    generation = model.generation_net
    layers = [*first_layer_rule(model.recognition_net), *first_layer_rule(model.prior_net),
              (generation.from_x, "no_input_grad"), (generation.from_z, "full"),
              *((layer, "full") for layer in linears(generation.rest))]
    return training_flops(layers)


def profile_ops(fn: Callable[[], object], device: torch.device, label: str, top: int = 10) -> dict[str, float]:
    """Run fn under torch.profiler; print the operator table to stderr and return the `top` operators'
    shares of the total self time (CUDA time on a GPU, CPU time otherwise)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    log(f"profile: {label}\n" + prof.key_averages().table(sort_by=key, row_limit=top + 5))
    return {e.key: round(getattr(e, key) / total, 3) for e in events[:top]}
