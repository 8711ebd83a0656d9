"""What streaming costs: an epoch of ``fit`` from a DataLoader over an in-memory TensorDataset against the same epoch
from the tensors themselves (and, beside them, from the TensorDataset given as a Dataset).

The model and data are bench_fit.py's: the MLP ConditionalVAE of the library's defaults (hidden 128-128, z of 8, a
mixture prior of 8) on 50,000 synthetic examples (x of 20 dimensions, y of 10), batches of 128, the ELBO (fit with
kl_warmup=0), the validation loss on 2,000 examples after every epoch. The three ways in:

- tensors: ``fit(model, (x, y), (x_val, y_val))``;
- dataloader: ``fit(model, DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True),
  DataLoader(TensorDataset(x_val, y_val), batch_size=128))``, the user's DataLoader read as given (torch's per-item
  fetch and default collate, no workers), every batch checked as it is read;
- dataset: ``fit(model, TensorDataset(x, y), TensorDataset(x_val, y_val))``, read in the tensors' own batches (a
  first epoch of each checks that it ends with the tensors' weights, bit for bit).

Timed: --repeats runs of --epochs epochs each, the three interleaved (their order rotating); the median seconds per
epoch of each and the ratios to the tensors' (the goal: dataloader / tensors at most 1.3), also in CPU time (with one
thread, the time the process ran, whatever else the machine does).

    python benchmarks/bench_streams.py [--epochs 1] [--repeats 3] [--threads 1]

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from bench_fit import BATCH_SIZE, LR, NUM_TRAIN, NUM_VAL, SEED, X_DIM, Y_DIM, synthetic
from common import log, machine
from torch.utils.data import DataLoader, TensorDataset

from cvae import ConditionalVAE, fit


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=1, help="epochs per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each way in (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0: torch's choice (default: 1)")
    return p.parse_args()


def inputs(kind: str, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]) -> tuple:
    """fit's train and val for a way in."""
    if kind == "tensors":
        return train, val
    if kind == "dataset":
        return TensorDataset(*train), TensorDataset(*val)
    return (DataLoader(TensorDataset(*train), batch_size=BATCH_SIZE, shuffle=True,
                       generator=torch.Generator().manual_seed(SEED)),
            DataLoader(TensorDataset(*val), batch_size=BATCH_SIZE))


def timed(kind: str, initial: ConditionalVAE, train, val, epochs: int) -> tuple[float, float, ConditionalVAE]:
    """(wall-clock, CPU) seconds per epoch of one fit from the initial weights, and the trained model."""
    model = copy.deepcopy(initial)
    data = inputs(kind, train, val)
    started, cpu_started = time.perf_counter(), time.process_time()
    fit(model, *data, epochs=epochs, batch_size=BATCH_SIZE, lr=LR, seed=SEED, kl_warmup=0, lr_halving=0,
        patience=epochs, progress=False)
    return (time.perf_counter() - started) / epochs, (time.process_time() - cpu_started) / epochs, model


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as fit does
    train, val = synthetic(NUM_TRAIN, 0), synthetic(NUM_VAL, 1)
    torch.manual_seed(SEED)
    initial = ConditionalVAE(X_DIM, Y_DIM)

    log("check: one epoch from the tensors and from the Dataset, from the same weights")
    kinds = ("tensors", "dataloader", "dataset")
    trained = {kind: timed(kind, initial, train, val, 1)[2] for kind in ("tensors", "dataset")}
    same_weights = all(torch.equal(a, b) for a, b in zip(trained["tensors"].state_dict().values(),
                                                          trained["dataset"].state_dict().values()))
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu_seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    for repeat in range(args.repeats):
        for kind in kinds[repeat % 3:] + kinds[:repeat % 3]:  # the order rotates
            wall, cpu, _ = timed(kind, initial, train, val, args.epochs)
            seconds[kind].append(wall)
            cpu_seconds[kind].append(cpu)
        log(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{kind} {seconds[kind][-1]:.3f}" for kind in kinds)
            + " s/epoch")
    median = {kind: statistics.median(values) for kind, values in seconds.items()}
    cpu_median = {kind: statistics.median(values) for kind, values in cpu_seconds.items()}
    print(json.dumps({
        "benchmark": "an epoch of fit from a DataLoader over an in-memory TensorDataset against one from tensors",
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "model": {"x_dim": X_DIM, "y_dim": Y_DIM, "z_dim": initial.z_dim, "hidden": list(initial.hidden),
                  "prior_components": initial.prior_components},
        "train_examples": NUM_TRAIN, "val_examples": NUM_VAL, "batch_size": BATCH_SIZE, "epochs": args.epochs,
        "repeats": args.repeats,
        "dataset_same_weights_as_tensors_after_one_epoch": same_weights,
        "seconds_per_epoch": {kind: [round(value, 4) for value in values] for kind, values in seconds.items()},
        "median_seconds_per_epoch": {kind: round(value, 4) for kind, value in median.items()},
        "ratio": round(median["dataloader"] / median["tensors"], 4),
        "ratio_dataset": round(median["dataset"] / median["tensors"], 4),
        "cpu_seconds_per_epoch": {kind: [round(value, 4) for value in values] for kind, values in cpu_seconds.items()},
        "cpu_ratio": round(cpu_median["dataloader"] / cpu_median["tensors"], 4),
        "cpu_ratio_dataset": round(cpu_median["dataset"] / cpu_median["tensors"], 4),
        "goal": "ratio <= 1.3 (dataloader / tensors)",
    }, indent=2))


if __name__ == "__main__":
    main()
