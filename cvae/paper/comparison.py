"""Comparisons across runs: the paper-style table (rows per objective and estimator, mean ± standard deviation
over seeds next to the per-image standard error) and paired NN-vs-CVAE differences with confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import scipy.stats
import torch

from cvae import checkpoints
from cvae.checkpoints import RunFileError
from cvae.settings import LEGACY_OBJECTIVES, OBJECTIVES

from .choices import PIXEL_LIKELIHOODS
from .config import PRESETS, RunConfig, read_run_config
from .evaluation import ROW_NAMES
from .report import table_header
from .sample_evaluation import ACTIVE_UNITS, LATENT_KEYS, SAMPLE_ROWS, TRUE_ROW_NAMES

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
    ("NN, true CLL of binarized outputs (exact)", None, "nn_true"),
    ("CVAE MC, true CLL of binarized outputs", "cvae", "cvae_true_mc"),
    ("CVAE IS, true CLL of binarized outputs", "cvae", "cvae_true_is"),
    ("IWAE-trained CVAE (importance sampling)", "iwae", "cvae_is"),
    ("Strong preset: NN baseline (exact)", "strong", "nn"),
    ("Strong preset: CVAE (Monte Carlo)", "strong", "cvae_mc"),
    ("Strong preset: CVAE (importance sampling)", "strong", "cvae_is"),
    ("Strong preset: performance gap (NN - CVAE IS)", "strong", "gap"),
]
FAMILIES = ("cvae", "gsnn", "hybrid", "iwae", "strong")
# how the sample-metric rows of a family's CVAE are labelled (SAMPLE_ROWS's "CVAE" replaced)
FAMILY_MODELS = {"cvae": "CVAE", "gsnn": "GSNN", "hybrid": "hybrid", "iwae": "IWAE-trained CVAE",
                 "strong": "Strong preset: CVAE"}


def family(run: dict) -> str:
    """Which rows a run fills: "strong" for the strong preset's runs, else its training objective."""
    objective = run.get("objective", "elbo")
    return "strong" if run.get("preset") == "strong" else "cvae" if objective == "elbo" else objective


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


class ComparisonError(ValueError):
    """Runs that cannot go into one table: the same run twice, or runs measured differently."""


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _results_problem(results: object) -> str | None:
    """What is wrong with a results.json's content (None: nothing)."""
    if not isinstance(results, dict):
        return f"holds a {type(results).__name__}, expected an object"
    required = {"dataset": lambda v: isinstance(v, str), "protocol": lambda v: v in ("grayscale", "binarized"),
                "num_samples": lambda v: _number(v) and v == int(v) and v > 0,
                "test_examples": lambda v: _number(v) and v == int(v) and v > 0}
    optional = {"likelihood": lambda v: v in PIXEL_LIKELIHOODS,
                "objective": lambda v: v in OBJECTIVES or v in LEGACY_OBJECTIVES,
                "preset": lambda v: v in PRESETS, "seed": lambda v: _number(v) and v == int(v) and v >= 0,
                "alpha": _number}
    for key in required:
        if key not in results:
            return f'has no "{key}"'
    # the evaluation's options beyond the CLL, recorded since they exist
    later = {"sample_k": lambda v: _number(v) and v == int(v) and v >= 0,
             "binarizations": lambda v: v is None or (_number(v) and v == int(v) and v > 0)}
    for key, accept in (required | optional | later).items():
        if key in results and not (_hashable(results[key]) and accept(results[key])):
            return f'has "{key}" {results[key]!r}, which is not a value evaluate.py writes'
    settings = [key for key in results if key.isdigit()]
    if not settings:
        return 'has no results of any setting (keys "1", "2", "3")'
    for k in settings:
        if k not in ("1", "2", "3") or not isinstance(results[k], dict):
            return f'has "{k}" {results[k]!r}, expected the results of 1, 2 or 3 input quadrants'
        for row in (*ROW_NAMES, *TRUE_ROW_NAMES, *SAMPLE_ROWS):  # the CLL's rows always, the others when there
            cell = results[k].get(row)
            if row == ACTIVE_UNITS or (cell is None and row not in ROW_NAMES):
                continue
            if not isinstance(cell, dict) or not all(_number(cell.get(stat)) for stat in ("mean", "sem")):
                return f'has "{k}": "{row}" {cell!r}, expected {{"mean": number, "sem": number}}'
        units = results[k].get(ACTIVE_UNITS)
        if units is not None and not (_number(units) and units == int(units) and units >= 0):
            return f'has "{k}": "{ACTIVE_UNITS}" {units!r}, expected a count of units'
    return None


