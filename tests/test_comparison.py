"""Paired comparisons and the table across seeds."""

import numpy as np
import pytest
import scipy.stats
import torch

from cvae.comparison import ablation_table, changes, paired_difference, paper_table
from cvae.config import PRESETS, RunConfig


def test_paired_difference_matches_scipys_t_interval_and_test():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(500, generator=generator, dtype=torch.float64) + 3.0
    b = a - 0.2 + 0.5 * torch.randn(500, generator=generator, dtype=torch.float64)
    d = paired_difference(a, b, 0.95)
    diff = (a - b).numpy()
    low, high = scipy.stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=scipy.stats.sem(diff))
    assert d["mean"] == pytest.approx(diff.mean())
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((low, high))
    assert d["p_value"] == pytest.approx(scipy.stats.ttest_1samp(diff, 0.0).pvalue)
    assert d["ci_low"] < 0.2 < d["ci_high"]


def result(objective: str, seed: int, nn: float, cvae_is: float, preset: str = "paper") -> dict:
    cell = lambda mean: {"mean": mean, "sem": 0.5}  # noqa: E731
    config = RunConfig(**PRESETS[preset], seed=seed, preset=preset).to_dict() | {"objective": objective}
    return {"objective": objective, "seed": seed, "preset": preset, "config": config, "num_samples": 100,
            "test_examples": 10000,
            "dataset": "mnist", "protocol": "grayscale", "run_dir": f"runs/{objective}{seed}",
            "1": {"nn": cell(nn), "cvae_elbo": cell(cvae_is + 5), "cvae_mc": cell(cvae_is + 2),
                  "cvae_is": cell(cvae_is), "gap": cell(nn - cvae_is)}}


def test_paper_table_reports_mean_and_standard_deviation_over_seeds():
    runs = [result("cvae", 0, 100.0, 60.0), result("cvae", 1, 101.0, 62.0), result("cvae", 2, 102.0, 64.0),
            result("gsnn", 0, 100.0, 70.0)]
    table = paper_table(runs)
    std = np.std([60.0, 62.0, 64.0], ddof=1)
    assert f"| CVAE (importance sampling) | 62.00 ± {std:.2f} (SE 0.50; 3 seeds) |" in table
    assert "| GSNN (Monte Carlo) | 72.00 (SE 0.50; 1 seed) |" in table
    assert "| NN baseline (exact) | 101.00 ± 1.00 (SE 0.50; 3 seeds) |" in table
    assert "hybrid" not in table.split("\n\n")[0]  # no hybrid runs, no hybrid rows


def test_a_gsnn_runs_table_leaves_out_the_rows_that_need_its_untrained_recognition_net():
    from cvae.report import markdown_table
    gsnn = result("gsnn", 0, 100.0, 1e5)
    table = markdown_table(gsnn)
    assert "CVAE Monte Carlo" in table and "NN baseline" in table
    assert "importance sampling" not in table.split("\n\n")[0] and "100000" not in table
    assert "importance sampling" in markdown_table(result("cvae", 0, 100.0, 60.0))


def test_strong_preset_runs_get_rows_of_their_own():
    runs = [result("cvae", 0, 100.0, 65.0), result("cvae", 1, 100.0, 65.0)]
    runs += [result(PRESETS["strong"].get("objective", "cvae"), seed, 98.0 + seed, 58.0 + seed, "strong")
             for seed in range(3)]
    table = paper_table(runs).split("\n\n")[0]
    assert "| CVAE (importance sampling) | 65.00 ± 0.00 (SE 0.50; 2 seeds) |" in table
    assert "| NN baseline (exact) | 100.00 ± 0.00 (SE 0.50; 2 seeds) |" in table
    assert "| Strong preset: CVAE (importance sampling) | 59.00 ± 1.00 (SE 0.50; 3 seeds) |" in table
    assert "| Strong preset: NN baseline (exact) | 99.00 ± 1.00 (SE 0.50; 3 seeds) |" in table
    assert "| Strong preset: performance gap (NN - CVAE IS) | 40.00 ± 0.00 (SE 0.50; 3 seeds) |" in table


def test_ablation_rows_name_what_each_run_changes_from_the_papers_set_up():
    paper = RunConfig().to_dict()
    assert changes(paper) == "none (the paper's set-up)"
    assert changes(paper | {"hidden": [1000, 1000], "seed": 4, "lr_decay": 0.9}) == "hidden 1000-1000, lr decay 0.9"
    assert changes(paper | {"autoregressive": True, "binarize": True}) == "autoregressive, binarize"
    runs = [result("cvae", 0, 100.0, 65.0), result("iwae", 0, 100.0, 63.0) | {"seed": 1}]
    runs[1]["config"] |= {"iw_samples": 10}
    table = ablation_table(runs)
    assert "| none (the paper's set-up) | 0 | 65.00 ± 0.50 | 100.00 ± 0.50 |" in table
    assert "| objective iwae, iw samples 10 | 1 | 63.00 ± 0.50 | 100.00 ± 0.50 |" in table


def test_without_cvae_runs_the_nn_row_counts_each_seed_once():
    runs = [result("gsnn", seed, 100.0 + seed, 90.0) for seed in range(3)]
    runs += [result("hybrid", seed, 100.0 + seed, 80.0) for seed in range(2)]
    table = paper_table(runs)
    assert "| NN baseline (exact) | 101.00 ± 1.00 (SE 0.50; 3 seeds) |" in table
    assert "| hybrid (importance sampling) | 80.00 ± 0.00 (SE 0.50; 2 seeds) |" in table
