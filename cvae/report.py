"""Tables of results: results.json, results.csv and results.md in a run directory (UTF-8, replaced as one unit)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .checkpoints import write_texts
from .evaluation import ROW_NAMES

RECOGNITION_ROWS = ("cvae_elbo", "cvae_is", "gap")  # meaningless for a GSNN, whose recognition net is untrained


def _settings(results: dict) -> list[str]:
    return sorted(key for key in results if key.isdigit())


def _row_label(key: str, results: dict) -> str:
    label = ROW_NAMES[key]
    if key in ("cvae_elbo", "cvae_mc", "cvae_is"):
        label += f" (S={results['num_samples']})"
    return label


def table_header(settings: list) -> list[str]:
    """The first two lines of a markdown table with one column per setting (number of input quadrants)."""
    return ["| negative CLL (nats) | " + " | ".join(f"{k} quadrant{'s' if str(k) != '1' else ''}" for k in settings)
            + " |", "|---" * (len(settings) + 1) + "|"]


def markdown_table(results: dict) -> str:
    """The table of negative CLL (nats per test image, mean ± standard error), one column per setting."""
    settings = _settings(results)
    lines = table_header(settings)
    gsnn = results.get("objective") == "gsnn"
    for key in ROW_NAMES:
        if gsnn and key in RECOGNITION_ROWS:
            continue
        cells = [f"{results[k][key]['mean']:.2f} ± {results[k][key]['sem']:.2f}" for k in settings]
        lines.append(f"| {_row_label(key, results)} | " + " | ".join(cells) + " |")
    lines.append("")
    if gsnn:
        lines.append("GSNN objective: the recognition net is not trained, so the rows that sample from it "
                     "(negative ELBO, importance sampling, gap) are left out; results.json keeps them.")
    likelihood = results.get("likelihood", "bernoulli")
    under = "" if likelihood == "bernoulli" else f" under the {likelihood} likelihood (a normalized density)"
    lines.append(f"{results['dataset']}, {results['protocol']} targets{under}, "
                 f"{results['test_examples']} test images; ± is the standard error over images.")
    return "\n".join(lines) + "\n"


def write_results(run_dir: Path, results: dict) -> str:
    """Write results.json, results.csv and results.md into run_dir, as UTF-8 and as one unit: the three texts
    are made first, then written to temporary files, and renamed into place only when all three are written (if
    anything fails, none of the old files is replaced). Returns the markdown table."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row", "setting", "mean", "sem"])
    for key in ROW_NAMES:
        for k in _settings(results):
            writer.writerow([key, k, f"{results[k][key]['mean']:.6f}", f"{results[k][key]['sem']:.6f}"])
    table = markdown_table(results)
    write_texts({run_dir / "results.json": json.dumps(results, indent=2) + "\n",
                 run_dir / "results.csv": buffer.getvalue(), run_dir / "results.md": table})
    return table