def _hashable(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


# results.json fields that repeat the run's configuration: they must agree with its config.json
_REPEATED = {"dataset": "dataset", "likelihood": "likelihood", "objective": "objective", "seed": "seed",
             "preset": "preset"}


def load_runs(run_dirs: list[Path]) -> list[dict]:
    """results.json of each evaluated run, with its directory under "run_dir" and its configuration under
    "config". Both files are checked (RunFileError names the file and what is wrong with it); a missing one is a
    FileNotFoundError saying what to do."""
    runs = []
    for run_dir in run_dirs:
        config_path, path = Path(run_dir) / "config.json", Path(run_dir) / "results.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory (it has no config.json). Give the directories "
                                    "that train.py --out wrote.")
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: evaluate the run first (python evaluate.py {run_dir}).")
        config = read_run_config(config_path)["config"]
        results = checkpoints.read_json(path, "results.json", f"Re-evaluate the run: python evaluate.py {run_dir}")
        problem = _results_problem(results)
        if problem is None:
            wrong = [f'"{key}" {results[key]!r} where config.json has {config[name]!r}'
                     for key, name in _REPEATED.items() if key in results and results[key] != config[name]]
            if results["protocol"] != RunConfig.from_dict(config).protocol:
                wrong.append(f'"protocol" {results["protocol"]!r} where config.json has "binarize" '
                             f"{config['binarize']!r}")
            if wrong:
                problem = f"is from another run than its config.json ({', '.join(wrong)})"
        if problem:
            raise RunFileError(f"{path} {problem}: it is not the results.json evaluate.py writes for this run "
                               f"(corrupt, copied from another run, or edited). Re-evaluate the run: "
                               f"python evaluate.py {run_dir}")
        objective = {"objective": LEGACY_OBJECTIVES.get(config["objective"], config["objective"])}  # one name each
        runs.append(results | objective | {"run_dir": str(run_dir), "config": config | objective})
    return runs


# results.json fields that say how a run was measured: every run of one table must share them
PROTOCOL = ("dataset", "protocol", "likelihood", "test_examples", "num_samples")
# configuration fields that may differ between the seeds of one cell (where the data are, which settings, the
# default S of evaluation: S itself is checked in PROTOCOL)
SEED_ONLY = {"seed", "data_dir", "quadrants", "num_samples"}


def _measured(run: dict, field: str) -> object:
    return run.get(field, "bernoulli") if field == "likelihood" else run[field]


def _same_training(a: dict, b: dict) -> bool:
    """Whether two runs trained the same thing: the same configuration and seed, and a setting in common."""
    ignored = {"data_dir", "quadrants", "num_samples"}
    return ({k: v for k, v in a["config"].items() if k not in ignored}
            == {k: v for k, v in b["config"].items() if k not in ignored}
            and bool(set(a["config"]["quadrants"]) & set(b["config"]["quadrants"])))


