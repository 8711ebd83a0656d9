"""Evaluation throughput and peak memory of the CLL estimators of ``cvae.estimators``.

Measured: image-samples/s (test images x samples of z, per second) of ``cll_importance`` with S = 100 and
S = 1000, and for reference of ``negative_elbo`` and ``cll_monte_carlo`` with S = 100, on the first
--test-subset test images (median of --repeats timed calls after a warm-up call on 64 images). The model
is untrained at the default sizes unless --run-dir names a trained run: the cost does not depend on the
weights. Each measurement runs in a fresh child process so its peak memory is its own: on CPU the peak
resident set size during the timed calls (VmHWM, reset through /proc/self/clear_refs before them) minus
the resident set size just before, plus the child's getrusage ru_maxrss; on CUDA
torch.cuda.max_memory_allocated during the timed calls.

    python benchmarks/bench_eval.py [--test-subset 2000] [--repeats 3] [--run-dir runs/default]

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch
from common import log, machine, median_seconds, our_models, quadrant_data, start

from cvae import estimators
from cvae.paper.config import RunConfig
from cvae.paper.models import CVAE, load_model
from cvae.paper.runs import read_run, setting_paths

MEASUREMENTS = (("negative_elbo", 100), ("cll_monte_carlo", 100), ("cll_importance", 100),
                ("cll_importance", 1000))
MIB = 2 ** 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quadrants", type=int, choices=(1, 2, 3), default=1)
    p.add_argument("--test-subset", type=int, default=2000, help="the first N test images")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median reported)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--run-dir", type=Path, default=None, help="a trained run to load the CVAE from")
    p.add_argument("--max-rows", type=int, default=None,
                   help="what-if: override cvae.estimators.MAX_ROWS (image-samples per pass) for this run")
    p.add_argument("--one", nargs=2, metavar=("ESTIMATOR", "S"), help=argparse.SUPPRESS)  # child mode
    return p.parse_args(argv)


def load_cvae(args: argparse.Namespace, device: torch.device) -> CVAE:
    if args.run_dir is None:
        return our_models(args.quadrants, device)[1].eval()
    config = RunConfig.from_dict(read_run(args.run_dir)["config"])
    return load_model(setting_paths(args.run_dir, args.quadrants).cvae, "cvae", args.quadrants, config,
                      device).eval()


def proc_status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MIB  # the value is in kB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux, /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_one(args: argparse.Namespace) -> dict:
    """One estimator at one S, in this process: time and peak memory."""
    name, num_samples = args.one[0], int(args.one[1])
    if args.max_rows is not None:
        estimators.MAX_ROWS = args.max_rows
    device = torch.device(args.device)
    x, y = quadrant_data(args.quadrants, device, train_subset=0, test_subset=args.test_subset)["test"]
    model = load_cvae(args, device)
    estimator = getattr(estimators, name)
    generator = torch.Generator(device).manual_seed(0)
    estimator(model, x[:64], y[:64], num_samples, generator)  # warm-up

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset = reset_peak_rss()
    rss_before = proc_status_mib("VmRSS")
    seconds, runs = median_seconds(lambda: estimator(model, x, y, num_samples, generator), device, args.repeats)
    memory: dict = {"ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB, 1)}
    if device.type == "cuda":
        memory["cuda_max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / MIB, 1)
    elif reset and rss_before is not None:
        peak = proc_status_mib("VmHWM")
        memory |= {"rss_before_mib": round(rss_before, 1), "peak_rss_mib": round(peak, 1),
                   "peak_extra_rss_mib": round(peak - rss_before, 1)}
    images = x.shape[0]
    return {"estimator": name, "num_samples": num_samples, "images": images, "seconds": round(seconds, 3),
            "run_seconds": [round(t, 3) for t in runs],
            "image_samples_per_s": round(images * num_samples / seconds, 1),
            "images_per_s": round(images / seconds, 1), "memory": memory}


def main() -> None:
    args = parse_args()
    start(args.threads)
    if args.one:
        print(json.dumps(measure_one(args)))
        return
    info = machine()
    results = []
    for name, num_samples in MEASUREMENTS:
        log(f"{name} S={num_samples} on {args.test_subset} test images")
        command = [sys.executable, __file__, "--one", name, str(num_samples), "--quadrants", str(args.quadrants),
                   "--test-subset", str(args.test_subset), "--repeats", str(args.repeats), "--device", args.device]
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        if args.run_dir is not None:
            command += ["--run-dir", str(args.run_dir)]
        if args.max_rows is not None:
            command += ["--max-rows", str(args.max_rows)]
        child = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(child.stdout))
        log(f"  {results[-1]['image_samples_per_s']:.0f} image-samples/s, {results[-1]['memory']}")
    print(json.dumps({
        "benchmark": "eval",
        "machine": info | {"load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "device": args.device,
        "quadrants": args.quadrants,
        "test_images": args.test_subset,
        "repeats": args.repeats,
        "model": str(args.run_dir) if args.run_dir else "untrained, default sizes (MLPs 500-500, z 200)",
        "chunking": {"max_rows": args.max_rows or estimators.MAX_ROWS, "example_block": estimators.EXAMPLE_BLOCK,
                     "max_rows_overridden": args.max_rows is not None},
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
