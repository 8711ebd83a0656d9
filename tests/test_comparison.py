"""Paired comparisons and the table across seeds."""

import numpy as np
import pytest
import scipy.stats
import torch

from cvae.paper.comparison import ablation_table, changes, paired_difference, paper_table
from cvae.paper.config import PRESETS, RunConfig


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
    from cvae.paper.report import markdown_table
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
    assert "true CLL" not in table and "diversity" not in table  # columns only for what the runs measured

    runs[1] = with_samples(runs[1], 61.0, 7)
    table = ablation_table(runs)
    assert "| CVAE IS, 1q | NN, 1q | CVAE IS, true CLL, 1q | CVAE diversity, 1q |" in table
    assert "| none (the paper's set-up) | 0 | 65.00 ± 0.50 | 100.00 ± 0.50 | — | — |" in table
    assert ("| objective iwae, iw samples 10 | 1 | 63.00 ± 0.50 | 100.00 ± 0.50 | 61.00 ± 0.50 | 61.000 ± 0.500 |"
            in table)


def test_without_cvae_runs_the_nn_row_counts_each_seed_once():
    runs = [result("gsnn", seed, 100.0 + seed, 90.0) for seed in range(3)]
    runs += [result("hybrid", seed, 100.0 + seed, 80.0) for seed in range(2)]
    table = paper_table(runs)
    assert "| NN baseline (exact) | 101.00 ± 1.00 (SE 0.50; 3 seeds) |" in table
    assert "| hybrid (importance sampling) | 80.00 ± 0.00 (SE 0.50; 2 seeds) |" in table


def with_samples(run: dict, best_of_k: float, units: int, k: int = 10) -> dict:
    """run with the true likelihood and the sample metrics of evaluate (every value best_of_k, but the counts)."""
    from cvae.paper.sample_evaluation import ACTIVE_UNITS, SAMPLE_KEYS, TRUE_KEYS

    run["1"] |= {key: {"mean": best_of_k, "sem": 0.5} for key in (*TRUE_KEYS, *SAMPLE_KEYS)} | {ACTIVE_UNITS: units}
    return run | {"sample_k": k, "binarizations": 1}


def test_the_samples_table_over_seeds_and_families():
    from cvae.paper.comparison import samples_table
    runs = [with_samples(result("cvae", 0, 100.0, 60.0), 50.0, 3),
            with_samples(result("cvae", 1, 101.0, 62.0), 54.0, 5),
            with_samples(result("gsnn", 0, 100.0, 70.0), 40.0, 1)]
    table = samples_table(runs)
    assert table.startswith("| samples judged as samples, K = 10 | 1 quadrant |")
    assert f"| CVAE, best-of-10 squared error | 52.00 ± {np.std([50, 54], ddof=1):.2f} (SE 0.50; 2 seeds) |" in table
    assert "| CVAE, active units of z (Var[(E_q z_u - E_p z_u) / sd_p z_u] > 0.01) | 4 ± 1 (2 seeds) |" in table
    assert "| GSNN, best-of-10 squared error | 40.00 (SE 0.50; 1 seed) |" in table
    assert "GSNN, KL" not in table and "GSNN, active units" not in table  # its recognition net is untrained
    assert "| NN, distinct labels among the 10 | 52.00 ± 2.83 (SE 0.50; 2 seeds) |" in table  # the cvae runs'
    assert "| NN, true CLL of binarized outputs (exact) | 52.00 ± 2.83 (SE 0.50; 2 seeds) |" in paper_table(runs)
    # runs evaluated before: no rows of theirs, or "—" beside the runs that have them
    assert samples_table([result("cvae", 0, 100.0, 60.0)]) == ""
    assert "true CLL" not in paper_table([result("cvae", 0, 100.0, 60.0)])
    mixed = samples_table([runs[0], result("cvae", 1, 101.0, 62.0)])
    assert "| CVAE, best-of-10 squared error | — |" in mixed


def test_runs_whose_samples_were_judged_with_another_k_are_refused():
    from cvae.paper.comparison import ComparisonError, check_comparable
    runs = [with_samples(result("cvae", 0, 100.0, 60.0), 50.0, 3), with_samples(result("cvae", 1, 101.0, 62.0),
                                                                                 54.0, 5, k=3)]
    with pytest.raises(ComparisonError, match="K is 10 in runs/cvae0 but 3 in runs/cvae1"):
        check_comparable(runs)
    runs[1]["sample_k"] = 0  # evaluated without them: nothing to compare
    check_comparable(runs)


def test_a_gsnn_runs_samples_table_leaves_out_its_latent_rows():
    from cvae.paper.report import markdown_table
    table = markdown_table(with_samples(result("gsnn", 0, 100.0, 1e5), 40.0, 1) | {"test_examples": 4})
    assert "| CVAE, best-of-10 squared error | 40.00 ± 0.50 |" in table and "NN, true CLL" in table
    assert "| CVAE, KL(q" not in table and "| CVAE, active units" not in table and "CVAE IS, true CLL" not in table
    assert "GSNN objective: the KL and active-unit rows" in table
