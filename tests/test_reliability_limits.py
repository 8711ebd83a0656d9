"""Reliability, third round: JSON files read with bounds, sizes checked before work (and an allocation that fails
named after what asked for it), messages that name the real cause, and nonsense refused where the library takes
it: a seed too large for the generators, a user's network of the wrong width, numpy's integers, a Gaussian scale
that float32 rounds to 0, options of a run that contradict each other.

The command-line cases (exit status 2, nothing changed) are in tests/test_cli_errors.py and
tests/test_sample_command.py; these are the library's and the run files' own.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import command_module, invoke, load_script, unchanged
from torch import nn

from cvae import ConditionalVAE, Regressor, checkpoints, estimators, jsonfiles, likelihoods
from cvae.inputs import TooLarge
from cvae.paper import cli, sample_evaluation, true_likelihood
from cvae.paper import config as run_config
from cvae.paper.classifier import train_classifier
from cvae.paper.config import OptionClash, RunConfig
from cvae.paper.convergence import estimates_versus_samples
from cvae.paper.evaluation import per_image_cll
from cvae.paper.models import CVAE, BaselineNet

pytestmark = pytest.mark.usefixtures("one_thread")
evaluate_script = load_script("evaluate")
control_script = command_module("autoregressive_baseline")
HAS_CUDA = torch.cuda.is_available()
DEEP = "[" * 100_000 + "]" * 100_000


# ----------------------------------------------------------------------------- JSON files read with bounds
@pytest.mark.parametrize("content, expected", [
    (DEEP, "nested too deeply"),
    ('{"a": ' + "[" * 33 + "]" * 33 + "}", "more than 32 levels"),
    ('{"seed": 1, "seed": 2}', 'the key "seed" twice'),
    ('{"a": {"b": 1, "b": 1}}', 'the key "b" twice'),
    ('{"epochs": ' + "9" * 5000 + "}", "not valid JSON"),
    ("[1, 2", "not valid JSON"),
    (b"\xff{}", "not UTF-8"),
], ids=["deeper-than-recursion", "deeper-than-32", "key-twice", "key-twice-inside", "huge-integer", "cut", "latin"])
def test_a_json_file_that_breaks_a_bound_is_a_run_file_error_naming_it(tmp_path: Path, content: str | bytes,
                                                                        expected: str) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(checkpoints.RunFileError) as error:
        checkpoints.read_json(path, "results.json")
    message = str(error.value)
    assert str(path) in message and expected in message and "\n" not in message, message


def test_a_json_file_is_read_with_a_size_bound(tmp_path: Path) -> None:
    """A device that never ends (/dev/zero) or a file larger than the bound is refused after reading the bound."""
    with pytest.raises(checkpoints.RunFileError, match="larger than 16 MiB"):
        checkpoints.read_json("/dev/zero")
    path = tmp_path / "history.json"
    path.write_text(json.dumps({"baseline": [{"epoch": e} for e in range(200)]}))
    assert len(checkpoints.read_json(path)["baseline"]) == 200
    with pytest.raises(checkpoints.RunFileError, match="larger than 1000 bytes"):
        checkpoints.read_json(path, limit=1000)
    assert jsonfiles.depth({"a": [[1], {"b": []}]}) == 4 and jsonfiles.depth(5) == 0


@pytest.mark.parametrize("text, expected", [(DEEP, "nested too deeply"),
                                            ('{"config": {}, "config": {}}', 'the key "config" twice')])
def test_from_run_and_read_run_config_name_a_bad_config_json(tmp_path: Path, text: str, expected: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    with pytest.raises(checkpoints.RunFileError, match=expected):
        run_config.read_run_config(run / "config.json")
    with pytest.raises(cli.UserError, match=expected):
        CVAE.from_run(run, 1)


def test_a_deep_history_json_is_named_by_evaluate(tmp_path: Path, mnist_dir: Path, finished_run: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "q2" / "history.json").write_text(DEEP)
    status, err = invoke(evaluate_script.main, [str(run), "--device", "cpu", "--no-progress", "--sample-k", "0",
                                                "--data-dir", str(mnist_dir)])
    line = err.strip().splitlines()[-1]
    assert status == cli.EXIT_USAGE and "Traceback" not in err, err
    assert "q2/history.json is unreadable" in line and "nested too deeply" in line, line


# ----------------------------------------------------------------------------- options that contradict each other
@pytest.mark.parametrize("values, keys, flags", [
    ({"ar_window": 5}, '"ar_window" is 5 but "autoregressive" is false', "--ar-window 5 needs --autoregressive"),
    ({"aux_weight": 1.0}, '"aux_weight" is 1 but "autoregressive" is false', "--aux-weight needs --autoregressive"),
    ({"kl_warmup": 50}, '"kl_warmup" is 50, not below "epochs" 50', "--kl-warmup 50 is not below --epochs 50"),
    ({"kl_warmup": 9, "epochs": 5}, '"kl_warmup" is 9, not below "epochs" 5', "--kl-warmup 9 is not below --epochs 5"),
    ({"likelihood": "continuous-bernoulli", "binarize": True}, '"binarize" true',
     "--likelihood continuous-bernoulli with --binarize"),
    ({"likelihood": "continuous-bernoulli", "sample_targets": True}, '"sample_targets" true',
     "--likelihood continuous-bernoulli with --sample-targets"),
], ids=["ar-window", "aux-weight", "kl-warmup-equal", "kl-warmup-above", "cb-binarize", "cb-sample-targets"])
def test_options_that_contradict_each_other_are_refused_in_both_words(tmp_path: Path, values: dict, keys: str,
                                                                      flags: str) -> None:
    with pytest.raises(OptionClash) as error:
        RunConfig.from_options(values)
    assert keys in str(error.value) and flags in error.value.flags
    # a run an earlier version made with them is still read (it evaluates; --resume refuses to train it further)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": RunConfig().to_dict() | values, "finished": True}))
    assert run_config.read_run_config(path)["config"] == RunConfig().to_dict() | values
    # the same options apart are fine
    RunConfig.from_dict(RunConfig().to_dict() | {"autoregressive": True, "ar_window": 5, "aux_weight": 1.0,
                                                 "kl_warmup": 49})


# ----------------------------------------------------------------------------- sizes checked before work
def small_cvae(**modules: nn.Module) -> ConditionalVAE:
    torch.manual_seed(0)
    return ConditionalVAE(3, 2, z_dim=2, hidden=(4,), **modules).eval()


def test_a_huge_number_of_samples_is_refused_before_any_allocation() -> None:
    model, x = small_cvae(), torch.zeros(1000, 3)
    with pytest.raises(TooLarge) as error:
        model.sample(x, 10**9)
    message = str(error.value)
    assert "num_samples=1000000000 draws for 1000 row(s) of x" in message and "GiB" in message, message
    assert isinstance(error.value, ValueError) and isinstance(error.value, MemoryError)
    assert model.sample(x[:2], 3).shape == (3, 2, 2)


def test_an_allocation_that_fails_while_sampling_names_num_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_cvae()

    def no_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8000000000 bytes")

    monkeypatch.setattr(model.likelihood, "sample", no_memory)
    with pytest.raises(RuntimeError) as error:
        model.sample(torch.zeros(2, 3), 7)
    assert any("num_samples=7 draws for 2 row(s) of x" in note for note in error.value.__notes__)


def test_out_of_memory_in_the_evaluation_names_the_option_that_asked(mnist_dir: Path, tmp_path: Path,
                                                                     finished_run: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    for target, option in (("_sample_values", "--sample-k 3"), ("nn_expected_nll", "--binarizations 2")):
        with monkeypatch.context() as patch:
            patch.setattr(sample_evaluation, target, no_memory)
            status, err = invoke(evaluate_script.main, [str(run), "--device", "cpu", "--no-progress", "--data-dir",
                                                        str(mnist_dir), "--sample-k", "3", "--binarizations", "2"])
        line = err.strip().splitlines()[-1]
        assert status == cli.EXIT_FAILED and line.startswith("error: out of memory") and option in line, line
        assert "--batch-size" not in line and "--hidden" not in line


def test_the_control_script_checks_binarizations_before_any_work(mnist_dir: Path, tmp_path: Path) -> None:
    with unchanged(tmp_path):
        status, err = invoke(control_script.main, ["--data-dir", str(mnist_dir), "--out", str(tmp_path / "new"),
                                                   "--device", "cpu", "--binarizations", str(10**9)])
    assert status == cli.EXIT_USAGE and "--binarizations 1000000000" in err and "GiB" in err, err
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- messages that name the real cause
def test_a_permission_error_on_save_is_not_called_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's writer raises RuntimeError for a file it cannot open; the system's error it names is the cause."""
    def denied(obj: object, f: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                           "Permission denied")

    monkeypatch.setattr(torch, "save", denied)
    target = tmp_path / "cvae.pt"
    with pytest.raises(OSError) as error:
        checkpoints.save({"w": torch.ones(3)}, target)
    assert error.value.errno == errno.EACCES and str(target) in str(error.value)
    assert "full" not in str(error.value) and list(tmp_path.iterdir()) == []
    status, err = invoke(lambda argv: checkpoints.save({"w": torch.ones(3)}, target), [])
    assert status == cli.EXIT_FAILED and "Permission denied" in err and "disk may be full" not in err, err
    assert "run the command again" in err and "train.py --resume" not in err


