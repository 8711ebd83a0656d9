"""Training throughput of train.py under torchrun: 2 processes of 1 thread against 1 process of 1 and of 2 threads.

Each configuration runs train.py itself (DistributedDataParallel under torchrun, gloo on CPU) on the first
--train-subset real MNIST training images, setting --quadrants, the default networks (MLPs 500-500, z of
200) and global batch 128, for --epochs epochs of the baseline and then of the CVAE (--no-eval). The
throughput of a stage is its training images / the median wall time of its epochs after the first (an
epoch = the training pass plus the validation pass over the 10,000 validation images, each also shared by
the processes), read from the run's history.json, so start-up, data loading and warm-up are not counted.

    python benchmarks/bench_distributed.py [--train-subset 20000] [--epochs 4] [--quadrants 1]

Prints one JSON object on stdout (the speedups of 2 processes over 1 process of 1 thread and of 2 threads);
progress goes to stderr. Run it on a quiet machine: it uses 2 cores.
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

from common import DATA_DIR, log, machine

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
CONFIGURATIONS = {  # name -> (launcher, OMP_NUM_THREADS per process)
    "1 process x 1 thread": ([sys.executable], 1),
    "1 process x 2 threads": ([sys.executable], 2),
    "torchrun 2 processes x 1 thread": (TORCHRUN, 1),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-subset", type=int, default=20_000)
    p.add_argument("--epochs", type=int, default=4, help="per stage; the first is a warm-up (at least 2)")
    p.add_argument("--quadrants", type=int, choices=(1, 2, 3), default=1)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch")
    return p.parse_args()


def measure(launcher: list[str], threads: int, args: argparse.Namespace, out: Path) -> dict:
    """Run train.py once; return the images/s of each stage and the wall time of the whole command."""
    command = [*launcher, str(ROOT / "train.py"), "--quadrants", str(args.quadrants), "--epochs", str(args.epochs),
               "--patience", str(args.epochs), "--train-subset", str(args.train_subset), "--batch-size",
               str(args.batch_size), "--device", "cpu", "--data-dir", str(DATA_DIR), "--no-eval", "--no-progress",
               "--out", str(out)]
    started = time.perf_counter()
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    history = json.loads((out / f"q{args.quadrants}" / "history.json").read_text())
    row: dict = {"command_seconds": round(time.perf_counter() - started, 1)}
    for stage, epochs in history.items():
        seconds = [epoch["seconds"] for epoch in epochs[1:]]
        row[stage] = {"images_per_s": round(args.train_subset / statistics.median(seconds), 1),
                      "epoch_seconds": [round(s, 3) for s in seconds]}
    return row


def main() -> None:
    args = parse_args()
    if args.epochs < 2:
        sys.exit("--epochs must be at least 2: the first epoch of each stage is a warm-up")
    info = machine()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (launcher, threads)) in enumerate(CONFIGURATIONS.items()):
            log(f"{name} ...")
            results[name] = measure(launcher, threads, args, Path(tmp) / f"run{i}")
            log(f"{name}: " + ", ".join(f"{stage} {results[name][stage]['images_per_s']:.0f} images/s"
                                        for stage in ("baseline", "cvae")))
    two = results["torchrun 2 processes x 1 thread"]
    speedup = {f"over {name}": {stage: round(two[stage]["images_per_s"] / results[name][stage]["images_per_s"], 2)
                                for stage in ("baseline", "cvae")}
               for name in ("1 process x 1 thread", "1 process x 2 threads")}
    print(json.dumps({
        "benchmark": "distributed",
        "machine": info | {"load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "device": "cpu (gloo)",
        "quadrants": args.quadrants,
        "train_images": args.train_subset,
        "global_batch_size": args.batch_size,
        "epochs_per_stage": args.epochs,
        "throughput": "training images / median epoch wall time after the first epoch (training + validation pass)",
        "results": results,
        "speedup_of_2_processes": speedup,
    }, indent=2))


if __name__ == "__main__":
    main()
