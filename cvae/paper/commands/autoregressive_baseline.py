"""The strong preset's control: the NN baseline given the same autoregressive term, with no latent variable.

    cvae-sohn autoregressive-baseline --out runs/nn_autoregressive     # 1, 2 and 3 quadrants, seed 0

Trains BaselineNet(autoregressive=True) with the paper's optimizer settings and early stopping, then reports its
exact negative CLL on the test set. Beside the strong preset's CVAE it tells how much of the CVAE's lead over
the paper's NN comes from the autoregressive term and how much from the latent variable. Interrupted, the same
command continues from the saved state.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cvae import checkpoints
from cvae.estimators import mean_and_sem
from cvae.training import StopFlag, TrainingInterrupted, stop_on_signals, train_loop

from .. import cli, run_lock
from ..config import RunConfig
from ..data import load_splits
from ..experiment import check_evaluation_memory, fit_settings, remove_stale_temporaries, task_data
from ..models import BaselineNet
from ..quadrants import QuadrantTask
from ..report import table_header
from ..runs import setting_paths
from ..true_likelihood import nn_expected_nll

ROW = "NN + autoregressive term (exact CLL)"
TRUE_ROW = "NN + autoregressive term, true CLL of binarized outputs (exact)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = RunConfig()
    p = argparse.ArgumentParser(prog=cli.program("autoregressive-baseline"), description=__doc__.split("\n\n")[0])
    p.add_argument("--quadrants", type=cli.quadrants, nargs="+", default=defaults.quadrants)
    p.add_argument("--seed", type=cli.seed, default=defaults.seed)
    p.add_argument("--ar-window", type=cli.odd_window("--ar-window"), default=0,
                   help="the autoregressive term's window (train.py --ar-window; default 0: every earlier pixel)")
    p.add_argument("--sample-targets", action="store_true",
                   help="train on binary targets b ~ Bernoulli(y) drawn afresh for every batch (train.py's option)")
    p.add_argument("--binarize", action="store_true", help="targets thresholded at 0.5 (train.py's option)")
    p.add_argument("--epochs", type=cli.epochs, default=defaults.epochs)
    p.add_argument("--data-dir", default=defaults.data_dir)
    p.add_argument("--binarizations", type=cli.positive_int("--binarizations"), default=1, metavar="T",
                   help="draws b ~ Bernoulli(t) per test image for the true CLL of binarized outputs, -E_b log p(b|x) "
                   "(evaluate's option of the same name; default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_device_argument(p)
    p.add_argument("--out", default="runs/nn_autoregressive", help="output directory (checkpoints, results.md)")
    return p.parse_args(argv)


@torch.no_grad()
def exact_cll(model: BaselineNet, x: torch.Tensor, y: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """-log p(y|x) per test image, exact: (N,) nats."""
    model.eval()
    return torch.cat([-model.log_likelihood(xb, yb) for xb, yb in zip(x.split(block), y.split(block))]).double()


def _saved_config(path: Path) -> object:
    try:
        return checkpoints.read_json(path, "config.json", "Choose another --out.")
    except checkpoints.RunFileError as error:
        raise cli.UserError(str(error)) from None


def main(argv: list[str] | None = None, stop: StopFlag | None = None) -> int:
    args = parse_args(argv)
    cli.start_torch()
    device = cli.resolve_device(args.device)
    out = Path(args.out)
    run_lock.check_directory_path(out, "--out")
    if out.exists() and not out.is_dir():
        raise cli.UserError(f"--out {out} is a file, not a directory. Choose another --out.")
    check_evaluation_memory(RunConfig(quadrants=sorted(set(args.quadrants))), device, args.binarizations, 0)
    with run_lock.hold(out, create=True, command="autoregressive-baseline"):  # one job per directory
        return control(args, device, out, stop)


def control(args: argparse.Namespace, device, out: Path, stop: StopFlag | None) -> int:
    config = RunConfig(quadrants=sorted(set(args.quadrants)), seed=args.seed, epochs=args.epochs,
                       data_dir=args.data_dir, sample_targets=args.sample_targets, binarize=args.binarize)
    saved = {"control": "autoregressive_baseline", "seed": config.seed, "quadrants": config.quadrants,
             "epochs": config.epochs, "ar_window": args.ar_window}
    saved |= {name: True for name in ("sample_targets", "binarize") if getattr(args, name)}  # older runs lack them
    if (out / "config.json").is_file() and _saved_config(out / "config.json") != saved:
        raise cli.UserError(f"{out} holds another run ({out / 'config.json'}). Choose another --out.")
    remove_stale_temporaries(out)
    splits = load_splits(config.data_dir, config.dataset)
    checkpoints.write_json(out / "config.json", saved)
    # the paper's: the baseline trains on its exact likelihood whatever the objective
    settings = fit_settings(config, device)
    cells, true_cells, started = [], [], time.perf_counter()
    try:
        with stop_on_signals(stop or StopFlag()) as stop:
            for k in config.quadrants:
                task, paths = QuadrantTask(k), setting_paths(out, k)
                train, val = (task_data(images, task, config.binarize, device) for images in (splits.train, splits.val))
                torch.manual_seed(config.seed * 10 + k)  # the same initial weights as the seed's NN
                model = BaselineNet(k, config.hidden, autoregressive=True, ar_window=args.ar_window).to(device)
                train_loop(model, train, val, settings, paths.baseline, paths.baseline_state, stop,
                           not args.no_progress, f"q{k} NN + autoregressive")
                best = BaselineNet.load(paths.baseline).to(device)
                test = task_data(splits.test, task, config.binarize, device)
                cll = mean_and_sem(exact_cll(best, *test))
                cells.append(f"{cll['mean']:.2f} ± {cll['sem']:.2f}")
                with torch.no_grad():  # the same draws b as a run's evaluation with the same seed and T
                    true = mean_and_sem(nn_expected_nll(best, *test, args.binarizations, config.seed).double())
                true_cells.append(f"{true['mean']:.2f} ± {true['sem']:.2f}")
    except TrainingInterrupted as stopped:
        raise TrainingInterrupted(f"{stopped}. The state is saved; run the same command to continue.") from None
    lines = [*table_header(config.quadrants), f"| {ROW} | " + " | ".join(cells) + " |",
             f"| {TRUE_ROW} | " + " | ".join(true_cells) + " |"]
    window = f"window {args.ar_window}" if args.ar_window else "every earlier pixel"
    table = "\n".join(lines) + (f"\n\n{splits.test.shape[0]} test images, seed {config.seed}, {window}; true CLL: "
                                f"T = {args.binarizations} binarization(s) per image; ± is the standard error "
                                f"over images; {time.perf_counter() - started:.0f} s.\n")
    checkpoints.write_text(out / "results.md", table)
    print(table)
    return 0
