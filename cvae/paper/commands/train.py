"""Train the baseline and the CVAE on the MNIST quadrant task, then evaluate them on the test set.

    python train.py                          # the paper's experiment: 1, 2 and 3 input quadrants
    python train.py --quadrants 2 --epochs 5 --out runs/quick
    python train.py --resume runs/default    # continue an interrupted run
    python train.py --tensorboard            # also TensorBoard logs (pip install "cvae-sohn[tensorboard]")
    python train.py --config runs/default/config.json --seed 1 --out runs/seed1   # a new run like another
    torchrun --standalone --nproc_per_node 2 train.py ...   # 2 processes, DistributedDataParallel (README)

(or cvae-sohn train ..., python -m cvae train ...). For each setting: the baseline NN is trained first (early
stopping on the validation loss), then frozen; the CVAE is trained on top of it. Then every setting is evaluated
(evaluate does the same for a saved run) and the table and figures are written into the run directory. Under
torchrun --batch-size is the global batch, shared by the processes, and the learning rate is unchanged. When the
training is finished its resumable states (q{k}/*_state.pt, most of a run's size) are deleted, unless
--keep-state; --resume of a finished run trains nothing and evaluates it. --precision, --binarizations and
--sample-k are choices of each evaluation (results.json records them), not part of the run's configuration
(config.json).

One job per run directory: the job holds the directory's lock (cvae.paper.run_lock) from before it looks into it to
its end. Numbers that cannot work (a seed whose generator seeds would overflow, networks that cannot fit in the
device's memory) are refused before anything is created; a run that saved no checkpoint (it failed, ran out of
memory or was killed before its first one) does not block the same command: it starts there anew.

The modules that need torch are imported inside the functions that use them, so that --help starts without it.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import cli
from ..config import RESUME_OPTIONS, OptionClash, RunConfig, add_run_options, flag, given_options, in_flags

if TYPE_CHECKING:
    import torch

    from cvae.training import StopFlag

RUN_ARTIFACTS = ("config.json", "results.json", "results.csv", "results.md", "training_curves.png")
DEFAULT_OUT = "runs/default"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """train's arguments; ``given``: the run options given on the command line, by name."""
    p = argparse.ArgumentParser(prog=cli.program("train"), description=__doc__.split("\n\n")[0])
    add_run_options(p)
    command = p.add_argument_group("run directory and command options")
    command.add_argument("--config", metavar="FILE",
                         help="start a new run with the options of a saved config.json (its \"config\") or of a "
                         "JSON object of options, e.g. {\"epochs\": 5}; options given beside it override it")
    command.add_argument("--out", default=None, help=f"run directory (default: {DEFAULT_OUT})")
    group = command.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    group.add_argument("--resume", metavar="RUN_DIR",
                       help="continue an interrupted run with its saved configuration (options that would change "
                       f"it are refused; {', '.join(sorted(map(flag, RESUME_OPTIONS)))}, --keep-state, --device, "
                       "--precision, --binarizations, --sample-k, --no-eval, --no-progress, --tensorboard may be "
                       "given); a finished run is only evaluated")
    command.add_argument("--keep-state", action="store_true",
                         help="keep the resumable training states (q{k}/*_state.pt) of the finished run (default: "
                         "deleted once the training is finished; the best checkpoints and history stay)")
    command.add_argument("--no-eval", action="store_true", help="train only")
    command.add_argument("--no-progress", action="store_true", help="no progress bars")
    command.add_argument("--tensorboard", action="store_true",
                         help="log every epoch's losses, learning rate and (for the CVAE) validation KL for "
                         "TensorBoard into RUN_DIR/q{k}/tensorboard/{baseline,cvae} (tensorboard --logdir RUN_DIR); "
                         'needs the optional extra: pip install "cvae-sohn[tensorboard]" (default: off)')
    cli.add_device_argument(command)
    cli.add_precision_argument(command)
    cli.add_sample_arguments(command)
    args = p.parse_args(argv)
    args.given = given_options(args)
    return args


