"""The quadrant experiment end to end: training one setting into a run directory (its layout:
``cvae.paper.runs``), evaluating a run.

Under torchrun every process trains and evaluates its share (``cvae.distributed``); only rank 0 writes.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch

from cvae import checkpoints, distributed, precision, records
from cvae.callbacks import TensorBoardLogger
from cvae.inputs import memory_bytes
from cvae.likelihoods import by_name
from cvae.regressor import Regressor
from cvae.settings import TrainingSettings
from cvae.training import StopFlag, train_loop

from . import figures, report, sample_evaluation
from .classifier import classifier_and_record
from .cli import UserError
from .config import RunConfig
from .data import Splits
from .evaluation import BLOCK, sharded_per_image_cll, summarize
from .models import CVAE, BaselineNet, expected_arguments, load_model
from .quadrants import NUM_PIXELS, QuadrantTask
from .runs import SettingPaths, setting_paths

# history.json may be long: two models' entries of about 150 bytes for each of up to MAX_EPOCHS epochs
HISTORY_BYTES = 1 << 29


def task_data(images: torch.Tensor, task: QuadrantTask, binarize: bool,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, 784) with -1 on the output pixels and the output pixels y (N, num_output_pixels), on the device;
    with binarize, the targets y are thresholded at 0.5."""
    x, y = task.split(images.to(device))
    return x, (y > 0.5).to(y.dtype) if binarize else y


@torch.no_grad()
def predictions(baseline: Regressor, x: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """The baseline's prediction y_hat for a whole dataset, computed once: (N, y_dim)."""
    baseline.eval()
    return torch.cat([baseline(part) for part in x.split(block)])


def fit_settings(config: RunConfig, device: torch.device) -> TrainingSettings:
    """The training settings of a run configuration, with its train_precision resolved for the device
    (``cvae.precision.resolve``), so that the run's config.json says which arithmetic auto chose."""
    settings = config.training_settings()
    return settings.replace(precision=precision.resolve(settings.precision, device))


def new_model(kind: str, k: int, config: RunConfig, baseline: BaselineNet | None = None) -> BaselineNet | CVAE:
    """A new, untrained model of a run, from its configuration (``models.expected_arguments``): the baseline, or
    the CVAE on top of a trained baseline."""
    arguments = expected_arguments(kind, k, config)
    if kind == "baseline":
        return records.build({"class": records.qualified_name(BaselineNet), "args": arguments})
    return CVAE(baseline, **{name: value for name, value in arguments.items() if name != "baseline"})


def remove_stale_temporaries(run_dir: Path) -> None:
    """Remove the temporary files (``checkpoints.atomic_path``) that a killed job left in a run directory: with
    the run's lock held (``run_lock``), no other job is writing there. Rank 0 only; a note when there were any."""
    if not distributed.is_main():
        return
    removed = checkpoints.remove_stale_temporaries(run_dir)
    if removed:
        print(f"note: removed {len(removed)} temporary file(s) that a killed job left in {run_dir}: "
              f"{', '.join(str(path.relative_to(run_dir)) for path in removed)}", file=sys.stderr)


def parameter_counts(config: RunConfig, k: int) -> tuple[int, int]:
    """(the baseline's, the CVAE's trainable) parameter counts for setting k, counted from the configuration
    without building the networks, so that sizes that cannot fit are refused before anything is allocated."""
    def mlp(sizes: list[int]) -> int:
        return sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))

    y_dim, hidden, z_dim = QuadrantTask(k).num_output_pixels, list(config.hidden), config.z_dim
    outputs = by_name(config.likelihood).num_params * y_dim
    gaussian = mlp([NUM_PIXELS, *hidden, 2 * z_dim])  # the recognition net (whole image) and the prior (x filled)
    generation = (z_dim + NUM_PIXELS + 1) * hidden[0] + mlp([*hidden, outputs])  # first layer split: z, x filled
    autoregression = y_dim * NUM_PIXELS if config.autoregressive else 0
    return mlp([NUM_PIXELS, *hidden, outputs]), 2 * gaussian + generation + autoregression


def check_memory(config: RunConfig, device: torch.device, batch: int = 0) -> None:
    """A UserError when training this configuration cannot fit in the device's memory, by a lower bound: the
    CVAE's trainable parameters four times over (weights, gradients, Adam's two moments) and the frozen
    baseline's twice, float32; with batch (the training images per step, once the data is loaded), also the
    samples of z of one step and the generation net's first layer on them. Under torchrun on the CPU the
    processes of this machine share its memory."""
    total = memory_bytes(device)
    if total is None:
        return
    baseline, cvae = max(parameter_counts(config, k) for k in config.quadrants)
    samples = config.iw_samples if config.objective == "iwae" else 1
    per_process = math.ceil(batch / distributed.world_size())
    needed = 4 * (4 * cvae + 2 * baseline + per_process * samples * (config.z_dim + config.hidden[0]))
    if device.type != "cuda":
        needed *= int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if distributed.active() else 1
    if needed <= total:
        return
    hidden = ",".join(map(str, config.hidden))
    step = (f", and one step's {per_process * samples:,} samples of z (--batch-size {config.batch_size}"
            + (f" x --iw-samples {config.iw_samples}" if samples > 1 else "") + ")") if batch else ""
    raise UserError(
        f"--hidden {hidden} and --z-dim {config.z_dim} make a CVAE of {cvae:,} trainable parameters{step}: "
        f"training needs at least {needed / 2 ** 30:,.1f} GiB (float32 weights, gradients and Adam's two "
        f"moments), more than the {total / 2 ** 30:,.1f} GiB of memory of {device}. Lower --hidden or --z-dim"
        + (" (or --batch-size, --iw-samples)" if batch else "") + ".")


