"""How the CVAE's CLL estimates converge with the number of samples S, on a fixed subset of test images.

    cvae-sohn convergence runs/default --quadrants 1 --test-subset 1000 --samples 1 10 100 1000 5000

(or cvae-sohn convergence ..., python -m cvae convergence ...). Writes convergence_q{k}.json, .md and .png into
RUN_DIR and prints the table: the negative ELBO, the Monte Carlo estimate (z from the prior) and the
importance-sampled estimate (z from the recognition net). The json records the precision the estimates ran in.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .. import cli

if TYPE_CHECKING:
    import torch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=cli.program("convergence"), description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run written by train")
    p.add_argument("--quadrants", type=cli.quadrants, nargs="+", default=[1], metavar="K",
                   help="the settings to estimate (default: 1)")
    p.add_argument("--samples", type=cli.positive_int("--samples"), nargs="+", default=[1, 10, 100, 1000, 5000],
                   metavar="S", help="the numbers of samples of z per image (default: 1 10 100 1000 5000)")
    p.add_argument("--test-subset", type=cli.positive_int("--test-subset"), default=1000, metavar="N",
                   help="the first N test images (default 1000)")
    p.add_argument("--data-dir", default=None, help="default: the run's")
    cli.add_device_argument(p)
    cli.add_precision_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """convergence's command line (argv without the program name). Returns the exit status."""
    args = parse_args(argv)
    cli.start_torch()
    from .. import run_lock

    device = cli.resolve_device(args.device)
    run_dir = Path(args.run_dir)
    with run_lock.hold(run_dir, command="cvae-sohn convergence"):  # it writes convergence_q{k}.* into the run directory
        return convergence(args, device, run_dir)


def convergence(args: argparse.Namespace, device: torch.device, run_dir: Path) -> int:
    """Estimate and write the tables of run_dir; the caller holds its lock."""
    from cvae import checkpoints, precision

    from .. import figures
    from ..config import RunConfig
    from ..convergence import estimates_versus_samples, markdown_table
    from ..data import load_splits
    from ..experiment import remove_stale_temporaries, task_data
    from ..models import load_model
    from ..quadrants import QuadrantTask
    from ..runs import read_run, setting_paths

    config = RunConfig.from_dict(read_run(run_dir)["config"])
    remove_stale_temporaries(run_dir)
    splits = load_splits(args.data_dir or config.data_dir, config.dataset)
    images = splits.test[:args.test_subset]
    arithmetic = precision.resolve(args.precision, device)
    for k in args.quadrants:
        cvae = load_model(setting_paths(run_dir, k).cvae, "cvae", k, config, device)
        x, y = task_data(images, QuadrantTask(k), config.binarize, device)
        with precision.autocast(arithmetic, device):
            table = estimates_versus_samples(cvae, x, y, sorted(set(args.samples)), config.seed, desc=f"q{k}")
        caption = (f"{k} input quadrant{'s' if k > 1 else ''}, the first {images.shape[0]} test images, "
                   f"{config.objective} model of {run_dir}, {arithmetic} matrix products; nats per image, mean ± "
                   "standard error over images.")
        checkpoints.write_json(run_dir / f"convergence_q{k}.json", {"precision": arithmetic, "estimates": table})
        checkpoints.write_text(run_dir / f"convergence_q{k}.md", markdown_table(table, caption))
        figures.convergence_plot(table, run_dir / f"convergence_q{k}.png",
                                 f"CLL estimates vs samples, {k} input quadrant{'s' if k > 1 else ''}")
        print(markdown_table(table, caption))
    return 0
