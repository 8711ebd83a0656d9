"""One model record: every model class saves its constructor arguments and weights in one format and loads back as
the class that saved it, bit for bit; checkpoints of the earlier formats (tests/fixtures/legacy, written by the
version before the record) still load, and an old run directory still evaluates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import invoke, load_script
from torch import nn

from cvae import CVAE, BaselineNet, ConditionalVAE, QuadrantTask, Regressor, checkpoints, likelihoods, records
from cvae.checkpoints import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")
LEGACY = Path(__file__).parent / "fixtures" / "legacy"


def perturbed(model: nn.Module, seed: int) -> nn.Module:
    """Weights away from their initial values (the autoregressive term starts at 0), so that a load that kept the
    initial weights would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    baseline = perturbed(Regressor(3, 2, hidden=(8,), likelihood=likelihoods.Bernoulli()), 1)
    paper_baseline = perturbed(BaselineNet(2, hidden=(8,)), 3)
    return {
        "ConditionalVAE": perturbed(ConditionalVAE(3, 2, z_dim=2, hidden=(8, 8)), 0),
        "ConditionalVAE with a Regressor baseline": perturbed(ConditionalVAE(
            3, 2, z_dim=2, hidden=(8,), likelihood=likelihoods.ContinuousBernoulli(), baseline=baseline), 2),
        "Regressor": baseline,
        "BaselineNet with an autoregressive term": perturbed(BaselineNet(3, hidden=(8,), autoregressive=True,
                                                                         ar_window=3), 4),
        "CVAE": perturbed(CVAE(paper_baseline, z_dim=3, hidden=(8,), autoregressive=True, ar_window=5), 5),
    }


def same_state(a: nn.Module, b: nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[key], right[key]) for key in left)


@pytest.mark.parametrize("name", list(models()))
def test_every_model_class_round_trips_as_the_class_that_saved_it(tmp_path, name):
    model = models()[name]
    path = tmp_path / "model.pt"
    model.save(path)
    for loader in (type(model).load, records.load, records.Recorded.load):
        loaded = loader(path)
        assert type(loaded) is type(model) and loaded is not model
        assert loaded.record() == model.record()
        assert same_state(loaded, model)
    saved = torch.load(path, weights_only=True)  # plain data: the record and the weights
    assert set(saved) == {"model", "state_dict"} and saved["model"]["class"].endswith(type(model).__name__)


def test_a_paper_cvae_loads_through_the_general_class_as_what_it_is(tmp_path):
    model = models()["CVAE"]
    model.save(tmp_path / "cvae.pt")
    loaded = ConditionalVAE.load(tmp_path / "cvae.pt")
    assert type(loaded) is CVAE and loaded.task.num_quadrants == 2 and loaded.autoregression.window == 5
    x, y = QuadrantTask(2).split(torch.rand(4, 784, generator=torch.Generator().manual_seed(0)))
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.log_likelihood(x, y, z), model.log_likelihood(x, y, z))


@pytest.mark.parametrize(("saved", "loader", "holds"), [
    ("Regressor", ConditionalVAE, "holds a Regressor (cvae.regressor.Regressor), not a ConditionalVAE"),
    ("CVAE", Regressor, "holds a CVAE (cvae.paper.models.CVAE), not a Regressor: load it with CVAE.load"),
    ("ConditionalVAE", CVAE, "holds a ConditionalVAE"),
    ("BaselineNet with an autoregressive term", CVAE, "holds a BaselineNet"),
])
def test_loading_as_another_class_names_the_file_and_what_it_holds(tmp_path, saved, loader, holds):
    path = tmp_path / "model.pt"
    models()[saved].save(path)
    with pytest.raises(CheckpointError) as error:
        loader.load(path)
    assert str(path) in str(error.value) and holds in str(error.value)


@pytest.mark.parametrize(("name", "problem"), [
    ("os.system", "not one of this package"), ("cvae.checkpoints.CheckpointError", "not a model class"),
    ("cvae.conditional_vae.NoSuchModel", "does not have"), (None, "not one of this package"),
])
def test_a_record_names_only_model_classes_of_the_package(tmp_path, name, problem):
    path = tmp_path / "model.pt"
    checkpoints.save({"model": {"class": name, "args": {}}, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=problem):
        records.load(path)


def test_a_record_whose_weights_do_not_fit_it_is_refused(tmp_path):
    model = models()["ConditionalVAE"]
    checkpoint = model.checkpoint()
    checkpoint["model"]["args"]["z_dim"] = 5
    checkpoints.save(checkpoint, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="does not hold the weights of the model it records"):
        ConditionalVAE.load(tmp_path / "model.pt")


# ----------------------------------------------------------------------------- checkpoints of the earlier format
def test_the_library_checkpoints_of_the_earlier_format_load_bit_identically():
    expected = torch.load(LEGACY / "expected.pt", weights_only=True)
    assert "kind" in torch.load(LEGACY / "conditional_vae.pt", weights_only=True)  # the fixture is the old format
    model = ConditionalVAE.load(LEGACY / "conditional_vae.pt")
    assert type(model) is ConditionalVAE and type(model.baseline) is Regressor
    assert model.likelihood == likelihoods.ContinuousBernoulli()
    regressor = records.load(LEGACY / "regressor.pt")
    assert type(regressor) is Regressor
    with torch.no_grad():
        assert torch.equal(model.log_likelihood(expected["x"], expected["y"], expected["z"]),
                           expected["cvae_log_likelihood"])
        assert torch.equal(regressor.log_likelihood(expected["x"], expected["y"]), expected["regressor_log_likelihood"])


def test_the_papers_checkpoints_of_the_earlier_format_load_bit_identically():
    expected = torch.load(LEGACY / "expected.pt", weights_only=True)
    baseline, cvae = BaselineNet.load(LEGACY / "run/q2/baseline.pt"), CVAE.load(LEGACY / "run/q2/cvae.pt")
    x, y, z = expected["paper_x"], expected["paper_y"], expected["paper_z"]
    with torch.no_grad():
        assert torch.equal(baseline.log_likelihood(x, y), expected["baseline_log_likelihood"])
        assert torch.equal(cvae.log_likelihood(x, y, z), expected["paper_cvae_log_likelihood"])
    with pytest.raises(CheckpointError, match="holds a BaselineNet"):
        CVAE.load(LEGACY / "run/q2/baseline.pt")


def test_a_run_directory_of_the_earlier_format_still_evaluates(mnist_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(LEGACY / "run", run)
    status, err = invoke(load_script("evaluate").main, [str(run), "--num-samples", "2", "--sample-k", "0",
                                                        "--data-dir", str(mnist_dir), "--device", "cpu",
                                                        "--precision", "fp32", "--no-progress"])
    assert status == 0, err
    assert (run / "results.json").is_file() and (run / "q2" / "per_image.pt").is_file()
    assert type(CVAE.from_run(run, quadrants=2)) is CVAE
