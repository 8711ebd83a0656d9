"""Side by side in one run: this library against the peer, the Pyro 1.9.1 CVAE tutorial's models.

The peer (benchmarks/pyro_tutorial.py) is written with Pyro's public API after the tutorial (examples/cvae in
the Pyro repository): the baseline MLP trained with plain PyTorch on the masked binary cross-entropy; the CVAE
whose prior net sees x with the baseline's prediction filled in, whose generation net sees z only, and whose
recognition net sees x with y filled in, trained with pyro.infer.SVI and Trace_ELBO, the likelihood a Bernoulli
over the pixels that are -1 in x. Both implementations get the same data (real MNIST, the first --train-subset training
images in the same order, pre-built tensors), batch size 128, MLPs 500-500, z 200, Adam 1e-3.

Timed, median over --repeats with the implementations interleaved (after a short warm-up):
  - one training epoch of each model. Ours: cvae.training.fit's step (see common.OurTrainer), the CVAE with
    the baseline's fill precomputed once per run as fit gets it (that fill is timed apart). Peer: the
    tutorial's baseline step and svi.step. Epoch times are reported raw and scaled to 50,000 images.
  - one evaluation over the first --test-subset test images. Peer: the tutorial's (generate_table): the
    negative ELBO with 10 particles (SVI with Trace_ELBO(num_particles=10), evaluate_loss: no graph, where
    the tutorial's differentiable_loss builds one, so the peer is if anything favoured), plus the baseline's masked
    BCE, in batches of --peer-eval-batch (the tutorial's 32). Ours: cvae.estimators.cll_importance with
    S = 100 plus the baseline's exact CLL.
  - apart, for reference: one epoch of the tutorial's own data pipeline (a per-item Dataset with the
    ToTensor and MaskImages transforms, DataLoader with shuffle, batch 128), which the peer's real runs also
    pay and the timings above leave out.
The ratios are peer time / our time. Models are untrained: the cost does not depend on the weights.

    pip install -e ".[bench]"
    python benchmarks/compare_pyro.py [--train-subset 10000] [--test-subset 10000] [--repeats 3]

Prints one JSON object on stdout; progress goes to stderr. Pyro is imported only here and in pyro_tutorial.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable

import pyro
import torch
from common import (
    DATA_DIR,
    FLOP_RULE,
    OurTrainer,
    baseline_training_flops,
    cvae_training_flops,
    first_layer_rule,
    forward_flops,
    linears,
    log,
    machine,
    our_models,
    profile_ops,
    quadrant_data,
    start,
    timed,
    training_flops,
)
from pyro.infer import SVI, Trace_ELBO
from pyro_tutorial import PeerBaselineNet, PeerCVAE, TutorialMNIST, masked_bce_sum
from torch.utils.data import DataLoader, Subset

from cvae import estimators, precision
from cvae.fitting import predictions
from cvae.paper.models import CVAE, BaselineNet
from cvae.paper.quadrants import QuadrantTask
from cvae.training import epoch_order

BATCH_SIZE = 128
FULL_EPOCH = 50_000


def tutorial_view(task: QuadrantTask, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's (x, y): both whole images, y with -1 on x's pixels (ours holds y's pixels only)."""
    return x, torch.where(task.input_mask.to(x.device), -1.0, task.combine(x, y))


def batches(data: tuple[torch.Tensor, ...], order: torch.Tensor, size: int):
    for first in range(0, order.numel(), size):
        index = order[first:first + size]
        yield tuple(t[index] for t in data)


