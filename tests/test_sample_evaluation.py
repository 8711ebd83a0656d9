"""A run's evaluation beside its CLL, end to end on tiny runs (their data carries a tiny cached classifier,
conftest.write_classifier): the true likelihood of binarized outputs and the samples judged as samples in
results.json, results.csv, results.md and per_image.pt, with the properties they must have."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, command_module, invoke, load_script

from cvae.paper.experiment import task_data
from cvae.paper.models import BaselineNet
from cvae.paper.quadrants import QuadrantTask
from cvae.paper.sample_evaluation import ACTIVE_UNITS, SAMPLE_KEYS, TRUE_KEYS

pytestmark = pytest.mark.usefixtures("one_thread")
train_script, evaluate_script = load_script("train"), load_script("evaluate")
EVALUATE = ["--device", "cpu", "--no-progress", "--precision", "fp32"]


@pytest.fixture
def run(finished_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def per_image(run: Path, k: int) -> dict[str, torch.Tensor]:
    return torch.load(run / f"q{k}" / "per_image.pt", weights_only=True)


def test_every_run_is_judged_by_its_samples_and_by_the_true_likelihood(mnist_dir: Path, finished_run: Path) -> None:
    """train's evaluation with the defaults, T = 1 and K = 10, on grayscale targets under the Bernoulli."""
    saved = results(finished_run)
    assert saved["binarizations"] == 1 and saved["sample_k"] == 10 and saved["z_dim"] == 4
    assert 0 <= saved["classifier_test_accuracy"] <= 1
    for k in ("1", "2"):
        setting = saved[k]
        assert all(set(setting[key]) == {"mean", "sem"} for key in (*TRUE_KEYS, *SAMPLE_KEYS))
        # the NN's one prediction, K times: no diversity, one label
        assert setting["nn_diversity"] == {"mean": 0.0, "sem": 0.0}
        assert setting["nn_distinct"] == {"mean": 1.0, "sem": 0.0}
        assert 0 <= setting["cvae_diversity"]["mean"] <= math.log(10) and 1 <= setting["cvae_distinct"]["mean"] <= 10
        assert 0.1 <= setting["cvae_plausibility"]["mean"] <= 1 and setting["cvae_kl"]["mean"] >= 0
        assert isinstance(setting[ACTIVE_UNITS], int) and 0 <= setting[ACTIVE_UNITS] <= 4
        values = per_image(finished_run, int(k))
        assert all(values[key].shape == (100,) for key in (*TRUE_KEYS, *SAMPLE_KEYS))
        # the best of K samples is at most their mean error, image by image
        assert bool((values["cvae_best_of_k"] <= values["cvae_sample_error"] + 1e-9).all())
        # a factorized decoder's gray score is the expectation of the true log-likelihood of the binarizations:
        # their per-image difference has mean 0 (here within 4 standard errors)
        diff = values["nn_true"] - values["nn"]
        assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(100) and diff.abs().max() > 0
        for key, value in values.items():
            assert setting[key]["mean"] == pytest.approx(value.mean().item(), rel=1e-9), key

    # the NN's best-of-K error is its prediction's squared error, summed over the output pixels (to bf16's
    # tolerance: train's evaluation ran with --precision auto)
    from cvae.paper.data import load_splits
    task = QuadrantTask(2)
    x, y = task_data(load_splits(mnist_dir).test, task, False, torch.device("cpu"))
    with torch.no_grad():
        error = (BaselineNet.from_run(finished_run, 2)(x) - y).square().sum(-1).double()
    torch.testing.assert_close(per_image(finished_run, 2)["nn_best_of_k"], error, rtol=1e-3, atol=1e-3)

    table = (finished_run / "results.md").read_text()
    assert "| NN, true CLL of binarized outputs (exact) |" in table
    assert "| CVAE IS, true CLL of binarized outputs (S=2) |" in table and "T = 1 draw(s)" in table
    samples = table[table.index("| samples judged as samples, K = 10 | 1 quadrant | 2 quadrants |"):]
    assert "| NN, diversity of the 10 labels (nats) | 0.000 ± 0.000 | 0.000 ± 0.000 |" in samples
    label = "CVAE, active units of z (Var[(E_q z_u - E_p z_u) / sd_p z_u] > 0.01)"
    assert f"| {label} | {saved['1'][ACTIVE_UNITS]} |" in samples
    assert all(line.count("|") - line.count("\\|") == 4 for line in samples.splitlines() if line.startswith("|"))
    with open(finished_run / "results.csv", newline="") as handle:
        rows = {(row["row"], row["setting"]): row for row in csv.DictReader(handle)}
    assert float(rows[("cvae_kl", "2")]["mean"]) == pytest.approx(saved["2"]["cvae_kl"]["mean"], abs=1e-6)
    assert rows[(ACTIVE_UNITS, "1")] == {"row": ACTIVE_UNITS, "setting": "1", "mean": str(saved["1"][ACTIVE_UNITS]),
                                         "sem": ""}


