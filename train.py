"""Train the baseline and the CVAE on the MNIST quadrant task, then evaluate them on the test set.

    python train.py                          # the paper's experiment: 1, 2 and 3 input quadrants
    python train.py --quadrants 2 --epochs 5 --out runs/quick
    python train.py --resume runs/default    # continue an interrupted run
    torchrun --standalone --nproc_per_node 2 train.py ...   # 2 processes, DistributedDataParallel (README)

For each setting: the baseline NN is trained first (early stopping on the validation loss), then
frozen; the CVAE is trained on top of it. Then every setting is evaluated (evaluate.py does the same
for a saved run) and the table and figures are written into the run directory. Under torchrun
--batch-size is the global batch, shared by the processes, and the learning rate is unchanged.

One job per run directory: the job holds the directory's lock (cvae.run_lock) from before it looks into it to
its end. Numbers that cannot work (a seed whose generator seeds would overflow, networks that cannot fit in the
device's memory) are refused before anything is created; a run that saved no checkpoint (it failed, ran out of
memory or was killed before its first one) does not block the same command: it starts there anew.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from cvae import checkpoints, cli, distributed, run_lock
from cvae.config import PRESETS, RunConfig, environment
from cvae.data import DATASETS, load_splits
from cvae.experiment import check_memory, evaluate_run, read_run, remove_stale_temporaries, setting_paths, train_setting
from cvae.likelihoods import PIXEL_LIKELIHOODS as LIKELIHOODS
from cvae.objectives import RUN_OBJECTIVES
from cvae.training import StopFlag, TrainingInterrupted, stop_on_signals

RUN_ARTIFACTS = ("config.json", "results.json", "results.csv", "results.md", "training_curves.png")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = RunConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=PRESETS, default=defaults.preset,
                   help="named defaults: paper (the paper's set-up, the default) or strong (README, 'A stronger "
                   "configuration'); options given beside it override its values")
    p.add_argument("--quadrants", type=cli.quadrants, nargs="+", default=defaults.quadrants,
                   help="input quadrant settings to run (default: 1 2 3)")
    p.add_argument("--epochs", type=cli.epochs, default=defaults.epochs)
    p.add_argument("--patience", type=cli.positive_int("--patience"), default=defaults.patience,
                   help="epochs without improvement of the validation loss before stopping")
    p.add_argument("--batch-size", type=cli.positive_int("--batch-size"),
                   default=defaults.batch_size)
    p.add_argument("--lr", type=cli.positive_float("--lr"), default=defaults.lr)
    p.add_argument("--z-dim", type=cli.positive_int("--z-dim"), default=defaults.z_dim)
    p.add_argument("--hidden", type=cli.hidden_sizes, default=defaults.hidden,
                   help="hidden layer widths of every network, e.g. 500,500")
    p.add_argument("--autoregressive", action=argparse.BooleanOptionalAction, default=defaults.autoregressive,
                   help="add an autoregressive term (a masked linear layer over the earlier pixels) to the generation "
                   "net's logits (README, 'A stronger configuration'); the paper's decoder has none")
    p.add_argument("--ar-window", type=cli.odd_window("--ar-window"), default=defaults.ar_window,
                   help="with --autoregressive: only the earlier pixels in a square of this odd width around each "
                   "pixel (default 0: every earlier pixel)")
    p.add_argument("--seed", type=cli.seed, default=defaults.seed)
    p.add_argument("--objective", choices=RUN_OBJECTIVES, default=defaults.objective,
                   help="the CVAE's training objective: cvae (the ELBO, eq. 4), gsnn (eq. 9), hybrid (eq. 10) "
                   "or iwae (the importance-weighted bound, Burda et al. 2016)")
    p.add_argument("--alpha", type=cli.unit_interval("--alpha"), default=defaults.alpha,
                   help="weight of the ELBO in the hybrid objective (default 0.5)")
    p.add_argument("--iw-samples", type=cli.positive_int("--iw-samples"), default=defaults.iw_samples,
                   help="samples of z per image in the iwae objective (default 5)")
    p.add_argument("--lr-decay", type=cli.decay_factor("--lr-decay"), default=defaults.lr_decay,
                   help="the learning rate of epoch e (from 0) is lr * lr_decay ** e (default 1: constant)")
    p.add_argument("--dataset", choices=DATASETS, default=defaults.dataset)
    p.add_argument("--likelihood", choices=LIKELIHOODS, default=defaults.likelihood,
                   help="of the output pixels: bernoulli (the paper's, the default; a true log-likelihood only "
                   "with --binarize) or continuous-bernoulli (a normalized density on [0, 1] for grayscale pixels)")
    p.add_argument("--binarize", action="store_true",
                   help="binarize the targets at 0.5 (default: grayscale targets, as the tutorial)")
    p.add_argument("--data-dir", default=defaults.data_dir)
    p.add_argument("--train-subset", type=cli.positive_int("--train-subset"), default=None,
                   metavar="N", help="train on the first N training images only (smoke runs)")
    p.add_argument("--num-samples", type=cli.positive_int("--num-samples"),
                   default=defaults.num_samples, help="S, samples of z per test image")
    p.add_argument("--no-eval", action="store_true", help="train only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_device_argument(p)
    p.add_argument("--out", default="runs/default", help="run directory (default: runs/default)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out")
    group.add_argument("--resume", metavar="RUN_DIR",
                       help="continue an interrupted run with its saved configuration (options that would "
                       "change it are refused; --data-dir, --device, --no-eval, --no-progress may be given)")
    preset, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS[preset.preset])
    args = p.parse_args(argv)
    # parsed again with every default None, to tell which options were given (see choose_run)
    p.set_defaults(**dict.fromkeys(vars(args)))
    args.given = {name for name, value in vars(p.parse_args(argv)).items() if value is not None}
    return args


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        quadrants=sorted(set(args.quadrants)), epochs=args.epochs, patience=args.patience,
        batch_size=args.batch_size, lr=args.lr, z_dim=args.z_dim, hidden=args.hidden,
        autoregressive=args.autoregressive, ar_window=args.ar_window,
        seed=args.seed, objective=args.objective, alpha=args.alpha, iw_samples=args.iw_samples,
        lr_decay=args.lr_decay, preset=args.preset,
        likelihood=args.likelihood, dataset=args.dataset, binarize=args.binarize, data_dir=args.data_dir,
        train_subset=args.train_subset, num_samples=args.num_samples)


def check_new_run(args: argparse.Namespace, device) -> tuple[Path, RunConfig]:
    """What can be checked of a new run before anything is created: --out and the numbers of the configuration.
    Returns (run_dir, config)."""
    run_dir = Path(args.out)
    config = config_from_args(args)
    run_lock.check_directory_path(run_dir, "--out")
    if run_dir.exists() and not run_dir.is_dir():
        raise cli.UserError(f"--out {run_dir} is a file, not a directory. Choose another --out.")
    check_writable(run_dir)
    if not (run_dir / "config.json").exists() and other_files(run_dir):  # refused before a lock file is made there
        raise not_a_run(run_dir)
    if config.train_subset is not None and config.train_subset < config.batch_size:
        raise cli.UserError(f"--train-subset {config.train_subset} is smaller than --batch-size "
                            f"{config.batch_size}: use at least one full batch of images.")
    check_memory(config, device)
    return run_dir, config


def other_files(run_dir: Path) -> list[Path]:
    """What a directory holds besides the lock file."""
    return [p for p in run_dir.iterdir() if p.name != run_lock.LOCK_NAME] if run_dir.is_dir() else []


def not_a_run(run_dir: Path) -> cli.UserError:
    return cli.UserError(f"--out {run_dir} is a directory with other files in it, not a run. "
                         "Choose a new or empty directory for --out.")


def saved_nothing(run_dir: Path) -> bool:
    """Whether run_dir holds a run that failed or was killed before it saved anything (no checkpoint, history
    or results; config.json says unfinished): nothing a new run there could lose."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(saved, dict) or saved.get("finished") is not False or (run_dir / "results.json").exists():
        return False
    return not any(any(setting_paths(run_dir, k).root.glob(pattern))
                   for k in (1, 2, 3) for pattern in ("*.pt", "history.json"))


