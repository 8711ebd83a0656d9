"""Comparisons across runs: the paper-style table (rows per objective and estimator, mean ± standard deviation
over seeds next to the per-image standard error) and paired NN-vs-CVAE differences with confidence intervals."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import scipy.stats
import torch

from . import checkpoints
from .config import RunConfig
from .report import table_header

# Published negative CLLs (nats) for 1 / 2 / 3 input quadrants (shared/REFERENCE.md), shown beside ours.
PUBLISHED = {
    "Paper, Table 1: NN baseline": (100.03, 62.14, 26.01),
    "Paper, Table 1: CVAE (importance sampling)": (64.05, 44.96, 20.97),
    "Pyro tutorial: NN baseline": (100.4, 61.9, 25.4),
    "Pyro tutorial: CVAE (reported as Monte Carlo; a negative ELBO)": (71.8, 51.0, 24.2),
}

# (row label, family of the runs it comes from (see family()), estimator key in results.json)
PAPER_ROWS = [
    ("NN baseline (exact)", None, "nn"),
    ("GSNN (Monte Carlo)", "gsnn", "cvae_mc"),
    ("CVAE (Monte Carlo)", "cvae", "cvae_mc"),
    ("CVAE (importance sampling)", "cvae", "cvae_is"),
    ("CVAE negative ELBO (bound)", "cvae", "cvae_elbo"),
    ("hybrid (Monte Carlo)", "hybrid", "cvae_mc"),
    ("hybrid (importance sampling)", "hybrid", "cvae_is"),
    ("Performance gap (NN - CVAE IS)", "cvae", "gap"),
    ("IWAE-trained CVAE (importance sampling)", "iwae", "cvae_is"),
    ("Strong preset: NN baseline (exact)", "strong", "nn"),
    ("Strong preset: CVAE (Monte Carlo)", "strong", "cvae_mc"),
    ("Strong preset: CVAE (importance sampling)", "strong", "cvae_is"),
    ("Strong preset: performance gap (NN - CVAE IS)", "strong", "gap"),
]
FAMILIES = ("cvae", "gsnn", "hybrid", "iwae", "strong")


def family(run: dict) -> str:
    """Which rows a run fills: "strong" for the strong preset's runs, else its training objective."""
    return "strong" if run.get("preset") == "strong" else run.get("objective", "cvae")


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
        config = json.loads((Path(run_dir) / "config.json").read_text())["config"]
        runs.append(json.loads(path.read_text()) | {"run_dir": str(run_dir), "config": config})
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


def one_per_seed(runs: Iterable[dict]) -> list[dict]:
    """The first run of each seed: the runs of one seed share their baseline (it does not depend on the CVAE's
    objective), so its NN row counts each seed once."""
    first: dict = {}
    for run in runs:
        first.setdefault(run.get("seed"), run)
    return list(first.values())


def paper_table(runs: list[dict]) -> str:
    """Markdown: one row per model and estimator, one column per setting; each cell the mean over seeds ± their
    standard deviation, with the mean per-image standard error (SE)."""
    settings = sorted({key for run in runs for key in run if key.isdigit()})
    by_family = {name: [r for r in runs if family(r) == name] for name in FAMILIES}
    lines = table_header(settings)
    for label, name, key in PAPER_ROWS:
        if name:
            chosen = by_family[name]
        else:
            chosen = by_family["cvae"] or one_per_seed(r for r in runs if family(r) != "strong")
        if chosen:
            lines.append(f"| {label} | " + " | ".join(_cell(chosen, k, key) for k in settings) + " |")
    samples = sorted({run["num_samples"] for run in runs})
    lines.append(f"\nS = {', '.join(map(str, samples))} samples per test image; "
                 f"{runs[0]['test_examples']} test images; {runs[0]['dataset']}, {runs[0]['protocol']} targets. "
                 "Runs: " + ", ".join(f"`{r['run_dir']}` ({family(r)}, seed {r.get('seed', '?')})"
                                      for r in runs) + ".")
    return "\n".join(lines) + "\n"


# settings that say where and how a run was made, not what was trained
NOT_ABLATED = {"quadrants", "seed", "data_dir", "num_samples", "preset"}


def changes(config: dict) -> str:
    """What a run's configuration changes from the paper's (RunConfig defaults), e.g. "hidden 1000-1000"."""
    paper = RunConfig().to_dict()

    def shown(name: str, value: object) -> str:
        name = name.replace("_", " ")
        if isinstance(value, bool):
            return name if value else f"no {name}"
        return f"{name} {'-'.join(map(str, value)) if isinstance(value, list) else value}"

    changed = [shown(name, value) for name, value in config.items()
               if name in paper and name not in NOT_ABLATED and value != paper[name]]
    return ", ".join(changed) or "none (the paper's set-up)"


def ablation_table(runs: list[dict]) -> str:
    """Markdown: one row per run, labelled by what its configuration changes from the paper's, with the CVAE's
    importance-sampled CLL and the NN's per setting (this run's seed; ± the per-image standard error)."""
    settings = sorted({key for run in runs for key in run if key.isdigit()})
    lines = ["| changes from the paper's set-up | seed | " + " | ".join(f"CVAE IS, {k}q" for k in settings) + " | "
             + " | ".join(f"NN, {k}q" for k in settings) + " |", "|---" * (2 * len(settings) + 2) + "|"]
    for run in runs:
        cells = [f"{run[k][key]['mean']:.2f} ± {run[k][key]['sem']:.2f}" if k in run else "—"
                 for key in ("cvae_is", "nn") for k in settings]
        lines.append(f"| {changes(run['config'])} | {run.get('seed', '?')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def published_table() -> str:
    lines = ["| published | 1 quadrant | 2 quadrants | 3 quadrants |", "|---|---|---|---|"]
    lines += [f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + " |" for label, values in PUBLISHED.items()]
    return "\n".join(lines) + "\n"


def paired_table(runs: list[dict], confidence: float = 0.95) -> str:
    """Per CVAE run (ELBO-trained or strong preset) and setting: NN minus CVAE (importance sampling) on the same
    test images, with its CI."""
    lines = [f"| run | setting | NN - CVAE IS (nats) | {confidence:.0%} CI | paired t-test p |",
             "|---|---|---|---|---|"]
    for run in runs:
        if family(run) not in ("cvae", "strong"):
            continue
        for k in sorted(key for key in run if key.isdigit()):
            values = checkpoints.load(Path(run["run_dir"]) / f"q{k}" / "per_image.pt")
            d = paired_difference(values["nn"], values["cvae_is"], confidence)
            p_value = f"{d['p_value']:.1e}" if d["p_value"] > 0 else "< 1e-300"  # 0.0: below float range
            lines.append(f"| `{run['run_dir']}` | {k} | {d['mean']:.2f} | [{d['ci_low']:.2f}, {d['ci_high']:.2f}] "
                         f"| {p_value} |")
    return "\n".join(lines) + "\n"