def check_evaluation_memory(config: RunConfig, device: torch.device, draws: int | None, sample_k: int) -> None:
    """A UserError when the evaluation's draws beyond S cannot fit in the device's memory, by lower bounds, before any
    work: draws (--binarizations T, or None where the true likelihood is not computed) binary images of each of a
    block's BLOCK test images, uniforms and draws in float32; sample_k (--sample-k K) completions of one test image,
    each its completed image, its output pixels and its z. (S, --num-samples, is not bounded: its samples are made
    in chunks, in bounded memory.)"""
    total = memory_bytes(device)
    if total is None:
        return
    outputs = max(QuadrantTask(k).num_output_pixels for k in config.quadrants)
    gib = f"more than the {total / 2 ** 30:,.1f} GiB of memory of {device}"
    if draws:
        needed = 4 * 2 * draws * BLOCK * outputs
        if needed > total:
            raise UserError(f"--binarizations {draws} draws {draws:,} binary images of the output pixels of each test "
                            f"image, for {BLOCK} images at a time: at least {needed / 2 ** 30:,.1f} GiB, {gib}. Give "
                            "a smaller --binarizations (default 1: more draws only lower the binarization noise of "
                            "the true CLL).")
    if sample_k:
        needed = 4 * sample_k * (NUM_PIXELS + outputs + config.z_dim)
        if needed > total:
            raise UserError(f"--sample-k {sample_k} asks for {sample_k:,} completions of each test image: at least "
                            f"{needed / 2 ** 30:,.1f} GiB for one image alone, {gib}. Give a smaller --sample-k "
                            "(default 10; 0 leaves the sample metrics out).")


def train_setting(config: RunConfig, k: int, splits: Splits, run_dir: Path, device: torch.device,
                  stop: StopFlag | None = None, progress: bool = True,
                  tensorboard: bool = False) -> dict[str, list[dict]]:
    """Train the baseline, then the CVAE on top of its best checkpoint, for k input quadrants.

    Returns both histories. Stages already finished in run_dir are skipped, unfinished ones resumed. With
    tensorboard, each stage's epochs are logged into q{k}/tensorboard/{baseline,cvae} (``cvae.callbacks``; the
    weights are the same as without).
    """
    paths = setting_paths(run_dir, k)
    if setting_trained(paths):  # its resumable states may be gone (delete_states): nothing is trained again
        return read_history(paths)
    task = QuadrantTask(k)
    train_images = splits.train if config.train_subset is None else splits.train[:config.train_subset]
    train = task_data(train_images, task, config.binarize, device)
    val = task_data(splits.val, task, config.binarize, device)
    settings = fit_settings(config, device)

    torch.manual_seed(config.seed * 10 + k)  # initial weights, the same whether resumed or not
    baseline = new_model("baseline", k, config).to(device)
    # no KL term and gray targets: the same baseline whatever the CVAE's training options
    baseline_settings = settings.replace(kl_warmup=0, sample_targets=False, free_bits=0.0, aux_weight=0.0)
    histories = {"baseline": train_loop(baseline, train, val, baseline_settings, paths.baseline,
                                 paths.baseline_state, stop, progress, f"q{k} baseline",
                                 logs(paths.tensorboard / "baseline", tensorboard))}

    torch.manual_seed(config.seed * 10 + k + 5)
    best_baseline = load_model(paths.baseline, "baseline", k, config, device)
    cvae = new_model("cvae", k, config, best_baseline).to(device)
    train, val = (*train, predictions(best_baseline, train[0])), (*val, predictions(best_baseline, val[0]))
    histories["cvae"] = train_loop(cvae, train, val, settings, paths.cvae, paths.cvae_state, stop,
                            progress, f"q{k} cvae", logs(paths.tensorboard / "cvae", tensorboard))
    if distributed.is_main():
        checkpoints.write_json(paths.history, histories)
    return histories


def logs(log_dir: Path, tensorboard: bool) -> list[TensorBoardLogger]:
    """A training stage's callbacks: a TensorBoardLogger into log_dir with tensorboard, none without."""
    return [TensorBoardLogger(log_dir)] if tensorboard else []


def setting_trained(paths: SettingPaths) -> bool:
    """Whether a setting's training is finished: train_setting writes history.json once both stages are, beside
    their best checkpoints."""
    return paths.history.is_file() and paths.baseline.is_file() and paths.cvae.is_file()