class PeerTrainer:
    """The tutorial's training loops: plain Adam on the baseline, SVI + Trace_ELBO + pyro.optim.Adam on the CVAE."""

    def __init__(self, data: tuple[torch.Tensor, torch.Tensor], device: torch.device):
        self.data, self.epoch = data, 0
        self.baseline = PeerBaselineNet().to(device)
        self.optimizer = torch.optim.Adam(self.baseline.parameters(), lr=1e-3)
        pyro.clear_param_store()
        self.cvae = PeerCVAE(self.baseline).to(device)
        self.svi = SVI(self.cvae.model, self.cvae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=Trace_ELBO())

    def order(self) -> torch.Tensor:
        self.epoch += 1
        return epoch_order(self.data[0].shape[0], 0, self.epoch - 1)

    def baseline_epoch(self, limit: int | None = None) -> None:
        self.baseline.train()
        running = 0.0
        for i, (inputs, outputs) in enumerate(batches(self.data, self.order(), BATCH_SIZE)):
            if limit is not None and i == limit:
                break
            self.optimizer.zero_grad()
            loss = masked_bce_sum(self.baseline(inputs), outputs) / inputs.size(0)
            loss.backward()
            self.optimizer.step()
            running += loss.item()

    def cvae_epoch(self, limit: int | None = None) -> None:
        running = 0.0
        for i, (inputs, outputs) in enumerate(batches(self.data, self.order(), BATCH_SIZE)):
            if limit is not None and i == limit:
                break
            running += self.svi.step(inputs, outputs) / inputs.size(0)

    def evaluate(self, test: tuple[torch.Tensor, torch.Tensor], batch_size: int) -> tuple[float, float]:
        """The tutorial's generate_table: the baseline's masked BCE and the 10-particle negative ELBO."""
        self.baseline.eval()
        evaluator = SVI(self.cvae.model, self.cvae.guide, pyro.optim.Adam({"lr": 1e-3}),
                        loss=Trace_ELBO(num_particles=10))
        baseline_cll = cvae_cll = 0.0
        order = torch.arange(test[0].shape[0])
        for inputs, outputs in batches(test, order, batch_size):
            with torch.no_grad():
                baseline_cll += masked_bce_sum(self.baseline(inputs), outputs).item() / inputs.size(0)
            cvae_cll += evaluator.evaluate_loss(inputs, outputs) / inputs.size(0)
        return baseline_cll, cvae_cll


def tutorial_pipeline_epoch(k: int, n: int) -> Callable[[], None]:
    dataset = Subset(TutorialMNIST(DATA_DIR, k), range(n))
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=0)

    def epoch() -> None:
        for _ in loader:
            pass

    return epoch


# ---- the comparison ---

def flop_counts(baseline: BaselineNet, cvae: CVAE, peer: PeerTrainer, num_samples: int) -> dict[str, int]:
    """Matmul FLOPs per image of each timed task (common.FLOP_RULE). Evaluation counts forward passes: ours
    runs the baseline twice (its CLL, the CVAE's fill), the per-image nets once and the generation net's z part
    S times; the peer runs its baseline once for its loss and all four nets once per particle (10)."""
    generation, p = cvae.generation_net, peer.cvae
    return {
        "ours_baseline_train": baseline_training_flops(baseline),
        "peer_baseline_train": training_flops(first_layer_rule(peer.baseline)),
        "ours_cvae_train": cvae_training_flops(cvae),
        "peer_cvae_train": training_flops([*((layer, "frozen") for layer in linears(p.baseline_net)),
                                           *first_layer_rule(p.prior_net), *first_layer_rule(p.recognition_net),
                                           *((layer, "full") for layer in linears(p.generation_net))]),
        "ours_evaluation": forward_flops([*linears(baseline), *linears(cvae.baseline), *linears(cvae.recognition_net),
                                          *linears(cvae.prior_net), generation.from_x])
        + num_samples * forward_flops([generation.from_z, *linears(generation.rest)]),
        "peer_evaluation": forward_flops(linears(peer.baseline)) + 10 * forward_flops(linears(p)),
    }


