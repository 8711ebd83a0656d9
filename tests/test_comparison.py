"""Paired comparisons and the table across seeds."""

import numpy as np
import pytest
import scipy.stats
import torch

from cvae.comparison import paired_difference, paper_table


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


def result(objective: str, seed: int, nn: float, cvae_is: float) -> dict:
    cell = lambda mean: {"mean": mean, "sem": 0.5}  # noqa: E731
    return {"objective": objective, "seed": seed, "num_samples": 100, "test_examples": 10000,
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