def read_options_file(path: str) -> dict:
    """The options of --config FILE: a saved config.json's "config", or a JSON object of options."""
    from cvae import jsonfiles

    try:
        values = jsonfiles.read(path)
    except OSError as error:
        raise cli.UserError(f"--config {path} cannot be read ({error.strerror or error}). Give a run's "
                            "config.json or a JSON file of options.") from None
    except jsonfiles.JSONProblem as problem:  # too large, not UTF-8, not JSON, too deep, a key twice
        raise cli.UserError(f"--config {path} is not a JSON file of options this program reads: it is {problem}. "
                            'Give a run\'s config.json or a JSON object of options such as {"epochs": 5, "hidden": '
                            "[500, 500]}.") from None
    if isinstance(values, dict) and isinstance(values.get("config"), dict):  # a run's config.json
        values = values["config"]
    if not isinstance(values, dict):
        raise cli.UserError(f"--config {path} holds a JSON {type(values).__name__}, not options: give a run's "
                            'config.json or a JSON object of options such as {"epochs": 5, "hidden": [500, 500]}.')
    return values


def new_config(args: argparse.Namespace) -> RunConfig:
    """The configuration of a new run: the options given, over those of --config FILE, over the defaults."""
    start = read_options_file(args.config) if args.config else None
    try:
        return RunConfig.from_options(args.given, start)
    except OptionClash as error:  # options that do not go together, from the command line or the file
        raise cli.UserError(f"{'' if start is None else f'--config {args.config}: '}{error.flags}.") from None
    except ValueError as error:  # the parser checked each option given: a file's value, or options that clash
        if start is None:
            raise cli.UserError(f"{in_flags(str(error))}.") from None
        raise cli.UserError(f"--config {args.config}: {error}. Correct it in the file, or give that option beside "
                            "--config to replace it.") from None


def check_new_run(args: argparse.Namespace, device: torch.device) -> tuple[Path, RunConfig]:
    """What can be checked of a new run before anything is created: --out and the numbers of the configuration.
    Returns (run_dir, config)."""
    from .. import run_lock
    from ..experiment import check_memory

    run_dir = Path(args.out or DEFAULT_OUT)
    config = new_config(args)
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
    check_evaluation(args, config, device)
    return run_dir, config


def check_evaluation(args: argparse.Namespace, config: RunConfig, device: torch.device) -> None:
    """The evaluation's own sizes (--binarizations, --sample-k), checked before anything is trained."""
    from ..experiment import check_evaluation_memory
    from ..sample_evaluation import true_likelihood_applies

    if not args.no_eval:
        draws = args.binarizations if true_likelihood_applies(config.likelihood, config.binarize) else None
        check_evaluation_memory(config, device, draws, args.sample_k)


def other_files(run_dir: Path) -> list[Path]:
    """What a directory holds besides the lock file."""
    from ..run_lock import LOCK_NAME

    return [p for p in run_dir.iterdir() if p.name != LOCK_NAME] if run_dir.is_dir() else []


def not_a_run(run_dir: Path) -> cli.UserError:
    return cli.UserError(f"--out {run_dir} is a directory with other files in it, not a run. "
                         "Choose a new or empty directory for --out.")


def saved_nothing(run_dir: Path) -> bool:
    """Whether run_dir holds a run that failed or was killed before it saved anything (no checkpoint, history
    or results; config.json says unfinished): nothing a new run there could lose."""
    from cvae import jsonfiles

    from ..runs import setting_paths

    try:
        saved = jsonfiles.read(run_dir / "config.json")
    except (OSError, ValueError):
        return False
    if not isinstance(saved, dict) or saved.get("finished") is not False or (run_dir / "results.json").exists():
        return False
    return not any(any(setting_paths(run_dir, k).root.glob(pattern))
                   for k in (1, 2, 3) for pattern in ("*.pt", "history.json"))