# ---- the main ------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quadrants", type=int, choices=(1, 2, 3), default=1)
    p.add_argument("--train-subset", type=int, default=10_000, help="training images per timed epoch")
    p.add_argument("--test-subset", type=int, default=10_000, help="test images per timed evaluation")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement (median reported)")
    p.add_argument("--peer-eval-batch", type=int, default=32, help="the tutorial's evaluation batch size")
    p.add_argument("--num-samples", type=int, default=100, help="S of our importance-sampled CLL")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="what-if: override cvae.estimators.MAX_ROWS (image-samples per pass) for this run")
    p.add_argument("--profile", action="store_true",
                   help="also profile 20 CVAE training steps and a 512-image evaluation of each (tables on stderr)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    start(args.threads)
    if args.max_rows is not None:
        estimators.MAX_ROWS = args.max_rows
    device = torch.device(args.device)
    info = machine()
    data = quadrant_data(args.quadrants, device, args.train_subset, args.test_subset)
    train, test = data["train"], data["test"]
    n_train, n_test = train[0].shape[0], test[0].shape[0]

    baseline, cvae = our_models(args.quadrants, device)
    fill_seconds = timed(lambda: predictions(cvae.baseline, train[0]), device)
    ours_baseline = OurTrainer(baseline, train, BATCH_SIZE)
    ours_cvae = OurTrainer(cvae, (*train, predictions(cvae.baseline, train[0])), BATCH_SIZE)
    baseline_bf16, cvae_bf16 = our_models(args.quadrants, device)  # trained apart: their weights drift apart
    ours_baseline_bf16 = OurTrainer(baseline_bf16, train, BATCH_SIZE, precision="bf16")
    ours_cvae_bf16 = OurTrainer(cvae_bf16, (*train, predictions(cvae_bf16.baseline, train[0])), BATCH_SIZE,
                                precision="bf16")
    generator = torch.Generator(device).manual_seed(0)

    def ours_evaluate(x: torch.Tensor = test[0], y: torch.Tensor = test[1], arithmetic: str = "fp32") -> None:
        with precision.autocast(arithmetic, device):
            with torch.inference_mode():
                (-baseline.log_likelihood(x, y)).mean().item()
            estimators.cll_importance(cvae.eval(), x, y, args.num_samples, generator).mean().item()

    peer = PeerTrainer(tutorial_view(cvae.task, *train), device)
    pipeline = tutorial_pipeline_epoch(args.quadrants, n_train)

    log("warm-up")
    for trainer in (ours_baseline, ours_cvae, ours_baseline_bf16, ours_cvae_bf16):
        trainer.run(5)
    peer.baseline_epoch(limit=5)
    peer.cvae_epoch(limit=5)
    ours_evaluate(test[0][:64], test[1][:64])
    ours_evaluate(test[0][:64], test[1][:64], "bf16")
    peer_test = tutorial_view(cvae.task, *test)
    peer.evaluate((peer_test[0][:64], peer_test[1][:64]), args.peer_eval_batch)

    measurements: dict[str, Callable[[], object]] = {
        "ours_baseline_epoch": ours_baseline.run,
        "peer_baseline_epoch": peer.baseline_epoch,
        "ours_cvae_epoch": ours_cvae.run,
        "ours_baseline_epoch_bf16": ours_baseline_bf16.run,
        "ours_cvae_epoch_bf16": ours_cvae_bf16.run,
        "peer_cvae_epoch": peer.cvae_epoch,
        "ours_evaluation": ours_evaluate,
        "ours_evaluation_bf16": lambda: ours_evaluate(arithmetic="bf16"),
        "peer_evaluation": lambda: peer.evaluate(peer_test, args.peer_eval_batch),
        "tutorial_data_pipeline_epoch": pipeline,
    }
    times: dict[str, list[float]] = {name: [] for name in measurements}
    for repeat in range(args.repeats):
        for name, fn in measurements.items():
            times[name].append(timed(fn, device))
            log(f"repeat {repeat + 1}/{args.repeats} {name}: {times[name][-1]:.2f} s")
    seconds = {name: statistics.median(t) for name, t in times.items()}

    profiles = {}
    if args.profile:
        part = (test[0][:512], test[1][:512])
        profiles = {
            "ours_cvae_20_steps": profile_ops(lambda: ours_cvae.run(20), device, "ours: 20 CVAE steps"),
            "peer_cvae_20_steps": profile_ops(lambda: peer.cvae_epoch(limit=20), device, "peer: 20 svi.step"),
            "ours_evaluation_512": profile_ops(lambda: ours_evaluate(*part), device, "ours: evaluation, 512 images"),
            "peer_evaluation_512": profile_ops(lambda: peer.evaluate((peer_test[0][:512], peer_test[1][:512]),
                                                                     args.peer_eval_batch), device,
                                               "peer: evaluation, 512 images"),
        }

    flops = flop_counts(baseline, cvae, peer, args.num_samples)
    scale = FULL_EPOCH / n_train
    steps = -(-n_train // BATCH_SIZE)
    epochs = {}
    for name in ("ours_baseline_epoch", "peer_baseline_epoch", "ours_cvae_epoch", "peer_cvae_epoch",
                 "ours_baseline_epoch_bf16", "ours_cvae_epoch_bf16",
                 "tutorial_data_pipeline_epoch"):
        epochs[name] = {"seconds": round(seconds[name], 3), "seconds_per_50000_images": round(seconds[name] * scale, 2),
                        "batches_per_s": round(steps / seconds[name], 1), "runs": [round(t, 3) for t in times[name]]}
    evaluation = {name: {"seconds": round(seconds[name], 3), "runs": [round(t, 3) for t in times[name]]}
                  for name in ("ours_evaluation", "ours_evaluation_bf16", "peer_evaluation")}
    auto = precision.resolve("auto", device)
    pipeline_s = seconds["tutorial_data_pipeline_epoch"]

    def ratio(peer_s: float, ours_s: float) -> float:
        return round(peer_s / ours_s, 2)

    print(json.dumps({
        "benchmark": "compare_pyro",
        "machine": info | {"load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "pyro": pyro.__version__,
        "device": str(device),
        "quadrants": args.quadrants,
        "train_images_per_epoch": n_train,
        "test_images": n_test,
        "batch_size": BATCH_SIZE,
        "repeats": args.repeats,
        "ours_evaluation": f"cll_importance S={args.num_samples} + baseline exact CLL, float32 (and _bf16: the "
                           "networks' matmuls under bf16 autocast, cvae.precision), "
                           f"MAX_ROWS={estimators.MAX_ROWS}" + (" (overridden)" if args.max_rows else ""),
        "peer_evaluation": "SVI(..., Trace_ELBO(num_particles=10)).evaluate_loss + baseline masked BCE, "
                           f"batch {args.peer_eval_batch}",
        "epochs": epochs,
        "ours_fill_seconds_once_per_run": round(fill_seconds, 3),
        "evaluation": evaluation,
        "matmul_flops_per_image": flops,
        "flop_counting_rule": FLOP_RULE,
        "flop_ratios_peer_over_ours": {task: round(flops[f"peer_{task}"] / flops[f"ours_{task}"], 2)
                                       for task in ("baseline_train", "cvae_train", "evaluation")},
        "ratios_peer_over_ours": {
            "baseline_epoch": ratio(seconds["peer_baseline_epoch"], seconds["ours_baseline_epoch"]),
            "cvae_epoch": ratio(seconds["peer_cvae_epoch"], seconds["ours_cvae_epoch"]),
            "baseline_epoch_bf16": ratio(seconds["peer_baseline_epoch"], seconds["ours_baseline_epoch_bf16"]),
            "cvae_epoch_bf16": ratio(seconds["peer_cvae_epoch"], seconds["ours_cvae_epoch_bf16"]),
            "evaluation": ratio(seconds["peer_evaluation"], seconds["ours_evaluation"]),
            "evaluation_bf16": ratio(seconds["peer_evaluation"], seconds["ours_evaluation_bf16"]),
            f"evaluation_precision_auto ({auto})":
                ratio(seconds["peer_evaluation"], seconds["ours_evaluation" + ("_bf16" if auto == "bf16" else "")]),
            "baseline_epoch_with_tutorial_data_pipeline":
                ratio(seconds["peer_baseline_epoch"] + pipeline_s, seconds["ours_baseline_epoch"]),
            "cvae_epoch_with_tutorial_data_pipeline":
                ratio(seconds["peer_cvae_epoch"] + pipeline_s, seconds["ours_cvae_epoch"]),
        },
    } | ({"profile_self_time_share": profiles} if profiles else {}), indent=2))


if __name__ == "__main__":
    main()