def choose_run(args: argparse.Namespace, run_dir: Path, config: RunConfig | None) -> tuple[RunConfig, bool, bool]:
    """The configuration, under the run directory's lock, after checking that nothing will be overwritten
    silently. config: check_new_run's (None with --resume). Returns (config, resuming, replace): replace
    when what train.py wrote in run_dir must be removed first (--overwrite, or a run that saved nothing)."""
    if args.resume:
        config = RunConfig.from_dict(read_run(run_dir)["config"])
        check_resume_options(args, run_dir, config)
        if "data_dir" in args.given:  # where the data is, not what it is: its MD5s are checked
            config.data_dir = args.data_dir
        check_writable(run_dir)
        return config, True, False
    if not (run_dir / "config.json").exists():
        if other_files(run_dir):
            raise not_a_run(run_dir)
        return config, False, False
    if args.overwrite:
        return config, False, True
    if saved_nothing(run_dir):  # e.g. out of memory, or killed, before the first checkpoint: it blocks no retry
        if distributed.is_main():
            print(f"note: {run_dir} holds a run that saved no checkpoint (it failed or was stopped before its "
                  "first one): starting this run there anew.", file=sys.stderr)
        return config, False, True
    raise cli.UserError(
        f"{run_dir} already holds a run. Nothing was changed. Use --resume {run_dir} to "
        f"continue it, --overwrite to replace it, or --out to start a new one elsewhere.")


