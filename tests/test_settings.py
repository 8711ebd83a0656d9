"""One declaration of the training settings (cvae.settings): fit takes every one, the run configuration of the
paper's experiment takes them whole, and the two named sets of values are sets of that one declaration."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import numpy as np
import pytest
import torch

from cvae import ConditionalVAE, fit, fitting, settings
from cvae.paper.config import RUN_NAMES, RunConfig, add_run_options, given_options
from cvae.settings import NAMED, TrainingSettings

# one value of each setting other than the default, that fit accepts for a ConditionalVAE with a Gaussian prior
OTHER_VALUES = {"epochs": 2, "patience": 4, "batch_size": 16, "lr": 0.002, "weight_decay": 1e-4, "seed": 3,
                "objective": "elbo",
                "alpha": 0.25, "iw_samples": 3, "lr_decay": 0.9, "kl_warmup": 1, "lr_halving": 1, "precision": "bf16",
                "sample_targets": True, "free_bits": 0.1, "aux_weight": 0.0}


def test_every_setting_is_a_keyword_of_fit_with_fits_default():
    parameters = inspect.signature(fit).parameters
    defaults = TrainingSettings.named("anti_collapse")
    for name in settings.NAMES:
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[name].default == getattr(defaults, name)
    assert set(OTHER_VALUES) == set(settings.NAMES)


def test_every_setting_given_to_fit_reaches_the_training_loop(monkeypatch):
    seen = {}

    def loop(model, train, val, settings, *args, **kwargs):
        seen["settings"] = settings
        return []

    monkeypatch.setattr(fitting, "train_loop", loop)
    model = ConditionalVAE(2, 3, z_dim=2, hidden=(4,), prior_components=1)
    x, y = torch.rand(20, 2), torch.rand(20, 3)
    fit(model, (x, y), (x, y), progress=False, **OTHER_VALUES)
    assert seen["settings"] == TrainingSettings(**OTHER_VALUES)
    fit(model, (x, y), (x, y), progress=False, settings=TrainingSettings(), epochs=7)
    assert seen["settings"] == TrainingSettings(epochs=7)  # the paper's set-up, then the keyword


def test_the_named_sets_are_values_of_the_one_declaration():
    assert TrainingSettings.named("paper") == TrainingSettings()
    assert dataclasses.asdict(TrainingSettings.named("anti_collapse")) == settings.DEFAULTS | NAMED["anti_collapse"]
    with pytest.raises(ValueError, match="no settings named 'fast'"):
        TrainingSettings.named("fast")


def test_the_run_configuration_takes_every_setting_whole():
    run_names = {RUN_NAMES.get(name, name): name for name in settings.NAMES}
    assert set(RunConfig().section("training")) == set(run_names)
    for run_name, name in run_names.items():
        assert getattr(RunConfig(), run_name) == settings.DEFAULTS[name]
    # the command line: each setting is an option, parsed and checked by its declaration
    parser = argparse.ArgumentParser()
    add_run_options(parser)
    argv = ["--free-bits", "0.5", "--lr-halving", "2", "--train-precision", "bf16", "--kl-warmup", "1"]
    config = RunConfig.from_options(given_options(parser.parse_args(argv)))
    assert config.training_settings() == TrainingSettings(free_bits=0.5, lr_halving=2, precision="bf16", kl_warmup=1)
    with pytest.raises(SystemExit):
        parser.parse_args(["--lr-halving", "-1"])


def test_the_elbos_older_name_still_loads():
    assert RunConfig.from_dict(RunConfig().to_dict() | {"objective": "cvae"}).objective == "elbo"
    assert TrainingSettings.from_dict({"objective": "cvae"}).objective == "elbo"
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainingSettings(objective="cvae")


@pytest.mark.parametrize(("values", "message"), [
    ({"epochs": 0}, "epochs must be an integer of at least 1"),
    ({"lr": float("inf")}, "lr must be a positive finite number"),
    ({"free_bits": 1e39}, "free_bits must be a number >= 0 and at most 1e6"),
    ({"precision": "half"}, "precision must be one of 'auto', 'fp32', 'bf16'"),
    ({"sample_targets": 1}, "sample_targets must be True or False"),
    ({"objective": "iwae", "free_bits": 0.1}, "change the ELBO objective"),
])
def test_each_setting_is_checked_by_its_declaration(values, message):
    with pytest.raises(ValueError, match=message):
        TrainingSettings(**values)


def test_numpy_numbers_are_taken_as_the_numbers_they_are():
    chosen = TrainingSettings(epochs=np.int64(5), lr=np.float32(0.5))
    assert chosen.epochs == 5 and type(chosen.epochs) is int and type(chosen.lr) is float


def test_the_weight_decay_reaches_adam(monkeypatch):
    made = []
    adam = torch.optim.Adam

    def recorded(parameters, **options):
        made.append(options)
        return adam(parameters, **options)

    monkeypatch.setattr(torch.optim, "Adam", recorded)
    model = ConditionalVAE(2, 3, z_dim=2, hidden=(4,))
    x, y = torch.rand(20, 2), torch.rand(20, 3)
    fit(model, (x, y), (x, y), progress=False, epochs=1, kl_warmup=0, weight_decay=0.01)
    assert made[-1]["weight_decay"] == 0.01
