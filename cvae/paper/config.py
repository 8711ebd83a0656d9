"""The run configuration: every option of a run, declared once, with the paper's defaults.

The experiment's own options (``ExperimentOptions``: the task, the model, the data, the evaluation) are declared here
with ``option(...)``: default, section, help, how train's command line parses it and how a saved value is checked.
The training options are the library's training settings (``cvae.settings.TrainingSettings``, declared there once),
taken whole as the training section. From these declarations come train's parser (``add_run_options``), the checks
of a saved configuration (``RunConfig.from_dict``: config.json is read back by evaluate, --resume, --config,
convergence and table, and may have been edited), ``to_dict`` and the settings the training loop gets
(``training_settings``). Adding an experiment option is one ``option(...)`` line, a training option its
``setting(...)`` line in cvae.settings, each with the code that uses it.

Torch-free, so that train --help starts without torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvae import settings
from cvae.settings import TrainingSettings

from . import cli
from .choices import DATASETS, MAX_AR_WINDOW, PIXEL_LIKELIHOODS

SECTIONS = ("model", "training", "evaluation", "data")
_REQUIRED = object()  # Option.legacy of the options every saved configuration has

# Named sets of defaults (train --preset); options given beside a preset override its values.
PRESETS: dict[str, dict] = {
    "paper": {},  # the RunConfig defaults: the paper's set-up
    "strong": {"autoregressive": True},  # docs/strong.md
}


@dataclass(frozen=True)
class Option:
    """How one run option is given on train's command line and checked in a saved configuration (the field's name
    and default are the option's; ``option`` declares both)."""

    section: str  # one of SECTIONS; the "training" options are the library's training settings
    help: str
    check: Callable[[object], str | None]  # a saved value -> None, or what was expected instead
    parse: Callable[[str], Any] | None = None  # a command-line value -> the option's (None: a flag, or choices)
    choices: tuple[str, ...] | None = None
    many: bool = False  # one or more command-line values, kept once each in increasing order
    metavar: str | None = None
    default_text: str | None = None  # the default as --help shows it (None: the default itself)
    legacy: Any = _REQUIRED  # the value of the saved configurations written before the option existed
    on_resume: bool = False  # may be given with --resume: it replaces the saved value (where, not what)


