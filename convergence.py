"""How the CVAE's CLL estimates converge with the number of samples S, on a fixed subset of test images.

    python convergence.py runs/default --quadrants 1 --test-subset 1000 --samples 1 10 100 1000 5000

Writes convergence_q{k}.json, .md and .png into RUN_DIR and prints the table: the negative ELBO, the Monte
Carlo estimate (z from the prior) and the importance-sampled estimate (z from the recognition net).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvae import checkpoints, cli, figures, run_lock
from cvae.config import RunConfig
from cvae.convergence import estimates_versus_samples, markdown_table
from cvae.data import load_splits
from cvae.experiment import load_model, read_run, remove_stale_temporaries, setting_paths, task_data
from cvae.quadrants import QuadrantTask


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run written by train.py")
    p.add_argument("--quadrants", type=cli.quadrants, nargs="+", default=[1])
    p.add_argument("--samples", type=cli.positive_int("--samples"), nargs="+", default=[1, 10, 100, 1000, 5000])
    p.add_argument("--test-subset", type=cli.positive_int("--test-subset"), default=1000, metavar="N",
                   help="the first N test images (default 1000)")
    p.add_argument("--data-dir", default=None, help="default: the run's")
    cli.add_device_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.resolve_device(args.device)
    run_dir = Path(args.run_dir)
    with run_lock.hold(run_dir, command="convergence.py"):  # it writes convergence_q{k}.* into the run directory
        return convergence(args, device, run_dir)


def convergence(args: argparse.Namespace, device, run_dir: Path) -> int:
    config = RunConfig.from_dict(read_run(run_dir)["config"])
    remove_stale_temporaries(run_dir)
    splits = load_splits(args.data_dir or config.data_dir, config.dataset)
    images = splits.test[:args.test_subset]
    for k in args.quadrants:
        cvae = load_model(setting_paths(run_dir, k).cvae, "cvae", k, config, device)
        x, y = task_data(images, QuadrantTask(k), config.binarize, device)
        table = estimates_versus_samples(cvae, x, y, sorted(set(args.samples)), config.seed, desc=f"q{k}")
        caption = (f"{k} input quadrant{'s' if k > 1 else ''}, the first {images.shape[0]} test images, "
                   f"{config.objective} model of {run_dir}; nats per image, mean ± standard error over images.")
        checkpoints.write_json(run_dir / f"convergence_q{k}.json", table)
        checkpoints.write_text(run_dir / f"convergence_q{k}.md", markdown_table(table, caption))
        figures.convergence_plot(table, run_dir / f"convergence_q{k}.png",
                                 f"CLL estimates vs samples, {k} input quadrant{'s' if k > 1 else ''}")
        print(markdown_table(table, caption))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
