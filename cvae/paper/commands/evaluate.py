"""Re-evaluate the saved checkpoints of a run on the test set and write its table and figures.

    python evaluate.py runs/default                       # S = the run's --num-samples (100)
    python evaluate.py runs/default --num-samples 1000 --test-subset 2000
    python evaluate.py runs/default --precision fp32       # float32 matrix products even where bf16 is native
    python evaluate.py runs/default --sample-k 10 --binarizations 3   # K predictions per image, T binarizations
    torchrun --standalone --nproc_per_node 2 evaluate.py runs/default    # the test images shared by 2 processes

(or cvae-sohn evaluate ..., python -m cvae evaluate ...). Writes results.json, results.csv, results.md,
samples_q{k}.png and training_curves.png into RUN_DIR and prints the tables: the NN baseline's exact negative CLL,
and the CVAE's negative ELBO, Monte Carlo and importance-sampling estimates, as mean ± standard error over test
images; with grayscale targets under the Bernoulli likelihood, the true CLL of binarized outputs (--binarizations);
and the samples judged as samples (--sample-k). results.json records the precision the evaluation ran in, T and K.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .. import cli

if TYPE_CHECKING:
    import torch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=cli.program("evaluate"), description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by train --out")
    p.add_argument("--num-samples", type=cli.positive_int("--num-samples"), default=None,
                   help="S, samples of z per test image (default: the run's, 100)")
    p.add_argument("--test-subset", type=cli.positive_int("--test-subset"), default=None,
                   metavar="N", help="evaluate on the first N test images only (default: all of them)")
    p.add_argument("--data-dir", default=None, help="default: the run's")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_device_argument(p)
    cli.add_precision_argument(p)
    cli.add_sample_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """evaluate's command line (argv without the program name). Returns the exit status."""
    args = parse_args(argv)
    cli.start_torch()
    from cvae import distributed

    from .. import run_lock

    device = distributed.init_from_env(cli.resolve_device(args.device))  # a no-op without torchrun
    run_dir = Path(args.run_dir)
    with run_lock.hold(run_dir, command="evaluate.py"):  # one job per run directory
        return evaluate(args, device, run_dir)


def evaluate(args: argparse.Namespace, device: torch.device, run_dir: Path) -> int:
    """Evaluate the run in run_dir; the caller holds its lock."""
    from cvae import distributed, precision

    from ..config import RunConfig
    from ..data import load_splits
    from ..experiment import check_evaluation_memory, evaluate_run, remove_stale_temporaries
    from ..runs import read_run
    from ..sample_evaluation import true_likelihood_applies

    saved = read_run(run_dir)
    remove_stale_temporaries(run_dir)
    if not saved.get("finished"):
        raise cli.UserError(f"{run_dir} has not finished training (it was interrupted or stopped early), so "
                            f"it has no complete checkpoints to evaluate. Continue it first with: "
                            f"python train.py --resume {run_dir}")
    config = RunConfig.from_dict(saved["config"])
    draws = args.binarizations if true_likelihood_applies(config.likelihood, config.binarize) else None
    check_evaluation_memory(config, device, draws, args.sample_k)
    with distributed.main_first():  # rank 0 provisions the data while the others wait
        splits = load_splits(args.data_dir or config.data_dir, config.dataset)
    num_samples = args.num_samples or config.num_samples
    _, table = evaluate_run(run_dir, config, splits, device, num_samples, args.test_subset,
                            progress=not args.no_progress, arithmetic=precision.resolve(args.precision, device),
                            binarizations=args.binarizations, sample_k=args.sample_k,
                            data_dir=args.data_dir or config.data_dir)
    if distributed.is_main():
        print(table)
    return 0