def choose_run(args: argparse.Namespace, run_dir: Path, config: RunConfig | None) -> tuple[RunConfig, bool, bool]:
    """The configuration, under the run directory's lock, after checking that nothing will be overwritten
    silently. config: check_new_run's (None with --resume). Returns (config, resuming, replace): replace
    when what train wrote in run_dir must be removed first (--overwrite, or a run that saved nothing)."""
    from cvae import distributed

    from ..runs import read_run

    if args.resume:
        config = RunConfig.from_dict(read_run(run_dir)["config"])
        try:  # an earlier version may have made it: it evaluates, but trains no further
            config.check_together()
        except OptionClash as error:
            raise cli.UserError(f"{run_dir / 'config.json'} holds options that do not go together: {error}. This "
                                "version trains no such run; start a new run with --out, e.g. from this one's options "
                                "with --config and the value changed.") from None
        check_resume_options(args, run_dir, config)
        for name in RESUME_OPTIONS & set(args.given):  # where the data is, not what it is: its MD5s are checked
            setattr(config, name, args.given[name])
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


def check_tensorboard() -> None:
    """--tensorboard needs TensorBoard, an optional extra: a UserError saying how to install it, before anything is
    done."""
    from cvae.callbacks import TENSORBOARD_EXTRA, summary_writer

    try:
        summary_writer()
    except ImportError:
        raise cli.UserError(f"--tensorboard needs the tensorboard package, an optional extra: {TENSORBOARD_EXTRA}. "
                            "Install it, or leave --tensorboard out.") from None


def check_resume_options(args: argparse.Namespace, run_dir: Path, config: RunConfig) -> None:
    """--resume continues a run with its saved configuration: refuse options that would change it."""
    saved = config.to_dict()
    changed = [f"{flag(name)} {value} (the run has {saved[name]})" for name, value in sorted(args.given.items())
               if name not in RESUME_OPTIONS and value != saved[name]]
    if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
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
    from cvae import distributed

    world = distributed.world_size()
    return {"world_size": world, "global_batch_size": config.batch_size,
            "per_process_batch_size": math.ceil(config.batch_size / world), "lr": config.lr}


def check_same_processes(saved: dict, run_dir: Path) -> None:
    """An unfinished run continues exactly only with as many processes as it was started with."""
    from cvae import distributed

    started = saved.get("distributed", {}).get("world_size", 1)  # runs from before torchrun support had 1
    if not saved.get("finished") and started != distributed.world_size():
        launch = "python train.py" if started == 1 else f"torchrun --nproc_per_node {started} train.py"
        raise cli.UserError(f"{run_dir} was started with {started} process(es), this is "
                            f"{distributed.world_size()}: each process's random state is saved, so continue "
                            f"it with: {launch} --resume {run_dir}")


def clear_run(run_dir: Path) -> None:
    """Remove what train wrote in run_dir (for --overwrite), and nothing else."""
    for name in RUN_ARTIFACTS:
        (run_dir / name).unlink(missing_ok=True)
    for k in (1, 2, 3):
        shutil.rmtree(run_dir / f"q{k}", ignore_errors=True)
        (run_dir / f"samples_q{k}.png").unlink(missing_ok=True)


def main(argv: list[str] | None = None, stop: StopFlag | None = None) -> int:
    """train's command line (argv without the program name); stop: a flag that, once set, stops the training at
    the next step with its state saved (default: one set by SIGINT and SIGTERM). Returns the exit status."""
    args = parse_args(argv)
    if args.config and args.resume:
        raise cli.UserError(f"--config {args.config} starts a new run, and --resume {args.resume} continues a run "
                            "with its own configuration: give one of them. To change a run's options, start a new "
                            f"run from its configuration: --config {Path(args.resume) / 'config.json'} --out NEW_DIR")
    cli.start_torch()
    from cvae import distributed

    from .. import run_lock

    if args.tensorboard:
        check_tensorboard()

    device = distributed.init_from_env(cli.resolve_device(args.device))  # a no-op without torchrun
    run_dir, config = (Path(args.resume), None) if args.resume else check_new_run(args, device)
    # one job per run directory, from here to the end (run_lock)
    with run_lock.hold(run_dir, create=not args.resume, command="train.py" + (" --resume" if args.resume else "")):
        try:
            return train(args, device, run_dir, config, stop)
        except OSError as error:  # a file that could not be written: the run goes on from its last saved state
            error.add_note(f"continue the run with: {distributed.command('train.py')} --resume {run_dir}")
            raise