def test_evaluate_records_t_and_k_and_gives_the_same_numbers_again(mnist_dir: Path, run: Path) -> None:
    status, err = invoke(evaluate_script.main, [str(run), *EVALUATE, "--binarizations", "2", "--sample-k", "3"])
    assert status == 0, err
    first = results(run)
    assert first["binarizations"] == 2 and first["sample_k"] == 3
    assert 1 <= first["2"]["cvae_distinct"]["mean"] <= 3 and "best-of-3" in (run / "results.md").read_text()
    status, err = invoke(evaluate_script.main, [str(run), *EVALUATE, "--binarizations", "2", "--sample-k", "3"])
    assert status == 0, err
    again = results(run)
    for key in (*TRUE_KEYS, *SAMPLE_KEYS, ACTIVE_UNITS):  # every draw is seeded
        assert again["2"][key] == first["2"][key], key
    # --sample-k 0: none of the sample metrics; T = 1, the first of the 2 draws: another estimate of the same
    status, err = invoke(evaluate_script.main, [str(run), *EVALUATE, "--sample-k", "0"])
    assert status == 0, err
    off = results(run)
    assert off["sample_k"] == 0 and off["binarizations"] == 1 and "classifier_test_accuracy" not in off
    assert not set(SAMPLE_KEYS) & set(off["2"]) and ACTIVE_UNITS not in off["2"] and "nn_true" in off["2"]
    assert "samples judged as samples" not in (run / "results.md").read_text()
    assert off["2"]["nn_true"] != again["2"]["nn_true"]


def test_the_classifier_is_trained_on_first_need_with_a_note(mnist_dir: Path, run: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(mnist_dir, data, ignore=shutil.ignore_patterns("classifier"))
    status, err = invoke(evaluate_script.main, [str(run), *EVALUATE, "--sample-k", "2", "--data-dir", str(data)])
    assert status == 0, err
    assert "note: training a mnist classifier on the 256 training images" in err and "once per data directory" in err
    assert (data / "classifier" / "mnist_cnn.pt").is_file()
    assert 0 <= results(run)["classifier_test_accuracy"] <= 1
    status, err = invoke(evaluate_script.main, [str(run), *EVALUATE, "--sample-k", "2", "--data-dir", str(data)])
    assert status == 0 and "training a mnist classifier" not in err, err


def test_no_true_likelihood_where_the_score_already_is_one(mnist_dir: Path, tmp_path: Path) -> None:
    """--binarize: the Bernoulli score of binary targets is their log-likelihood."""
    out = tmp_path / "binarized"
    status, err = invoke(train_script.main, [*TINY, "--epochs", "1", "--quadrants", "1", "--binarize",
                                             "--sample-k", "2", "--data-dir", str(mnist_dir), "--out", str(out)])
    assert status == 0, err
    saved = results(out)
    assert saved["binarizations"] is None and saved["sample_k"] == 2
    assert not set(TRUE_KEYS) & set(saved["1"]) and not set(TRUE_KEYS) & set(per_image(out, 1))
    assert set(SAMPLE_KEYS) <= set(saved["1"])
    table = (out / "results.md").read_text()
    assert "true CLL of binarized outputs" not in table and "The targets are binary" in table


def test_paper_table_shows_them_beside_runs_evaluated_before_they_existed(mnist_dir: Path, finished_run: Path,
                                                                          run: Path) -> None:
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["seed"] = 1  # another seed of the same configuration, evaluated again
    (run / "config.json").write_text(json.dumps(saved))
    status, err = invoke(evaluate_script.main, [str(run), *EVALUATE, "--sample-k", "3"])
    assert status == 0, err
    status, err = invoke(command_module("table").main, [str(finished_run), str(run)])
    assert status == 2 and "K is 10" in err and "but 3" in err and "--sample-k K" in err, err

    old = results(run)  # as evaluate wrote it before these existed
    for key in ("binarizations", "sample_k", "z_dim", "classifier_test_accuracy"):
        del old[key]
    for k in ("1", "2"):
        old[k] = {key: value for key, value in old[k].items() if key not in (*TRUE_KEYS, *SAMPLE_KEYS, ACTIVE_UNITS)}
    (run / "results.json").write_text(json.dumps(old))
    table = run / "table.md"
    status, err = invoke(command_module("table").main, [str(finished_run), str(run), "--out", str(table)])
    assert status == 0, err
    text = table.read_text()
    assert "| NN, true CLL of binarized outputs (exact) | — | — |" in text
    assert "| samples judged as samples, K = 10 | 1 quadrant | 2 quadrants |" in text
    assert "| CVAE, best-of-10 squared error | — | — |" in text
    assert text.index("samples judged as samples") < text.index("Paired comparison")