def read_history(paths: SettingPaths) -> dict[str, list[dict]]:
    """A setting's history.json: {"baseline": [...], "cvae": [...]}, the per-epoch losses of both models."""
    return checkpoints.read_json(
        paths.history, "history.json",
        "Delete it to evaluate without its training curves, or restore it from a copy of the run.",
        limit=HISTORY_BYTES)


def delete_states(run_dir: Path, quadrants: list[int]) -> int:
    """Delete the resumable training states of a finished run (most of its size); returns the bytes freed. The
    best checkpoints and history.json stay, and say that each setting is trained (``setting_trained``). Rank 0
    only (0 elsewhere)."""
    if not distributed.is_main():
        return 0
    freed = 0
    for k in quadrants:
        paths = setting_paths(run_dir, k)
        for state in (paths.baseline_state, paths.cvae_state):
            if state.is_file():
                freed += state.stat().st_size
                state.unlink()
    return freed


def evaluate_run(run_dir: Path, config: RunConfig, splits: Splits, device: torch.device,
                 num_samples: int, test_subset: int | None = None,
                 progress: bool = True, arithmetic: str = "fp32", binarizations: int = 1, sample_k: int = 10,
                 data_dir: str | Path | None = None) -> tuple[dict, str]:
    """Evaluate every trained setting of a run on the test set; write the tables and figures. arithmetic: the
    resolved precision of the networks' matrix products, "fp32" or "bf16" (``cvae.precision.resolve``).

    Beside the CLL (``cvae.paper.evaluation``), per setting (``cvae.paper.sample_evaluation``): the true
    likelihood of the binarized outputs with ``binarizations`` draws per image, where the run's score of its
    targets is no log-probability (``true_likelihood_applies``; results.json's "binarizations" is null
    elsewhere), and the sample metrics of ``sample_k`` predictions per image (0: none). Their classifier is the
    one cached in data_dir (by default the run's), trained there first when it is not (by rank 0 under
    torchrun, the others waiting).

    Returns the results dict (also in results.json) and the markdown table. Under torchrun each process
    evaluates a share of the test images; rank 0 gathers them, writes and returns the table ("" elsewhere).
    """
    test_images = splits.test if test_subset is None else splits.test[:test_subset]
    draws = binarizations if sample_evaluation.true_likelihood_applies(config.likelihood, config.binarize) else None
    results: dict = {"dataset": config.dataset, "protocol": config.protocol, "likelihood": config.likelihood,
                     "objective": config.objective,
                     "alpha": config.alpha, "seed": config.seed, "preset": config.preset,
                     "num_samples": num_samples, "test_examples": int(test_images.shape[0]), "precision": arithmetic,
                     "binarizations": draws, "sample_k": sample_k, "z_dim": config.z_dim}
    histories = {}
    # one test digit of each class, the first in test order, for the sample grids
    shown = torch.stack([(splits.test_labels == c).nonzero()[0, 0] for c in range(10)])
    # every checkpoint is loaded and checked before anything is written
    models = {k: (load_model(setting_paths(run_dir, k).baseline, "baseline", k, config, device),
                  load_model(setting_paths(run_dir, k).cvae, "cvae", k, config, device))
              for k in config.quadrants}
    classifier = None
    if sample_k:
        with distributed.main_first():  # rank 0 trains it on first need while the others wait, then they load it
            classifier, record = classifier_and_record(data_dir or config.data_dir, device,
                                                       progress and distributed.is_main(), dataset=config.dataset,
                                                       splits=splits)
        results["classifier_test_accuracy"] = record.get("test_accuracy")
    for k, (baseline, cvae) in models.items():
        paths = setting_paths(run_dir, k)
        task = QuadrantTask(k)
        x, y = task_data(test_images, task, config.binarize, device)
        started = time.perf_counter()
        show = progress and distributed.is_main()
        values = sharded_per_image_cll(baseline, cvae, x, y, num_samples, config.seed, show, f"q{k}",
                                       arithmetic=arithmetic)
        more = sample_evaluation.sharded_sample_values(baseline, cvae, classifier, x, y, num_samples, draws,
                                                       sample_k, config.seed, show, f"q{k}", arithmetic)
        results[str(k)] = summarize(values) | sample_evaluation.summarize(more) | {
            "seconds": time.perf_counter() - started}
        if not distributed.is_main():
            continue
        checkpoints.save(values | sample_evaluation.per_image(more), paths.per_image)
        xs, ys = task_data(splits.test[shown], task, config.binarize, device)
        figures.sample_grid(baseline, cvae, xs, ys, Path(run_dir) / f"samples_q{k}.png",
                            seed=config.seed, title=f"{k} input quadrant{'s' if k > 1 else ''}")
        if paths.history.exists():
            histories[str(k)] = read_history(paths)
    if not distributed.is_main():
        return results, ""
    if histories:
        figures.training_curves(histories, Path(run_dir) / "training_curves.png")
    return results, report.write_results(Path(run_dir), results)