def train(args: argparse.Namespace, device: torch.device, run_dir: Path, config: RunConfig | None,
          stop: StopFlag | None) -> int:
    """Train (what is left of) the run in run_dir, then evaluate it; the caller holds the run's lock."""
    from cvae import checkpoints, distributed, precision
    from cvae.training import StopFlag, TrainingInterrupted, stop_on_signals

    from ..config import environment
    from ..data import load_splits
    from ..experiment import check_memory, delete_states, evaluate_run, remove_stale_temporaries, train_setting
    from ..runs import read_run

    main_process = distributed.is_main()
    config, resuming, replace = choose_run(args, run_dir, config)
    remove_stale_temporaries(run_dir)
    saved = read_run(run_dir) if resuming else {"config": config.to_dict(), "distributed": scale_out(config),
                                                "finished": False}
    trained = bool(saved.get("finished"))  # --resume of a finished run: nothing is trained again
    saved["keep_state"] = bool(saved.get("keep_state")) or args.keep_state
    if resuming:
        check_same_processes(saved, run_dir)
        if not trained:
            check_memory(config, device)
        check_evaluation(args, config, device)
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
    if not trained:
        check_memory(config, device, batch=config.batch_size)
        saved["environment"] = environment()
    if main_process:
        if replace:
            clear_run(run_dir)
        checkpoints.write_json(run_dir / "config.json", saved)
    distributed.barrier()  # no process looks for resumable states before --overwrite has removed them

    stop = stop or StopFlag()
    if trained:
        if main_process:
            print(f"{run_dir} is trained already: nothing to train" + ("" if args.no_eval else ", evaluating it"),
                  file=sys.stderr)
    else:
        started = time.perf_counter()
        try:
            with stop_on_signals(stop):
                for k in config.quadrants:
                    train_setting(config, k, splits, run_dir, device, stop, not args.no_progress, args.tensorboard)
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
    if not saved["keep_state"]:  # config.json says finished first: a run stopped in between is trained, not redone
        freed = delete_states(run_dir, config.quadrants)
        if freed and main_process:
            print(f"deleted the resumable training states ({freed / 2**20:.0f} MiB; --keep-state keeps them)",
                  file=sys.stderr)
    evaluate = f"{distributed.command('evaluate.py')} {run_dir}"
    if resuming and args.given.get("data_dir", saved["config"]["data_dir"]) != saved["config"]["data_dir"]:
        evaluate += f" --data-dir {args.given['data_dir']}"
    # the signal came after the last training step (to any process: they all skip the evaluation)
    if distributed.any_process(stop.requested) and not args.no_eval:
        raise TrainingInterrupted(f"training of {run_dir} is finished, but its evaluation was skipped. "
                                  f"Evaluate it with: {evaluate}")

    if not args.no_eval:
        started = time.perf_counter()
        arithmetic = precision.resolve(args.precision, device)
        try:
            _, table = evaluate_run(run_dir, config, splits, device, config.num_samples,
                                    progress=not args.no_progress, arithmetic=arithmetic,
                                    binarizations=args.binarizations, sample_k=args.sample_k)
        except KeyboardInterrupt:  # SIGINT, or SIGTERM (cli.run): the training is saved, evaluate redoes the rest
            raise TrainingInterrupted(f"the evaluation of {run_dir} was stopped; its training is finished and "
                                      f"saved. Evaluate it with: {evaluate}") from None
        if main_process:
            print(f"evaluated in {time.perf_counter() - started:.0f} s ({arithmetic})", file=sys.stderr)
            print(table)
    return 0
