"""Comparisons across runs: the paper-style table (rows per objective and estimator, mean ± standard deviation
over seeds next to the per-image standard error) and paired NN-vs-CVAE differences with confidence intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import scipy.stats
import torch

from . import checkpoints

# Published negative CLLs (nats) for 1 / 2 / 3 input quadrants (shared/REFERENCE.md), shown beside ours.
PUBLISHED = {
    "Paper, Table 1: NN baseline": (100.03, 62.14, 26.01),
    "Paper, Table 1: CVAE (importance sampling)": (64.05, 44.96, 20.97),
    "Pyro tutorial: NN baseline": (100.4, 61.9, 25.4),
    "Pyro tutorial: CVAE (reported as Monte Carlo; a negative ELBO)": (71.8, 51.0, 24.2),
}

# (row label, objective of the runs it comes from, estimator key in results.json)
PAPER_ROWS = [
    ("NN baseline (exact)", None, "nn"),
    ("GSNN (Monte Carlo)", "gsnn", "cvae_mc"),
    ("CVAE (Monte Carlo)", "cvae", "cvae_mc"),
    ("CVAE (importance sampling)", "cvae", "cvae_is"),
    ("CVAE negative ELBO (bound)", "cvae", "cvae_elbo"),
    ("hybrid (Monte Carlo)", "hybrid", "cvae_mc"),
    ("hybrid (importance sampling)", "hybrid", "cvae_is"),
    ("Performance gap (NN - CVAE IS)", "cvae", "gap"),
]


def paired_difference(a: torch.Tensor, b: torch.Tensor, confidence: float = 0.95) -> dict[str, float]:
    """Mean of a - b over the same test images, with its t-based confidence interval and p-value (paired t-test):
    mean ± t_{(1+c)/2, n-1} * sd(a - b) / sqrt(n)."""
    diff = (a - b).double()
    n = diff.numel()
    mean, sem = diff.mean().item(), diff.std(unbiased=True).item() / math.sqrt(n)
    half = scipy.stats.t.ppf((1 + confidence) / 2, n - 1) * sem
    p_value = scipy.stats.ttest_rel(a.double().numpy(), b.double().numpy()).pvalue
    return {"mean": mean, "sem": sem, "ci_low": mean - half, "ci_high": mean + half, "p_value": float(p_value),
            "confidence": confidence, "n": n}


def load_runs(run_dirs: list[Path]) -> list[dict]:
    """results.json of each evaluated run, with its directory under "run_dir"."""
    runs = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: evaluate the run first (python evaluate.py {run_dir}).")
        runs.append(json.loads(path.read_text()) | {"run_dir": str(run_dir)})
    return runs


def _cell(runs: list[dict], setting: str, key: str) -> str:
    values = [run[setting][key]["mean"] for run in runs if setting in run]
    errors = [run[setting][key]["sem"] for run in runs if setting in run]
    if not values:
        return "—"
    mean, se = sum(values) / len(values), sum(errors) / len(errors)
    if len(values) == 1:
        return f"{mean:.2f} (SE {se:.2f}; 1 seed)"
    std = torch.tensor(values, dtype=torch.float64).std(unbiased=True).item()
    return f"{mean:.2f} ± {std:.2f} (SE {se:.2f}; {len(values)} seeds)"


def paper_table(runs: list[dict]) -> str:
    """Markdown: one row per model and estimator, one column per setting; each cell the mean over seeds ± their
    standard deviation, with the mean per-image standard error (SE)."""
    settings = sorted({key for run in runs for key in run if key.isdigit()})
    by_objective = {objective: [r for r in runs if r.get("objective", "cvae") == objective]
                    for objective in ("cvae", "gsnn", "hybrid")}
    lines = ["| negative CLL (nats) | " + " | ".join(f"{k} quadrant{'s' if k != '1' else ''}" for k in settings)
             + " |", "|---" * (len(settings) + 1) + "|"]
    for label, objective, key in PAPER_ROWS:
        chosen = by_objective[objective] if objective else (by_objective["cvae"] or runs)
        if chosen:
            lines.append(f"| {label} | " + " | ".join(_cell(chosen, k, key) for k in settings) + " |")
    samples = sorted({run["num_samples"] for run in runs})
    lines.append(f"\nS = {', '.join(map(str, samples))} samples per test image; "
                 f"{runs[0]['test_examples']} test images; {runs[0]['dataset']}, {runs[0]['protocol']} targets. "
                 "Runs: " + ", ".join(f"`{r['run_dir']}` ({r.get('objective', 'cvae')}, seed {r.get('seed', '?')})"
                                      for r in runs) + ".")
    return "\n".join(lines) + "\n"


def published_table() -> str:
    lines = ["| published | 1 quadrant | 2 quadrants | 3 quadrants |", "|---|---|---|---|"]
    lines += [f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + " |" for label, values in PUBLISHED.items()]
    return "\n".join(lines) + "\n"


def paired_table(runs: list[dict], confidence: float = 0.95) -> str:
    """Per CVAE run and setting: NN minus CVAE (importance sampling) on the same test images, with its CI."""
    lines = [f"| run | setting | NN - CVAE IS (nats) | {confidence:.0%} CI | paired t-test p |",
             "|---|---|---|---|---|"]
    for run in runs:
        if run.get("objective", "cvae") != "cvae":
            continue
        for k in sorted(key for key in run if key.isdigit()):
            values = checkpoints.load(Path(run["run_dir"]) / f"q{k}" / "per_image.pt")
            d = paired_difference(values["nn"], values["cvae_is"], confidence)
            p_value = f"{d['p_value']:.1e}" if d["p_value"] > 0 else "< 1e-300"  # 0.0: below float range
            lines.append(f"| `{run['run_dir']}` | {k} | {d['mean']:.2f} | [{d['ci_low']:.2f}, {d['ci_high']:.2f}] "
                         f"| {p_value} |")
    return "\n".join(lines) + "\n"
