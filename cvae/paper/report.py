"""Tables of results: results.json, results.csv and results.md in a run directory (UTF-8, replaced as one unit)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from cvae.checkpoints import write_texts

from .evaluation import ROW_NAMES
from .sample_evaluation import ACTIVE_UNITS, LATENT_KEYS, SAMPLE_ROWS, TRUE_ROW_NAMES

# meaningless for a GSNN, whose recognition net is untrained
RECOGNITION_ROWS = ("cvae_elbo", "cvae_is", "gap", "cvae_true_is", *LATENT_KEYS)


def _settings(results: dict) -> list[str]:
    return sorted(key for key in results if key.isdigit())


def _row_label(key: str, results: dict) -> str:
    label = ROW_NAMES.get(key) or TRUE_ROW_NAMES[key]
    if key in ("cvae_elbo", "cvae_mc", "cvae_is", "cvae_true_mc", "cvae_true_is"):
        label += f" (S={results['num_samples']})"
    return label


def table_header(settings: list, title: str = "negative CLL (nats)") -> list[str]:
    """The first two lines of a markdown table with one column per setting (number of input quadrants)."""
    return [f"| {title} | " + " | ".join(f"{k} quadrant{'s' if str(k) != '1' else ''}" for k in settings)
            + " |", "|---" * (len(settings) + 1) + "|"]


def _shown(results: dict, keys) -> list[str]:
    """The keys of rows that results has (in every setting), less those of the recognition net under a GSNN."""
    gsnn = results.get("objective") == "gsnn"
    return [key for key in keys if not (gsnn and key in RECOGNITION_ROWS)
            and all(key in results[k] for k in _settings(results))]


def _cell(value: dict | float | None, digits: int = 2) -> str:
    """mean ± standard error; a count as it is; "—" for None (e.g. the active units of one image)."""
    if value is None:
        return "—"
    if not isinstance(value, dict):
        return f"{value:.{digits}f}"
    sem = value["sem"]
    return f"{value['mean']:.{digits}f} ± {sem:.{digits}f}" if sem == sem else f"{value['mean']:.{digits}f}"


def _true_likelihood_note(results: dict) -> str:
    """The footnote of the true-likelihood rows: what they are, or why there are none."""
    if "binarizations" not in results:  # evaluated before they existed
        return ""
    if results["binarizations"] is not None:
        return ("The Bernoulli score of grayscale targets t, -Σ_i [t_i l_i - softplus(l_i)], is not a "
                "log-probability: the rows \"true CLL of binarized outputs\" are -E_b log p(b|x) over binary "
                f"images b ~ Bernoulli(t), T = {results['binarizations']} draw(s) per test image; their ± includes "
                "the binarization noise. ")
    if results.get("protocol") == "binarized":
        return "The targets are binary, so the rows above are true log-likelihoods of them. "
    return ("The continuous Bernoulli is a normalized density of the gray levels, so the rows above are true "
            "log-likelihoods of them. ")


def markdown_table(results: dict) -> str:
    """The table of negative CLL (nats per test image, mean ± standard error), one column per setting, and under
    it, where the run has them, the samples judged as samples (``samples_table``)."""
    settings = _settings(results)
    lines = table_header(settings)
    gsnn = results.get("objective") == "gsnn"
    for key in _shown(results, [*ROW_NAMES, *TRUE_ROW_NAMES]):
        lines.append(f"| {_row_label(key, results)} | " + " | ".join(_cell(results[k][key]) for k in settings)
                     + " |")
    lines.append("")
    if gsnn:
        true_is = ", true CLL by importance sampling" if "cvae_true_is" in results[settings[0]] else ""
        lines.append("GSNN objective: the recognition net is not trained, so the rows that sample from it "
                     f"(negative ELBO, importance sampling, gap{true_is}) are left out; results.json keeps them.")
    likelihood = results.get("likelihood", "bernoulli")
    under = "" if likelihood == "bernoulli" else f" under the {likelihood} likelihood (a normalized density)"
    lines.append(f"{_true_likelihood_note(results)}{results['dataset']}, {results['protocol']} targets{under}, "
                 f"{results['test_examples']} test images; ± is the standard error over images.")
    samples = samples_table(results)
    return "\n".join(lines) + "\n" + (f"\n{samples}" if samples else "")


def samples_table(results: dict) -> str:
    """The samples judged as samples (cvae.paper.sample_evaluation), one column per setting; "" where the run has none
    (evaluated with --sample-k 0, or before they existed)."""
    keys = _shown(results, SAMPLE_ROWS)
    if not keys:
        return ""
    settings, k_ = _settings(results), results["sample_k"]
    lines = table_header(settings, f"samples judged as samples, K = {k_}")
    for key in keys:
        label, digits = SAMPLE_ROWS[key]
        lines.append(f"| {label.format(K=k_)} | " + " | ".join(_cell(results[k][key], digits) for k in settings)
                     + " |")
    accuracy = results.get("classifier_test_accuracy")
    trained = f" (test accuracy {100 * accuracy:.1f}%)" if isinstance(accuracy, int | float) else ""
    lines += ["", f"K = {k_} predictions per test image: the NN's one prediction, K times (diversity 0, one "
              "label); the CVAE's means of p(y|x,z), z ~ p(z|x). Squared errors are summed over the predicted "
              f"pixels; the labels are a {results['dataset']} classifier's{trained} on the completed images; "
              "active units: after Burda et al. (2016), the posterior mean measured from the prior's, in its "
              "standard deviations."
              + (" GSNN objective: the KL and active-unit rows, of the untrained recognition net, are left out."
                 if results.get("objective") == "gsnn" else "")]
    return "\n".join(lines) + "\n"


def _csv_rows(results: dict) -> list[list[str]]:
    """row, setting, mean, sem of every value of results.json's settings (the active units: a count, no sem)."""
    rows = []
    for key in (*ROW_NAMES, *TRUE_ROW_NAMES, *SAMPLE_ROWS):
        for k in (k for k in _settings(results) if key in results[k]):
            value = results[k][key]
            if key == ACTIVE_UNITS:
                rows.append([key, k, "" if value is None else str(value), ""])
            else:
                rows.append([key, k, f"{value['mean']:.6f}", f"{value['sem']:.6f}"])
    return rows


def write_results(run_dir: Path, results: dict) -> str:
    """Write results.json, results.csv and results.md into run_dir, as UTF-8 and as one unit: the three texts
    are made first, then written to temporary files, and renamed into place only when all three are written (if
    anything fails, none of the old files is replaced). Returns the markdown table."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row", "setting", "mean", "sem"])
    writer.writerows(_csv_rows(results))
    table = markdown_table(results)
    write_texts({run_dir / "results.json": json.dumps(results, indent=2) + "\n",
                 run_dir / "results.csv": buffer.getvalue(), run_dir / "results.md": table})
    return table