def check_comparable(runs: list[dict], ablation: bool = False) -> None:
    """Refuse (ComparisonError) what one table cannot hold: the same run twice (one directory given twice, or two
    runs of the same seed and configuration), runs measured differently (PROTOCOL), and, in the paper's table
    (not ablation), runs of one row that differ in more than their seed."""
    first: dict[Path, dict] = {}
    for run in runs:
        where = Path(run["run_dir"]).resolve()
        if where in first:
            raise ComparisonError(
                f"{first[where]['run_dir']} and {run['run_dir']} are the same run ({where}): it would count twice. "
                "Give each run once.")
        first[where] = run
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if _same_training(a, b):
                raise ComparisonError(
                    f"{a['run_dir']} and {b['run_dir']} are the same run: seed {a['config']['seed']} and the same "
                    "configuration (one is a copy of the other, or the same command was run twice), so it would count "
                    "as two seeds. Give one of them, and runs of other seeds (train.py --seed).")
    for field in PROTOCOL:
        values: dict = {}
        for run in runs:
            values.setdefault(_measured(run, field), []).append(run["run_dir"])
        if len(values) > 1:
            (v1, dirs1), (v2, dirs2) = list(values.items())[:2]
            raise ComparisonError(
                f"the runs were not measured alike: {field} is {v1!r} in {', '.join(dirs1)} but {v2!r} in "
                f"{', '.join(dirs2)}. A table compares numbers measured the same way (data set, targets, likelihood, "
                "test images and S): give runs that share them (re-evaluate with python evaluate.py RUN_DIR "
                "--num-samples S --test-subset N where they differ in S or test images), or make one table each.")
    sampled = {}
    for run in runs:
        if run.get("sample_k"):
            sampled.setdefault(run["sample_k"], []).append(run["run_dir"])
    if len(sampled) > 1:
        (k1, dirs1), (k2, dirs2) = list(sampled.items())[:2]
        raise ComparisonError(
            f"the runs' samples were not judged alike: K is {k1} in {', '.join(dirs1)} but {k2} in "
            f"{', '.join(dirs2)} (best-of-K, diversity and distinct labels depend on K). Re-evaluate them with one "
            "K: python evaluate.py RUN_DIR --sample-k K.")
    if ablation:
        return
    for name in FAMILIES:
        members = [run for run in runs if family(run) == name]
        for run in members[1:]:
            a = members[0]
            differ = [key for key in sorted(set(a["config"]) | set(run["config"]))
                      if key not in SEED_ONLY and a["config"].get(key) != run["config"].get(key)]
            if differ:
                key = differ[0]
                raise ComparisonError(
                    f"{a['run_dir']} and {run['run_dir']} both fill the {name} rows but differ in {key} "
                    f"({a['config'].get(key)!r} and {run['config'].get(key)!r}): a cell averages the seeds of one "
                    "configuration. Give runs that differ only in their seed, or compare these with --ablation (one "
                    "row per run).")


def _cell(runs: list[dict], setting: str, key: str, digits: int = 2) -> str:
    """The mean over the runs (seeds) of a row's value ± their standard deviation, with the mean per-image
    standard error (SE) where the value is a mean over images; "—" where a run lacks the value (evaluated before
    it existed, or without it)."""
    cells = [run[setting].get(key) for run in runs if setting in run]
    if not cells or any(cell is None for cell in cells):
        return "—"
    values = [cell["mean"] if isinstance(cell, dict) else cell for cell in cells]
    errors = [cell["sem"] for cell in cells if isinstance(cell, dict)]
    mean = sum(values) / len(values)
    se = f"SE {sum(errors) / len(errors):.{digits}f}; " if errors else ""
    if len(values) == 1:
        return f"{mean:.{digits}f} ({se}1 seed)"
    std = torch.tensor(values, dtype=torch.float64).std(unbiased=True).item()
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({se}{len(values)} seeds)"


def _has(runs: list[dict], key: str) -> bool:
    """Whether any of the runs has a value of this row."""
    return any(key in run[k] for run in runs for k in run if k.isdigit())


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
        chosen = by_family[name] if name else _nn_runs(runs, by_family)
        if chosen and (key in ROW_NAMES or _has(chosen, key)):  # the later rows: where some run has them
            lines.append(f"| {label} | " + " | ".join(_cell(chosen, k, key) for k in settings) + " |")
    samples = sorted({run["num_samples"] for run in runs})
    lines.append(f"\nS = {', '.join(map(str, samples))} samples per test image; "
                 f"{runs[0]['test_examples']} test images; {runs[0]['dataset']}, {runs[0]['protocol']} targets. "
                 "Runs: " + ", ".join(f"`{r['run_dir']}` ({family(r)}, seed {r.get('seed', '?')})"
                                      for r in runs) + ".")
    return "\n".join(lines) + "\n"


def _nn_runs(runs: list[dict], by_family: dict[str, list[dict]]) -> list[dict]:
    """The runs of the NN rows: the ELBO-trained CVAE's, else one run per seed (``one_per_seed``)."""
    return by_family["cvae"] or one_per_seed(r for r in runs if family(r) != "strong")


