"""``fit`` against a minimal hand-written training loop: is the library's loop as fast as your own?

Both train the same MLP ConditionalVAE (the library's defaults: hidden 128-128, z of 8, a mixture prior of 8) from
the same initial weights on the same 50,000 synthetic examples (x of 20 dimensions, y of 10 with two answers per
x), with fused Adam, the same batches (fit's epoch order), the same objective (the ELBO, KL weight 1: fit with
kl_warmup=0) and the same noise, and each computes the validation loss on the same 2,000 examples after every epoch.
The hand loop is what one would write: index a batch, loss, zero_grad, backward, step. fit adds its checks of the
data, early stopping and the best weights kept, the finiteness checks and the progress accounting (progress bar
off). A first run of one epoch each checks that both end with the same weights, bit for bit (and warms up).

Timed: --repeats runs of --epochs epochs each, fit and the hand loop interleaved (their order alternating); the
seconds per epoch of each run, their medians, and the ratio fit / hand loop of the medians (the goal: at most
1.05); on a machine whose load varies, also the ratio of the fastest runs and the median of the ratios of each
repeat's pair of runs, and the ratio of the medians of the process's CPU time (with one thread, the time
it ran, whatever the other processes of the machine do).

    python benchmarks/bench_fit.py [--epochs 2] [--repeats 5] [--threads 1]

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from common import log, machine

from cvae import ConditionalVAE, fit
from cvae.objectives import training_loss
from cvae.training import epoch_order

X_DIM, Y_DIM, NUM_TRAIN, NUM_VAL = 20, 10, 50_000, 2_000
BATCH_SIZE, LR, SEED = 128, 1e-3, 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each loop (median reported)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 0: torch's choice (default: 1, the fastest for these small networks on a "
                   "busy machine)")
    return p.parse_args()


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, 20) Gaussian; y (n, 10) a linear map of x, times a random sign per example (two answers per x), plus
    noise."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, X_DIM, generator=generator)
    mixing = torch.randn(X_DIM, Y_DIM, generator=torch.Generator().manual_seed(99)) / X_DIM ** 0.5
    sign = torch.randint(0, 2, (n, 1), generator=generator) * 2 - 1
    return x, sign * (x @ mixing) + 0.1 * torch.randn(n, Y_DIM, generator=generator)


def hand_loop(model: ConditionalVAE, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
              epochs: int) -> list[float]:
    """The minimal loop: fused Adam on fit's batches, the ELBO, and the validation loss after each epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    noise = torch.Generator().manual_seed(SEED)
    x, y = train
    val_losses = []
    for epoch in range(epochs):
        model.train()
        order = epoch_order(x.shape[0], SEED, epoch)
        for start in range(0, x.shape[0], BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            loss = training_loss(model, x[batch], y[batch], generator=noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            generator, total = torch.Generator().manual_seed(SEED), 0.0
            for start in range(0, val[0].shape[0], BATCH_SIZE):
                xb, yb = val[0][start:start + BATCH_SIZE], val[1][start:start + BATCH_SIZE]
                total += training_loss(model, xb, yb, generator=generator).item() * xb.shape[0]
            val_losses.append(total / val[0].shape[0])
    return val_losses


def library(model: ConditionalVAE, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
            epochs: int) -> list[float]:
    history = fit(model, train, val, epochs=epochs, batch_size=BATCH_SIZE, lr=LR, seed=SEED, kl_warmup=0,
                  lr_halving=0, patience=epochs, progress=False)
    return [row["val_loss"] for row in history]


def timed(loop, initial: ConditionalVAE, train, val,
          epochs: int) -> tuple[tuple[float, float], ConditionalVAE, list[float]]:
    """((wall-clock, CPU) seconds per epoch, the trained model, its validation losses) of one run of a loop from the
    initial weights."""
    model = copy.deepcopy(initial)
    started, cpu_started = time.perf_counter(), time.process_time()
    val_losses = loop(model, train, val, epochs)
    seconds = ((time.perf_counter() - started) / epochs, (time.process_time() - cpu_started) / epochs)
    return seconds, model, val_losses


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as fit does; set here for both loops
    train, val = synthetic(NUM_TRAIN, 0), synthetic(NUM_VAL, 1)
    torch.manual_seed(SEED)
    initial = ConditionalVAE(X_DIM, Y_DIM)

    log("check: one epoch of each from the same weights")
    _, by_hand, hand_val = timed(hand_loop, initial, train, val, 1)
    _, by_fit, fit_val = timed(library, initial, train, val, 1)
    same_weights = all(torch.equal(a, b) for a, b in zip(by_hand.state_dict().values(), by_fit.state_dict().values()))
    same_val_loss = abs(hand_val[0] - fit_val[0]) <= 1e-4 * abs(hand_val[0])

    seconds: dict[str, list[float]] = {"fit": [], "hand_loop": []}
    cpu_seconds: dict[str, list[float]] = {"fit": [], "hand_loop": []}
    loops = {"fit": library, "hand_loop": hand_loop}
    for repeat in range(args.repeats):
        order = ("fit", "hand_loop") if repeat % 2 == 0 else ("hand_loop", "fit")
        for name in order:
            (wall, cpu), _, _ = timed(loops[name], initial, train, val, args.epochs)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
        log(f"repeat {repeat + 1}/{args.repeats}: fit {seconds['fit'][-1]:.3f} s/epoch, "
            f"hand loop {seconds['hand_loop'][-1]:.3f} s/epoch")
    median = {name: statistics.median(values) for name, values in seconds.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu_seconds.items()}
    # each repeat's fit run against its neighbouring hand-loop run, which met about the same load on the machine
    paired = [f / h for f, h in zip(seconds["fit"], seconds["hand_loop"])]
    print(json.dumps({
        "benchmark": "fit against a minimal hand-written loop",
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "model": {"x_dim": X_DIM, "y_dim": Y_DIM, "z_dim": initial.z_dim, "hidden": list(initial.hidden),
                  "prior_components": initial.prior_components,
                  "parameters": sum(p.numel() for p in initial.parameters())},
        "train_examples": NUM_TRAIN, "val_examples": NUM_VAL, "batch_size": BATCH_SIZE, "epochs": args.epochs,
        "repeats": args.repeats,
        "same_weights_after_one_epoch": same_weights, "same_val_loss_after_one_epoch": same_val_loss,
        "seconds_per_epoch": {name: [round(value, 4) for value in values] for name, values in seconds.items()},
        "median_seconds_per_epoch": {name: round(value, 4) for name, value in median.items()},
        "ratio": round(median["fit"] / median["hand_loop"], 4),
        "ratio_of_fastest_runs": round(min(seconds["fit"]) / min(seconds["hand_loop"]), 4),
        "median_paired_ratio": round(statistics.median(paired), 4),
        "cpu_seconds_per_epoch": {name: [round(value, 4) for value in values] for name, values in cpu_seconds.items()},
        "cpu_ratio": round(cpu_median["fit"] / cpu_median["hand_loop"], 4),
        "goal": "ratio <= 1.05",
    }, indent=2))


if __name__ == "__main__":
    main()
