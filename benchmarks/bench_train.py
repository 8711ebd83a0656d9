"""Training throughput of the baseline and the CVAE step, against the machine's dense matmul speed.

Measured: images/s of the step that ``cvae.training.fit`` runs (``objectives.training_loss``, zero_grad,
backward, fused Adam; for the CVAE with the baseline's fill precomputed, as fit gets it), at several batch
sizes, each the median over --repeats timed runs of --steps steps after a warm-up run, on real MNIST
training images in fit's epoch order. The model FLOPs per image are counted from the layer shapes (the
rule is in the output, see common.py), achieved FLOP/s = FLOPs per image x images/s, and the dense float32
matmul FLOP/s is measured in the same run, interleaved with the training runs (a square 1024 product and
the first layer's shape at each batch size), so the ratio holds on a machine whose speed varies.

    python benchmarks/bench_train.py [--batch-sizes 128 512 2048] [--repeats 5] [--steps 20]

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
from common import (
    FLOP_RULE,
    OurTrainer,
    baseline_training_flops,
    cvae_training_flops,
    log,
    machine,
    matmul_workload,
    our_models,
    profile_ops,
    quadrant_data,
    start,
    timed,
)

from cvae.fitting import predictions
from cvae.paper.quadrants import NUM_PIXELS


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quadrants", type=int, choices=(1, 2, 3), default=1)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    p.add_argument("--steps", type=int, default=20, help="training steps per timed run")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--profile", action="store_true",
                   help="also profile --steps CVAE steps per batch size (operator table on stderr)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    start(args.threads)
    device = torch.device(args.device)
    info = machine()
    data = quadrant_data(args.quadrants, device)["train"]
    baseline, cvae = our_models(args.quadrants, device)
    filled = predictions(cvae.baseline, data[0])
    flops = {"baseline": baseline_training_flops(baseline), "cvae": cvae_training_flops(cvae)}
    hidden = baseline.hidden[0]
    square = "1024x1024@1024x1024"

    results = []
    for batch_size in args.batch_sizes:
        layer = f"{batch_size}x{NUM_PIXELS}@{NUM_PIXELS}x{hidden}"
        trainers = {"baseline": OurTrainer(baseline, data, batch_size),
                    "cvae": OurTrainer(cvae, (*data, filled), batch_size)}
        workloads = {square: matmul_workload(1024, 1024, 1024, device),
                     layer: matmul_workload(batch_size, NUM_PIXELS, hidden, device)}
        for trainer in trainers.values():
            trainer.run(min(args.steps, 5))  # warm-up: allocator, oneDNN primitives, Adam state
        times: dict[str, list[float]] = {name: [] for name in [*workloads, *trainers]}
        for _ in range(args.repeats):  # interleaved, so a change of load hits all of them alike
            for name, (fn, _) in workloads.items():
                times[name].append(timed(fn, device))
            for name, trainer in trainers.items():
                times[name].append(timed(lambda trainer=trainer: trainer.run(args.steps), device))
        matmul = {name: workload_flops / statistics.median(times[name])
                  for name, (_, workload_flops) in workloads.items()}
        row: dict = {"batch_size": batch_size, "matmul_gflop_per_s": {k: round(v / 1e9, 2) for k, v in matmul.items()}}
        for name in trainers:
            seconds = statistics.median(times[name])
            images_per_s = args.steps * batch_size / seconds
            achieved = flops[name] * images_per_s
            row[name] = {
                "images_per_s": round(images_per_s, 1),
                "steps_per_s": round(args.steps / seconds, 2),
                "run_seconds": [round(t, 4) for t in times[name]],
                "achieved_gflop_per_s": round(achieved / 1e9, 2),
                "fraction_of_matmul_1024": round(achieved / matmul[square], 3),
                "fraction_of_matmul_first_layer_shape": round(achieved / matmul[layer], 3),
            }
            log(f"batch {batch_size} {name}: {images_per_s:.0f} images/s, {achieved / 1e9:.1f} GFLOP/s "
                f"({achieved / matmul[square]:.0%} of the 1024 matmul)")
        if args.profile:
            row["cvae"]["profile_self_time_share"] = profile_ops(
                lambda trainer=trainers["cvae"]: trainer.run(args.steps), device, f"CVAE step, batch {batch_size}")
        results.append(row)

    best = max(results, key=lambda r: r["cvae"]["fraction_of_matmul_1024"])
    print(json.dumps({
        "benchmark": "train",
        "machine": info | {"load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "device": str(device),
        "quadrants": args.quadrants,
        "repeats": args.repeats,
        "steps_per_run": args.steps,
        "flop_counting_rule": FLOP_RULE,
        "training_flops_per_image": flops,
        "results": results,
        "cvae_best_fraction_of_matmul_1024": {"batch_size": best["batch_size"],
                                              "fraction": best["cvae"]["fraction_of_matmul_1024"]},
    }, indent=2))


if __name__ == "__main__":
    main()
