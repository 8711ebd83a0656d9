"""Whole processes side by side: `python train.py` for one epoch against the peer's training process
(benchmarks/pyro_tutorial.py) for one epoch, each started fresh, interleaved --repeats times.

Each process pays its own imports, data loading, one training epoch of the baseline and of the CVAE on the
first --train-subset training images, a validation pass over 10,000 images after each, and saving the weights.
Ours: `train.py --quadrants K --epochs 1 --no-eval --no-progress` into a temporary run directory (it also writes
its history), in float32 and with `--train-precision bf16`. Peer: the tutorial's per-item data pipeline, training
and validation phases.
Also timed: `python train.py --help`, the start-up a user meets first.

    python benchmarks/whole_process.py [--quadrants 1] [--train-subset 50000] [--repeats 2]

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import log, machine

ROOT = Path(__file__).resolve().parent.parent


def wall_seconds(command: list[str], env: dict[str, str]) -> float:
    """Seconds from the start of a fresh process to its exit; a failure stops the benchmark with its stderr."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quadrants", type=int, choices=(1, 2, 3), default=1)
    p.add_argument("--train-subset", type=int, default=50_000, help="training images of the epoch")
    p.add_argument("--repeats", type=int, default=2, help="runs of each process (median reported)")
    args = p.parse_args()
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    k, n = str(args.quadrants), str(args.train_subset)
    with tempfile.TemporaryDirectory() as scratch:
        one_epoch = [sys.executable, "train.py", "--quadrants", k, "--epochs", "1", "--train-subset", n, "--no-eval",
                     "--no-progress", "--overwrite", "--out", str(Path(scratch) / "run")]
        commands = {
            "ours_help": [sys.executable, "train.py", "--help"],
            "ours_one_epoch": one_epoch,
            "ours_one_epoch_train_bf16": [*one_epoch, "--train-precision", "bf16"],
            "peer_one_epoch": [sys.executable, "benchmarks/pyro_tutorial.py", "--quadrants", k, "--epochs", "1",
                               "--train-subset", n],
        }
        info = machine()
        times: dict[str, list[float]] = {name: [] for name in commands}
        for repeat in range(args.repeats):
            for name, command in commands.items():
                times[name].append(wall_seconds(command, env))
                log(f"repeat {repeat + 1}/{args.repeats} {name}: {times[name][-1]:.2f} s")
    seconds = {name: statistics.median(t) for name, t in times.items()}
    print(json.dumps({
        "benchmark": "whole_process",
        "machine": info | {"load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "quadrants": args.quadrants,
        "train_images": args.train_subset,
        "repeats": args.repeats,
        "commands": {name: " ".join(Path(part).name if part == sys.executable else part for part in command)
                     for name, command in commands.items()},
        "seconds": {name: round(s, 2) for name, s in seconds.items()},
        "runs": {name: [round(t, 2) for t in ts] for name, ts in times.items()},
        "ratio_peer_over_ours_one_epoch": round(seconds["peer_one_epoch"] / seconds["ours_one_epoch"], 2),
        "ratio_peer_over_ours_one_epoch_train_bf16":
            round(seconds["peer_one_epoch"] / seconds["ours_one_epoch_train_bf16"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
