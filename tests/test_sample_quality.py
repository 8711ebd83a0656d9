"""sample_quality.py end to end on a tiny finished run, with a tiny untrained classifier given by --classifier."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import invoke, load_script

from cvae.classifier import DigitClassifier, save_classifier

pytestmark = pytest.mark.usefixtures("one_thread")
script = load_script("sample_quality")


@pytest.fixture
def run(finished_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


@pytest.fixture
def tiny_classifier(tmp_path: Path) -> Path:
    path = tmp_path / "cnn.pt"
    save_classifier(DigitClassifier((2, 4), 8), path, test_accuracy=0.5)
    return path


ARGS = ["-k", "3", "--draws", "2", "--num-samples", "4", "--test-subset", "30", "--device", "cpu", "--no-progress"]


def test_writes_every_metric_for_every_setting(mnist_dir, run, tiny_classifier):
    status, err = invoke(script.main, [str(run), *ARGS, "--classifier", str(tiny_classifier)])
    assert status == 0, err
    results = json.loads((run / "sample_quality.json").read_text())
    assert results["test_examples"] == 30 and results["predictions"] == 3 and results["draws"] == 2
    assert results["classifier"]["test_accuracy"] == 0.5
    for k in ("1", "2"):
        nn_, cvae = results[k]["nn"], results[k]["cvae"]
        assert set(nn_) == {"gray", "true", "best_of_k", "plausibility", "diversity", "distinct"}
        assert set(cvae) == {"gray_is", "true_mc", "true_is", "best_of_k", "plausibility", "diversity", "distinct",
                             "kl", "active_units", "z_dim"}
        # the NN's one prediction K times: no diversity, one label
        assert nn_["diversity"] == {"mean": 0.0, "sem": 0.0} and nn_["distinct"] == {"mean": 1.0, "sem": 0.0}
        assert 0 <= cvae["diversity"]["mean"] <= math.log(3) + 1e-9 and 1 <= cvae["distinct"]["mean"] <= 3
        assert 0.1 <= cvae["plausibility"]["mean"] <= 1 and cvae["kl"]["mean"] >= 0
        assert 0 <= cvae["active_units"] <= cvae["z_dim"] == 4
        assert all(math.isfinite(v["mean"]) and v["sem"] >= 0 for v in (*nn_.values(), *(
            value for value in cvae.values() if isinstance(value, dict))))
    # the same command gives the same numbers (every draw is seeded)
    status, err = invoke(script.main, [str(run), *ARGS, "--classifier", str(tiny_classifier), "--quadrants", "2"])
    assert status == 0, err
    again = json.loads((run / "sample_quality.json").read_text())
    assert "1" not in again
    for model in ("nn", "cvae"):
        assert again["2"][model] == results["2"][model]


def test_the_table(mnist_dir, run, tiny_classifier):
    args = script.parse_args([str(run), *ARGS])
    summary = {"nn": {key: {"mean": 1.0, "sem": 0.1} for key in
                      ("gray", "true", "best_of_k", "plausibility", "diversity", "distinct")},
               "cvae": {key: {"mean": 2.0, "sem": 0.2} for key in
                        ("gray_is", "true_mc", "true_is", "best_of_k", "plausibility", "diversity", "distinct", "kl")}
               | {"active_units": 3, "z_dim": 4}}
    settings = {"test_examples": 30, "num_samples": args.num_samples, "draws": args.draws,
                "predictions": args.predictions}
    table = script.markdown_table(1, summary, settings)
    assert table.startswith("### 1 input quadrant: 30 test images, S = 4, T = 2 binarizations, K = 3")
    assert "| 1.00 ± 0.10 (exact) | 2.00 ± 0.20 (IS) |" in table and "| 3 of 4 |" in table
    assert all(line.count("|") - line.count("\\|") == 4 for line in table.splitlines()[2:])


@pytest.mark.parametrize("change, needle", [
    (lambda run, classifier: ["--quadrants", "3", "--classifier", str(classifier)], "no models for --quadrants 3"),
    (lambda run, classifier: ["--classifier", str(run / "q1" / "cvae.pt")], "not a digit_classifier"),
])
def test_bad_input_is_an_error_that_changes_nothing(mnist_dir, run, tiny_classifier, change, needle):
    status, err = invoke(script.main, [str(run), *ARGS, *change(run, tiny_classifier)])
    assert status == 2 and needle in err, err
    assert not (run / "sample_quality.json").exists()


def test_an_unfinished_run_is_refused(mnist_dir, run, tiny_classifier):
    saved = json.loads((run / "config.json").read_text())
    saved["finished"] = False
    (run / "config.json").write_text(json.dumps(saved))
    status, err = invoke(script.main, [str(run), *ARGS, "--classifier", str(tiny_classifier)])
    assert status == 2 and "has not finished training" in err, err