def test_a_file_that_cannot_be_opened_is_named_by_the_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When torch's message names no cause, opening the file says it (here: a directory where the file goes)."""
    def failing(obj: object, f: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", failing)
    real_open = open

    def read_only(path: object, mode: str = "r", *args: object, **kwargs: object):
        if "a" in mode:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    with pytest.raises(OSError) as error:
        checkpoints.save({"w": torch.ones(3)}, tmp_path / "x.pt")
    assert error.value.errno == errno.EROFS and "disk may be full" not in str(error.value)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_a_missing_cuda_device_is_named_not_called_a_corrupt_file(tmp_path: Path, finished_run: Path) -> None:
    path = tmp_path / "m.pt"
    small_cvae().save(path)
    for load in (lambda: ConditionalVAE.load(path, map_location="cuda"),
                 lambda: checkpoints.load(path, map_location="cuda:0"),
                 lambda: CVAE.from_run(finished_run, 1, device="cuda")):
        with pytest.raises(ValueError, match="CUDA is not available on this machine") as error:
            load()
        assert not isinstance(error.value, checkpoints.CheckpointError)
        assert "corrupt" not in str(error.value)


def test_a_seed_too_large_for_the_generators_is_named() -> None:
    x, y = torch.zeros(2, 784), torch.full((2, 392), 0.5)
    baseline = BaselineNet(2, hidden=(4,))
    cvae = CVAE(baseline, z_dim=2, hidden=(4,))
    calls = {
        "binarizations": lambda seed: true_likelihood.binarizations(y, 1, seed),
        "nn_expected_nll": lambda seed: true_likelihood.nn_expected_nll(baseline, x, y, 1, seed),
        "per_image_cll": lambda seed: per_image_cll(baseline, cvae, x, y, 1, seed, progress=False),
        "estimates_versus_samples": lambda seed: estimates_versus_samples(cvae, x, y, [1], seed, progress=False),
        "train_classifier": lambda seed: train_classifier(x, torch.zeros(2, dtype=torch.long), 1, seed=seed,
                                                          progress=False),
        "per_image_sample_values": lambda seed: sample_evaluation.per_image_sample_values(
            baseline, cvae, None, x, y, 1, 1, 0, seed, progress=False),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"seed must be an integer of at least 0 and at most 4294967295.*"
                                             r"64 bits\), got 18446744073709551616") as error:
            call(2**64)
        assert "\n" not in str(error.value), name


@pytest.mark.parametrize("generator, expected", [
    (5, r"generator must be a torch.Generator or None, got a int. To seed the draws, pass "
        r"torch.Generator\(\).manual_seed\(5\)"),
    ("0", "generator must be a torch.Generator or None, got a str"),
])
def test_a_generator_that_is_no_generator_is_named(generator: object, expected: str) -> None:
    model, x, y = small_cvae(), torch.zeros(2, 3), torch.zeros(2, 2)
    for call in (lambda: model.sample(x, 2, generator=generator),
                 lambda: estimators.cll_importance(model, x, y, 2, generator=generator, progress=False)):
        with pytest.raises(ValueError, match=expected):
            call()


class Width(nn.Module):
    """A user's module that returns `width` columns whatever it is given."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width, self.weight = width, nn.Parameter(torch.zeros(()))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.new_zeros(rows.shape[0], self.width) + self.weight


@pytest.mark.parametrize("module, returned, expected", [
    ("recognition", "(2, 5)", "(2, 4): loc and raw scale of q(z|x,y)"),
    ("prior", "(2, 5)", "(2, 4): loc and raw scale of p(z|x)"),
    ("generation", "(3, 2, 5)", "(3, 2, 4): the Gaussian(scale=None) likelihood's 2 parameter(s)"),
])
def test_a_users_network_of_the_wrong_width_is_named(module: str, returned: str, expected: str) -> None:
    model = small_cvae(**{module: Width(5)})
    x, y = torch.zeros(2, 3), torch.zeros(2, 2)
    with pytest.raises(ValueError) as error:
        model.sample(x, 3) if module == "generation" else \
            estimators.cll_importance(model, x, y, 3, progress=False)
    message = str(error.value)
    assert f"the {module} network ({module}=) returned a tensor of shape" in message, message
    assert returned in message and expected in message, message


def test_a_generation_module_that_returns_other_rows_is_named() -> None:
    class Halves(nn.Module):
        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            return rows[: rows.shape[0] // 2, :4]

    with pytest.raises(ValueError, match=r"the generation network \(generation=\) returned a tensor of shape \(3, 4\) "
                                         r"for rows \[z, c\] of shape \(6, 5\), expected \(6, num_params"):
        small_cvae(generation=Halves()).sample(torch.zeros(2, 3), 3)


# ----------------------------------------------------------------------------- nonsense refused, numpy's integers taken
def test_numpy_integers_are_integers() -> None:
    model = ConditionalVAE(np.int64(3), np.int32(2), z_dim=np.int64(2), hidden=(np.int64(4),),
                           prior_components=np.int64(2))
    assert (model.x_dim, model.y_dim, model.z_dim, model.hidden) == (3, 2, 2, (4,))
    assert all(type(v) is int for v in (model.x_dim, model.y_dim, model.z_dim, model.prior_components, *model.hidden))
    assert Regressor(np.int64(3), np.int64(2), hidden=[np.int16(4)]).hidden == (4,)
    x, y = torch.zeros(2, 3), torch.zeros(2, 2)
    assert model.sample(x, np.int64(3)).shape == (3, 2, 2)
    assert estimators.cll_monte_carlo(model, x, y, np.int64(2), progress=False).shape == (2,)
    assert true_likelihood.check_num_draws(np.int64(3)) == 3
    sample_evaluation._check_options(np.int64(2), np.int64(3))
    for bad in (np.True_, np.float64(3.0)):
        with pytest.raises(ValueError, match="x_dim must be a positive integer"):
            ConditionalVAE(bad, 2)


@pytest.mark.parametrize("likelihood", [likelihoods.Gaussian, likelihoods.Laplace])
@pytest.mark.parametrize("scale, rounded", [(1e-50, "0.0"), (1e39, "inf")])
def test_a_fixed_scale_that_float32_cannot_hold_is_refused(likelihood: type, scale: float, rounded: str) -> None:
    with pytest.raises(ValueError, match=f"scale must be a positive finite float .* which is {rounded} in float32"):
        likelihood(scale=scale)
    assert likelihood(scale=1e-30).scale == 1e-30