def option(default: Any, section: str, help: str, check: Callable[[object], str | None] | None = None,
           **how: Any) -> Any:
    """A RunConfig field: its default and its Option (the rest of Option's fields as keywords). A flag's check
    (a bool default) and a choice's (choices=...) are implied."""
    if section not in SECTIONS:
        raise ValueError(f"section {section!r} is not one of {SECTIONS}")
    if check is None:
        check = _boolean if isinstance(default, bool) else _one_of(how["choices"])
    metadata = {"option": Option(section, help, check, **how)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(minimum: int, maximum: float = math.inf, what: str = "") -> Callable[[object], str | None]:
    expected = what or ("a positive integer" if minimum == 1 else f"an integer from {minimum}")
    return lambda value: None if _is_int(value) and minimum <= value <= maximum else expected


def _real(accept: Callable[[float], bool], expected: str) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return None if number and accept(float(value)) else f"a number {expected}"
    return check


def _one_of(names: tuple | dict) -> Callable[[object], str | None]:
    return lambda value: None if isinstance(value, str) and value in names else \
        f"one of {', '.join(map(repr, names))}"


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _quadrants(value: object) -> str | None:
    if not isinstance(value, list) or not value:
        return "a non-empty list of input quadrant settings, e.g. [1, 2, 3]"
    if not all(_is_int(k) and k in (1, 2, 3) for k in value):
        return "a list of the settings 1, 2 or 3 (input quadrants), e.g. [1, 2, 3]"
    if len(set(value)) != len(value):
        return "each setting once (one appears twice), e.g. [1, 2, 3]"
    return None


def _hidden(value: object) -> str | None:
    ok = isinstance(value, list) and value and all(_is_int(width) and width > 0 for width in value)
    return None if ok else "a non-empty list of positive integers (hidden layer widths), e.g. [500, 500]"


def _window(value: object) -> str | None:
    ok = _is_int(value) and (value == 0 or (0 < value <= MAX_AR_WINDOW and value % 2 == 1))
    return None if ok else f"an odd window width up to {MAX_AR_WINDOW}, or 0 (every earlier pixel)"


def _directory(value: object) -> str | None:
    return None if isinstance(value, str) and value else "a non-empty string (the data directory)"


def _subset(value: object) -> str | None:
    return None if value is None or (_is_int(value) and value > 0) else "null (all images) or a positive integer"


@dataclass
class ExperimentOptions:
    """The options of a run that are the experiment's own (the task, the model, the data, the evaluation); RunConfig
    adds the library's training settings to them. The defaults reproduce the paper / Pyro tutorial set-up: MLPs
    500-500, z of 200."""

    quadrants: list[int] = option(
        [1, 2, 3], "data", "input quadrant settings to run", _quadrants, parse=cli.quadrants, many=True, metavar="K")
    z_dim: int = option(
        200, "model", "dimension of the latent variable z", _integer(1), parse=cli.positive_int("--z-dim"))
    hidden: list[int] = option(
        [500, 500], "model", "hidden layer widths of every network, e.g. 500,500", _hidden, parse=cli.hidden_sizes)
    autoregressive: bool = option(
        False, "model", "add an autoregressive term (a masked linear layer over the earlier pixels) to the "
        "generation net's logits (docs/strong.md); the paper's decoder has none", legacy=False)
    ar_window: int = option(
        0, "model", "with --autoregressive: only the earlier pixels in a square of this odd width around each "
        "pixel (0: every earlier pixel)", _window, parse=cli.odd_window("--ar-window"), legacy=0)
    preset: str = option(
        "paper", "model", "named defaults: paper (the paper's set-up) or strong (docs/strong.md); "
        "options given beside it override its values", choices=tuple(PRESETS), legacy="paper")
    likelihood: str = option(
        "bernoulli", "model", "of the output pixels: bernoulli (the paper's; a true log-likelihood only with "
        "--binarize) or continuous-bernoulli (a normalized density on [0, 1] for grayscale pixels)",
        choices=PIXEL_LIKELIHOODS, legacy="bernoulli")
    dataset: str = option("mnist", "data", "the images", choices=DATASETS)
    binarize: bool = option(
        False, "data", "binarize the targets at 0.5 (--no-binarize: grayscale targets, as the tutorial)")
    data_dir: str = option(
        "data", "data", "where the data set is, or is downloaded to", _directory, parse=str, on_resume=True)
    train_subset: int | None = option(
        None, "data", "train on the first N training images only (smoke runs)", _subset,
        parse=cli.positive_int("--train-subset"), metavar="N", default_text="every image")
    num_samples: int = option(
        100, "evaluation", "S, samples of z per test image", _integer(1), parse=cli.positive_int("--num-samples"))

    def to_dict(self) -> dict:
        """Every option by name, as config.json stores it (flat, JSON values)."""
        return dataclasses.asdict(self)

    def section(self, name: str) -> dict[str, Any]:
        """The options of one section (SECTIONS) by name."""
        return {f.name: getattr(self, f.name) for f in _fields() if _option(f).section == name}

    def training_settings(self) -> TrainingSettings:
        """The library's training settings of this run (its training section), as ``cvae.fit`` would take them."""
        return TrainingSettings(**{name: getattr(self, RUN_NAMES.get(name, name)) for name in settings.NAMES})

    @classmethod
    def from_dict(cls, values: object) -> RunConfig:
        """The configuration a dict (a saved config.json's "config") describes, after checking every value's type,
        range and name: a ValueError names the key and says what was wrong and what was expected. Unknown keys are
        refused, and so are missing ones, except those of LEGACY_DEFAULTS, which runs made before they existed
        lack (they take the value those runs were made with). Options that contradict each other are refused for a
        new run (``from_options``) and a run's training resumed (``check_together``), not where a saved run is only
        read: a run an earlier version made with them still evaluates."""
        if not isinstance(values, dict):
            raise ValueError(f"the configuration is {_shown(values)}, expected an object of settings such as "
                             '{"quadrants": [1, 2, 3], "epochs": 50, ...}')
        names = [f.name for f in _fields()]
        unknown = [key for key in values if key not in names]
        if unknown:
            raise ValueError(f"unknown key {_keys(unknown)} in the configuration: this version knows "
                             f"{', '.join(names)} (a newer version wrote it, or it was edited)")
        missing = [key for key in names if key not in values and key not in LEGACY_DEFAULTS]
        if missing:
            raise ValueError(f"key {_keys(missing)} missing from the configuration: every run of this program "
                             "records it")
        if values.get("objective") in settings.LEGACY_OBJECTIVES:  # the ELBO's older name
            values = values | {"objective": settings.LEGACY_OBJECTIVES[values["objective"]]}
        checked = {}
        for f in _fields():
            value = values.get(f.name, LEGACY_DEFAULTS.get(f.name))
            problem = _option(f).check(value)
            if problem:
                raise ValueError(f'"{f.name}" is {_shown(value)}, expected {problem}')
            checked[f.name] = float(value) if isinstance(f.default, float) else \
                list(value) if isinstance(value, list) else value
        config = cls(**checked)
        config.training_settings()  # ValueError for settings that do not go together (cvae.settings)
        return config

    @classmethod
    def from_options(cls, given: dict[str, Any], start: dict | None = None) -> RunConfig:
        """The configuration of a new run: the defaults, then the preset's (the one given, else start's, else
        paper), then start (the options of train --config, checked like a saved configuration), then the options
        given on the command line (``given_options``). A ValueError as from_dict's for a wrong value in start."""
        start = dict(start or {})
        preset = start.get("preset", "paper")
        values = RunConfig().to_dict() | (PRESETS.get(preset, {}) if isinstance(preset, str) else {}) | start
        if "preset" in given:  # given beside --config, the preset's values too override the file's
            values |= PRESETS[given["preset"]]
        config = cls.from_dict(values | given)
        config.check_together()
        return config

    def check_together(self) -> None:
        """An OptionClash for the first pair of options that contradict each other (each checked alone already)."""
        _check_together(self)

    @property
    def protocol(self) -> str:
        return "binarized" if self.binarize else "grayscale"


class OptionClash(ValueError):
    """Options of a run that do not go together: str() names them as a saved configuration does ("ar_window" is 5
    but "autoregressive" is false), ``flags`` as train's command line does (--ar-window 5 needs --autoregressive)."""

    def __init__(self, keys: str, flags: str):
        super().__init__(keys)
        self.flags = flags


def _check_together(config: ExperimentOptions) -> None:
    """An OptionClash for the first pair of options that contradict each other, each checked alone already."""
    if config.ar_window and not config.autoregressive:
        raise OptionClash(
            f'"ar_window" is {config.ar_window} but "autoregressive" is false: the window is that of the '
            'autoregressive term, which the model has only with "autoregressive" true',
            f"--ar-window {config.ar_window} needs --autoregressive: the window is that of the autoregressive term, "
            "which the model has only with --autoregressive. Give --autoregressive too, or --ar-window 0")
    if config.aux_weight and not config.autoregressive:
        raise OptionClash(
            f'"aux_weight" is {config.aux_weight:g} but "autoregressive" is false: without the autoregressive term '
            "the auxiliary loss is the reconstruction term itself",
            "--aux-weight needs --autoregressive: without the term the auxiliary loss is the reconstruction term "
            "itself. Give --autoregressive too, or --aux-weight 0")
    if config.kl_warmup and config.kl_warmup >= config.epochs:
        raise OptionClash(
            f'"kl_warmup" is {config.kl_warmup}, not below "epochs" {config.epochs}: the KL term\'s weight rises '
            'from 0 to 1 over the first "kl_warmup" epochs, so no epoch would train the whole objective (and early '
            "stopping counts from the warm-up's end)",
            f"--kl-warmup {config.kl_warmup} is not below --epochs {config.epochs}: the KL term's weight rises from 0 "
            "to 1 over the first --kl-warmup epochs, so no epoch would train the whole objective (and early stopping "
            "counts from the warm-up's end). Give a --kl-warmup below --epochs, or more --epochs")
    if config.likelihood == "continuous-bernoulli":
        for name, what in (("binarize", "binarized targets"), ("sample_targets", "binary targets drawn afresh")):
            if getattr(config, name):
                raise OptionClash(
                    f'"likelihood" is \'continuous-bernoulli\' with "{name}" true: the continuous Bernoulli is a '
                    f"density of gray levels in [0, 1], not the likelihood of {what} (the Bernoulli is)",
                    f"--likelihood continuous-bernoulli with {flag(name)}: the continuous Bernoulli is a density of "
                    f"gray levels in [0, 1], not the likelihood of {what} (the Bernoulli is). Give --likelihood "
                    f"bernoulli, or --no-{flag(name)[2:]}")


def flag(name: str) -> str:
    """The command-line flag of an option: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


# The training settings whose run option has another name: --precision chooses the evaluation's arithmetic.
RUN_NAMES = {"precision": "train_precision"}
FIRST_VERSION = ("epochs", "patience", "batch_size", "lr", "seed")  # the training options every saved run has
# Command-line parsers whose messages explain a limit; every other training option is parsed from its declaration.
PARSERS = {"epochs": cli.epochs, "seed": cli.seed}


def _training_option(f: dataclasses.Field) -> tuple[str, type, dataclasses.Field]:
    """A training setting of the library (cvae.settings) as a run option of the training section."""
    name, declared = RUN_NAMES.get(f.name, f.name), settings.SETTINGS[f.name]
    parse = None if isinstance(f.default, bool) or declared.choices else \
        PARSERS.get(name) or cli.checked(flag(name), type(f.default), declared.check)
    legacy = _REQUIRED if name in FIRST_VERSION else f.default  # a run made before it existed: the default
    return name, type(f.default), option(f.default, "training", declared.help, declared.check, parse=parse,
                                         choices=declared.choices, legacy=legacy)


# Every option of a run: the experiment's, then the library's training settings (flat, as config.json stores them).
RunConfig = dataclasses.make_dataclass("RunConfig", [_training_option(f) for f in settings.FIELDS],
                                       bases=(ExperimentOptions,))
RunConfig.__doc__ = """Every option of a run: the experiment's (ExperimentOptions) and the library's training settings
(cvae.settings.TrainingSettings, in the training section; ``training_settings`` gives them back as such). The defaults
reproduce the paper / Pyro tutorial set-up: MLPs 500-500, z of 200, Adam 1e-3, batch 128, at most 50 epochs with
early stopping (patience 3) on the validation loss."""


def _fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(RunConfig)


def _option(f: dataclasses.Field) -> Option:
    return f.metadata["option"]


# The options added after the first version, with the value the runs made before them were made with: a saved
# configuration may lack these (and only these).
LEGACY_DEFAULTS: dict[str, Any] = {f.name: _option(f).legacy for f in _fields() if _option(f).legacy is not _REQUIRED}
# The options --resume accepts beside it: where things are, not what the run is (it replaces the saved value).
RESUME_OPTIONS = frozenset(f.name for f in _fields() if _option(f).on_resume)


def in_flags(message: str) -> str:
    """A message of the library's that names settings as Python does (free_bits, objective='elbo') in train's
    words (--free-bits, --objective elbo)."""
    names = "|".join(RUN_NAMES.get(name, name) for name in settings.NAMES)
    message = re.sub(rf"\b({names})=(?:'([^']*)'|(\S+?))(?=[\s,.:;)]|$)",
                     lambda m: f"{flag(m.group(1))} {m.group(2) if m.group(2) is not None else m.group(3)}", message)
    return re.sub(rf"(?<![-\w])({names})\b", lambda m: flag(m.group(1)) if "_" in m.group(1) else m.group(1), message)


def _default_text(f: dataclasses.Field, how: Option) -> str:
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if how.default_text is not None:
        return how.default_text
    if isinstance(default, bool):
        return flag(f.name) if default else f"--no-{flag(f.name)[2:]}"
    if isinstance(default, list):
        return (" " if how.many else ",").join(map(str, default))
    return str(default)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Every run option as a command-line option of parser, in one argument group per section, with its default
    in its help. An option not given is absent from the parsed namespace (``given_options``), so that the
    defaults, a preset and a --config file can be layered under the options given (``RunConfig.from_options``)."""
    groups = {section: parser.add_argument_group(f"{section} options") for section in SECTIONS}
    for f in _fields():
        how = _option(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "metavar": how.metavar,
                                  "help": f"{how.help} (default: {_default_text(f, how)})".replace("%", "%%")}
        if isinstance(f.default, bool):
            kwargs |= {"action": argparse.BooleanOptionalAction, "metavar": None}
        elif how.choices is not None:
            kwargs |= {"choices": how.choices}
        else:
            kwargs |= {"type": how.parse, "nargs": "+" if how.many else None}
        groups[how.section].add_argument(flag(f.name), **kwargs)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run options given on the command line (parsed by a parser of ``add_run_options``), by name."""
    given = {f.name: getattr(args, f.name) for f in _fields() if hasattr(args, f.name)}
    for f in _fields():
        if f.name in given and _option(f).many:
            given[f.name] = sorted(set(given[f.name]))
    return given


def _shown(value: object) -> str:
    text = "null" if value is None else repr(value) if isinstance(value, str | bool | int | float) else \
        f"a {type(value).__name__} {value!r}"
    return text if len(text) <= 80 else text[:80] + "..."


def _keys(keys: list[str]) -> str:
    return ", ".join(f'"{key}"' for key in keys)


def read_run_config(path: str | Path) -> dict:
    """A run's config.json, checked: an object whose "config" passes RunConfig.from_dict, whose "finished" and
    "keep_state" (if there) are true or false and whose "distributed" (if there) is an object with a positive
    "world_size". Returns the saved dict; RunFileError (one paragraph naming the file, the key and the problem)
    otherwise. OSError (missing, unreadable) goes through."""
    from cvae.checkpoints import RunFileError, read_json  # torch: only once a command runs

    path = Path(path)
    remedy = "Restore the file from a copy of the run, or start a new run with train.py --out."
    saved = read_json(path, "config.json", remedy)

    def refuse(problem: str) -> RunFileError:
        return RunFileError(f"{path} {problem}; it was not written by train.py, or it was edited. Restore the value "
                            "train.py wrote (or the file from a copy of the run), or start a new run with --out.")

    if not isinstance(saved, dict):
        raise refuse(f"holds {_shown(saved)}, expected an object with the run's \"config\"")
    if "config" not in saved:
        raise refuse(f'has no "config" (its keys: {_keys(list(saved)) or "none"})')
    try:
        RunConfig.from_dict(saved["config"])
    except ValueError as error:
        raise refuse(f'is wrong in its "config": {error}') from None
    for key in ("finished", "keep_state"):
        if key in saved and not isinstance(saved[key], bool):
            raise refuse(f'has "{key}" {_shown(saved[key])}, expected true or false')
    if "distributed" in saved:
        spread = saved["distributed"]
        if not isinstance(spread, dict):
            raise refuse(f'has "distributed" {_shown(spread)}, expected an object such as {{"world_size": 1}}')
        if "world_size" in spread and not (_is_int(spread["world_size"]) and spread["world_size"] > 0):
            raise refuse(f'has "distributed": "world_size" {_shown(spread["world_size"])}, expected a positive '
                         "integer (the number of processes)")
    return saved


def environment() -> dict:
    """Library versions and machine, recorded beside the configuration of every run."""
    import numpy
    import torch

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