def samples_table(runs: list[dict]) -> str:
    """Markdown: the samples judged as samples (cvae.paper.sample_evaluation) of the runs that have them, one row per
    model and metric (the NN's from the runs of the NN rows, each family's CVAE's from its runs), one column per
    setting, cells as in ``paper_table``; "" where no run has them."""
    settings = sorted({key for run in runs for key in run if key.isdigit()})
    by_family = {name: [r for r in runs if family(r) == name] for name in FAMILIES}
    k_ = next((run["sample_k"] for run in runs if run.get("sample_k")), None)
    if k_ is None:
        return ""
    lines = table_header(settings, f"samples judged as samples, K = {k_}")
    for key, (label, digits) in SAMPLE_ROWS.items():
        if key.startswith("nn_"):
            groups = [(label, _nn_runs(runs, by_family))]
        else:
            groups = [(label.replace("CVAE", FAMILY_MODELS[name], 1), by_family[name]) for name in FAMILIES
                      if not (name == "gsnn" and key in LATENT_KEYS)]  # a GSNN's recognition net is untrained
        for shown, chosen in groups:
            if chosen and _has(chosen, key):
                lines.append(f"| {shown.format(K=k_)} | "
                             + " | ".join(_cell(chosen, k, key, digits) for k in settings) + " |")
    lines.append(f"\nK = {k_} predictions per test image: the NN's one prediction K times, the CVAE's means of "
                 "p(y|x,z) with z ~ p(z|x); labels by a classifier of the data set. —: a run evaluated without them.")
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

    config = config | {"objective": LEGACY_OBJECTIVES.get(config.get("objective"), config.get("objective", "elbo"))}
    changed = [shown(name, value) for name, value in config.items()
               if name in paper and name not in NOT_ABLATED and value != paper[name]]
    return ", ".join(changed) or "none (the paper's set-up)"


# the ablation table's columns: (results.json key, heading, digits); those after the first two where a run has them
ABLATION_COLUMNS = (("cvae_is", "CVAE IS", 2), ("nn", "NN", 2), ("cvae_true_is", "CVAE IS, true CLL", 2),
                    ("cvae_diversity", "CVAE diversity", 3))


def ablation_table(runs: list[dict]) -> str:
    """Markdown: one row per run, labelled by what its configuration changes from the paper's, with the CVAE's
    importance-sampled CLL and the NN's per setting, and where the runs have them the CVAE's true CLL of binarized
    outputs and its classifier diversity (this run's seed; ± the per-image standard error; —: not measured)."""
    settings = sorted({key for run in runs for key in run if key.isdigit()})
    columns = [column for i, column in enumerate(ABLATION_COLUMNS) if i < 2 or _has(runs, column[0])]
    lines = ["| changes from the paper's set-up | seed | "
             + " | ".join(f"{heading}, {k}q" for _, heading, _ in columns for k in settings) + " |",
             "|---" * (len(columns) * len(settings) + 2) + "|"]
    for run in runs:
        cells = [f"{run[k][key]['mean']:.{digits}f} ± {run[k][key]['sem']:.{digits}f}" if key in run.get(k, {})
                 else "—" for key, _, digits in columns for k in settings]
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
            path = Path(run["run_dir"]) / f"q{k}" / "per_image.pt"
            values = checkpoints.load(path)
            if not all(isinstance(values.get(key), torch.Tensor) and values[key].shape == (run["test_examples"],)
                       for key in ("nn", "cvae_is")):
                raise checkpoints.CheckpointError(
                    f"{path} does not hold the per-image values of its results.json (\"nn\" and \"cvae_is\", "
                    f"{run['test_examples']} each). Re-evaluate the run: python evaluate.py {run['run_dir']}")
            d = paired_difference(values["nn"], values["cvae_is"], confidence)
            p_value = f"{d['p_value']:.1e}" if d["p_value"] > 0 else "< 1e-300"  # 0.0: below float range
            lines.append(f"| `{run['run_dir']}` | {k} | {d['mean']:.2f} | [{d['ci_low']:.2f}, {d['ci_high']:.2f}] "
                         f"| {p_value} |")
    return "\n".join(lines) + "\n"
