"""bf16 against float32 evaluation, side by side in one run: speed and the estimates themselves.

For each setting, the NN's exact CLL and the CVAE's negative ELBO, Monte Carlo and importance-sampled estimates
(cvae.paper.evaluation.per_image_cll, S = --num-samples) on the test images, once with the networks' matrix products
in float32 and once under bf16 autocast (cvae.precision), interleaved --repeats times. Prints the times, the
speed ratio and, per estimator, the difference of the two means (bf16 - fp32) in nats with its paired standard
error. With --run-dir the trained models of a finished run are used, so the differences are those of the
numbers a run reports; without it, untrained default-size models (speed only).

    python benchmarks/bench_precision.py --run-dir runs/default            # 10,000 test images, S = 100
    python benchmarks/bench_precision.py --test-subset 2000 --quadrants 1  # untrained models

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from common import DATA_DIR, log, machine, our_models, start, synchronize

from cvae.paper.config import RunConfig
from cvae.paper.data import load_splits
from cvae.paper.evaluation import KEYS, mean_and_sem, per_image_cll
from cvae.paper.experiment import task_data
from cvae.paper.models import load_model
from cvae.paper.quadrants import QuadrantTask
from cvae.paper.runs import read_run, setting_paths

ARITHMETICS = ("fp32", "bf16")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, default=None, help="a finished run (default: untrained models)")
    p.add_argument("--quadrants", type=int, nargs="+", choices=(1, 2, 3), default=[1, 2, 3])
    p.add_argument("--test-subset", type=int, default=None, help="the first N test images (default: all 10,000)")
    p.add_argument("--num-samples", type=int, default=100, help="S, samples of z per test image")
    p.add_argument("--repeats", type=int, default=1, help="timed evaluations of each precision (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args()


def models(args: argparse.Namespace, k: int, device: torch.device):
    if args.run_dir is None:
        return our_models(k, device)
    config = RunConfig.from_dict(read_run(args.run_dir)["config"])
    paths = setting_paths(args.run_dir, k)
    return (load_model(paths.baseline, "baseline", k, config, device),
            load_model(paths.cvae, "cvae", k, config, device))


def main() -> None:
    args = parse_args()
    start(args.threads)
    device = torch.device(args.device)
    info = machine()
    splits = load_splits(DATA_DIR)
    test = splits.test if args.test_subset is None else splits.test[:args.test_subset]
    settings = {}
    for k in args.quadrants:
        baseline, cvae = models(args, k, device)
        x, y = task_data(test, QuadrantTask(k), False, device)
        per_image_cll(baseline, cvae, x[:64], y[:64], 2, progress=False)  # warm-up, both precisions
        per_image_cll(baseline, cvae, x[:64], y[:64], 2, progress=False, arithmetic="bf16")
        times = {arithmetic: [] for arithmetic in ARITHMETICS}
        values = {}
        for repeat in range(args.repeats):
            for arithmetic in ARITHMETICS:
                synchronize(device)
                started = time.perf_counter()
                values[arithmetic] = per_image_cll(baseline, cvae, x, y, args.num_samples, seed=0, progress=False,
                                                   arithmetic=arithmetic)
                synchronize(device)
                times[arithmetic].append(time.perf_counter() - started)
                log(f"q{k} repeat {repeat + 1}/{args.repeats} {arithmetic}: {times[arithmetic][-1]:.2f} s")
        seconds = {arithmetic: statistics.median(t) for arithmetic, t in times.items()}
        settings[str(k)] = {
            "seconds": {arithmetic: round(s, 3) for arithmetic, s in seconds.items()},
            "runs": {arithmetic: [round(t, 3) for t in ts] for arithmetic, ts in times.items()},
            "speedup_bf16_over_fp32": round(seconds["fp32"] / seconds["bf16"], 2),
            "fp32_mean": {key: round(values["fp32"][key].mean().item(), 4) for key in KEYS},
            "bf16_minus_fp32": {key: {name: round(value, 4) for name, value in
                                      mean_and_sem(values["bf16"][key] - values["fp32"][key]).items()}
                                for key in KEYS},
        }
    print(json.dumps({
        "benchmark": "precision",
        "machine": info | {"load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "device": str(device),
        "models": str(args.run_dir) if args.run_dir else "untrained, default sizes (MLPs 500-500, z 200)",
        "test_images": int(test.shape[0]),
        "num_samples": args.num_samples,
        "repeats": args.repeats,
        "settings": settings,
    }, indent=2))


if __name__ == "__main__":
    main()
