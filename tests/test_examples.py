"""The worked examples and the README's "Use it on your own data" code, run as written on small settings, and the
paper's experiment under the continuous-Bernoulli likelihood."""

import contextlib
import io
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, invoke, load_script

from cvae import checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


def readme_own_data_code(which: int = 0) -> str:
    """The README's own-data section's first (which=0) or second code block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use it on your own data", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[which]


def test_the_readme_own_data_code_runs_as_written_in_at_most_20_lines(tmp_path: Path):
    code = readme_own_data_code()
    assert len(code.strip().splitlines()) <= 20
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
            exec(compile(code, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "model.pt").is_file()
    assert namespace["samples"].shape == (10, 5, 1)
    assert namespace["nll"].shape == (1000,) and namespace["nll"].mean() < 0  # a unimodal Gaussian scores about 0.9
    assert "nats" in out.getvalue()


def test_the_readme_image_code_from_a_dataset_runs_as_written_in_at_most_20_lines():
    code = readme_own_data_code(1)
    assert len(code.strip().splitlines()) <= 20
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        exec(compile(code, "README.md", "exec"), namespace)
    assert isinstance(namespace["test"], torch.utils.data.Dataset)
    assert namespace["samples"].shape == (3, 100, 1, 8, 16)
    nll = namespace["nll"]
    assert nll.shape == (100,) and nll.mean() < 128 * math.log(2) / 2  # below half of a coin per pixel
    assert "nats per bottom half" in out.getvalue()


def test_train_py_runs_the_paper_experiment_under_the_continuous_bernoulli_likelihood(mnist_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    status, err = invoke(load_script("train").main, [*TINY, "--epochs", "1", "--quadrants", "2", "--likelihood",
                                                      "continuous-bernoulli", "--data-dir", str(mnist_dir),
                                                      "--out", str(run)])
    assert status == 0, err
    results = json.loads((run / "results.json").read_text())
    assert results["likelihood"] == "continuous-bernoulli"
    assert "continuous-bernoulli likelihood (a normalized density)" in (run / "results.md").read_text()
    baseline = checkpoints.load(run / "q2" / "baseline.pt")["model"]
    assert baseline["args"]["likelihood"]["likelihood"]["name"] == "continuous-bernoulli"
    cvae = checkpoints.load(run / "q2" / "cvae.pt")["model"]
    assert cvae["args"]["baseline"]["model"] == baseline
    status, err = invoke(load_script("evaluate").main, [str(run), "--num-samples", "3", "--no-progress"])
    assert status == 0, err
    status, err = invoke(load_script("train").main, ["--likelihood", "gaussian"])
    assert status == 2 and "invalid choice: 'gaussian'" in err


def test_the_image_completion_example_reports_mlp_and_convolutional_models_in_nats(mnist_dir: Path,
                                                                                   tmp_path: Path):
    script = load_script("examples/image_completion")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        table = script.main(["--dataset", "mnist", "--data-dir", str(mnist_dir), "--train-subset", "256",
                             "--epochs", "1", "--test-subset", "40", "--num-samples", "3", "--no-progress",
                             "--out", str(tmp_path)])
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith(("| mlp", "| conv"))]
    names = ("NN baseline (exact)", "CVAE importance sampling, S=3", "CVAE Monte Carlo, S=3",
             "CVAE negative ELBO (a bound), S=3", "NN - CVAE importance sampling (paired)")
    assert [row[:2] for row in rows] == [[kind, name] for kind in ("mlp", "conv") for name in names]
    parameters = {tuple(row[:2]): int(row[2].replace(",", "")) for row in rows if row[2]}
    assert parameters["mlp", "NN baseline (exact)"] == 392 * 500 + 500 + 500 * 500 + 500 + 500 * 392 + 392
    assert parameters["conv", "NN baseline (exact)"] != parameters["mlp", "NN baseline (exact)"]
    assert "40 test images" in table and (tmp_path / "samples.png").stat().st_size > 10_000


def test_the_multimodal_example_reports_the_floor_the_cvae_and_the_unimodal_baseline(tmp_path: Path):
    script = load_script("examples/multimodal_regression")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        table = script.main(["--train-size", "2000", "--test-size", "500", "--epochs", "2", "--num-samples", "20",
                             "--no-progress", "--out", str(tmp_path)])
    for row in ("truth: the floor, -log p(y|x)", "CVAE, importance sampling (S=20)",
                "unimodal Gaussian regression (exact)"):
        assert f"| {row} | " in table
    assert "| 98.9% |" in table and (tmp_path / "samples.png").stat().st_size > 10_000


def test_the_multimodal_examples_truth_is_a_normalized_density_with_separate_branches():
    script = load_script("examples/multimodal_regression")
    x = torch.full((1, 1), 0.3)
    grid = torch.linspace(-1.5, 1.5, 601)
    y = torch.cartesian_prod(grid, grid)
    density = (-script.true_nll(x.expand(len(y), 1), y)).exp()
    assert abs(density.sum().item() * (grid[1] - grid[0]).item() ** 2 - 1) < 1e-3  # integrates to 1
    x, y = script.make_data(4000, seed=0)
    assert script.share_on_branch(x, y[None]) > 0.98  # the data themselves lie on the branches
    assert script.share_on_branch(x, torch.zeros(1, 4000, 2)) == 0  # the centre is on none


def test_a_log_that_is_not_a_terminal_gets_one_plain_line_per_epoch_and_no_progress_frames(mnist_dir: Path,
                                                                                           tmp_path: Path):
    status, err = invoke(load_script("train").main, [*[a for a in TINY if a != "--no-progress"], "--epochs", "2",
                                                      "--quadrants", "2", "--num-samples", "2",
                                                      "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run")])
    assert status == 0, err
    assert "\r" not in err and "it/s" not in err  # no tqdm frames in a redirected log
    assert [line.split(":")[0] for line in err.splitlines() if " epoch " in line] == [
        "q2 baseline epoch 1", "q2 baseline epoch 2", "q2 cvae epoch 1", "q2 cvae epoch 2"]