def check_resume_options(args: argparse.Namespace, run_dir: Path, config: RunConfig) -> None:
    """--resume continues a run with its saved configuration: refuse options that would change it."""
    saved, asked = config.to_dict(), config_from_args(args).to_dict()
    changed = [f"--{name.replace('_', '-')} {asked[name]} (the run has {saved[name]})"
               for name in sorted(args.given & set(saved) - {"data_dir"}) if asked[name] != saved[name]]
    if "out" in args.given and Path(args.out).resolve() != run_dir.resolve():
        changed.append(f"--out {args.out}")
    if changed:
        raise cli.UserError(
            f"--resume {run_dir} continues that run with the configuration it was started with, but "
            f"{', '.join(changed)} was also given. Leave those options out to continue it, or start a "
            "new run with --out.")


def check_writable(run_dir: Path) -> None:
    """Refuse a run directory that cannot be created or written, before anything is done."""
    existing = next(p for p in (run_dir.absolute(), *run_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise cli.UserError(f"cannot write the run directory {run_dir}: {existing} is not a writable "
                            "directory. Choose another --out, or fix its permissions.")


def scale_out(config: RunConfig) -> dict:
    """How the run is spread over processes: --batch-size is the global batch, the learning rate as given."""
    world = distributed.world_size()
    return {"world_size": world, "global_batch_size": config.batch_size,
            "per_process_batch_size": math.ceil(config.batch_size / world), "lr": config.lr}


def check_same_processes(saved: dict, run_dir: Path) -> None:
    """An unfinished run continues exactly only with as many processes as it was started with."""
    started = saved.get("distributed", {}).get("world_size", 1)  # runs from before torchrun support had 1
    if not saved.get("finished") and started != distributed.world_size():
        launch = "python train.py" if started == 1 else f"torchrun --nproc_per_node {started} train.py"
        raise cli.UserError(f"{run_dir} was started with {started} process(es), this is "
                            f"{distributed.world_size()}: each process's random state is saved, so continue "
                            f"it with: {launch} --resume {run_dir}")


def clear_run(run_dir: Path) -> None:
    """Remove what train.py wrote in run_dir (for --overwrite), and nothing else."""
    for name in RUN_ARTIFACTS:
        (run_dir / name).unlink(missing_ok=True)
    for k in (1, 2, 3):
        shutil.rmtree(run_dir / f"q{k}", ignore_errors=True)
        (run_dir / f"samples_q{k}.png").unlink(missing_ok=True)


def main(argv: list[str] | None = None, stop: StopFlag | None = None) -> int:
    args = parse_args(argv)
    device = distributed.init_from_env(cli.resolve_device(args.device))  # a no-op without torchrun
    run_dir, config = (Path(args.resume), None) if args.resume else check_new_run(args, device)
    # one job per run directory, from here to the end (run_lock)
    with run_lock.hold(run_dir, create=not args.resume, command="train.py" + (" --resume" if args.resume else "")):
        return train(args, device, run_dir, config, stop)


def train(args: argparse.Namespace, device, run_dir: Path, config: RunConfig | None, stop: StopFlag | None) -> int:
    main_process = distributed.is_main()
    config, resuming, replace = choose_run(args, run_dir, config)
    remove_stale_temporaries(run_dir)
    saved = read_run(run_dir) if resuming else {"config": config.to_dict(), "distributed": scale_out(config),
                                                "finished": False}
    if resuming:
        check_same_processes(saved, run_dir)
        check_memory(config, device)
    # rank 0 provisions the data first; it goes on once every process has checked the run directory
    with distributed.main_first():
        splits = load_splits(config.data_dir, config.dataset)
    num_train = splits.train.shape[0]
    if config.train_subset is not None and config.train_subset > num_train:
        raise cli.UserError(f"--train-subset {config.train_subset} is larger than the "
                            f"{num_train} training images.")
    if config.batch_size > num_train:
        raise cli.UserError(f"--batch-size {config.batch_size} is larger than the {num_train} training images: a "
                            f"batch holds at most all of them. Give at most --batch-size {num_train}.")
    check_memory(config, device, batch=config.batch_size)
    saved["environment"] = environment()
    if main_process:
        if replace:
            clear_run(run_dir)
        checkpoints.write_json(run_dir / "config.json", saved)
    distributed.barrier()  # no process looks for resumable states before --overwrite has removed them

    started = time.perf_counter()
    try:
        with stop_on_signals(stop or StopFlag()) as stop:
            for k in config.quadrants:
                train_setting(config, k, splits, run_dir, device, stop, not args.no_progress)
    except TrainingInterrupted as stopped:
        raise TrainingInterrupted(f"{stopped}. The resumable state is saved; continue with: "
                                  f"{distributed.command('train.py')} --resume {run_dir}") from None
    saved["finished"] = True
    saved["train_seconds"] = saved.get("train_seconds", 0.0) + time.perf_counter() - started
    if main_process:
        checkpoints.write_json(run_dir / "config.json", saved)
        print(f"trained {config.quadrants} in {time.perf_counter() - started:.0f} s on {device}"
              f"{f' (x{distributed.world_size()} processes)' if distributed.active() else ''}; "
              f"checkpoints in {run_dir}", file=sys.stderr)
    evaluate = f"{distributed.command('evaluate.py')} {run_dir}"
    if resuming and "data_dir" in args.given and args.data_dir != saved["config"]["data_dir"]:
        evaluate += f" --data-dir {args.data_dir}"
    # the signal came after the last training step (to any process: they all skip the evaluation)
    if distributed.any_process(stop.requested) and not args.no_eval:
        raise TrainingInterrupted(f"training of {run_dir} is finished, but its evaluation was skipped. "
                                  f"Evaluate it with: {evaluate}")

    if not args.no_eval:
        started = time.perf_counter()
        try:
            _, table = evaluate_run(run_dir, config, splits, device, config.num_samples,
                                    progress=not args.no_progress)
        except KeyboardInterrupt:  # SIGINT, or SIGTERM (cli.run): the training is saved, evaluate.py redoes the rest
            raise TrainingInterrupted(f"the evaluation of {run_dir} was stopped; its training is finished and "
                                      f"saved. Evaluate it with: {evaluate}") from None
        if main_process:
            print(f"evaluated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            print(table)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
