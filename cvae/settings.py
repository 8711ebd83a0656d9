"""How a model is trained: every training setting declared once, with its default, its check and its help.

    settings = TrainingSettings(epochs=20, kl_warmup=5)          # checked on construction (ValueError)
    settings = TrainingSettings.named("anti_collapse", lr=3e-4)  # a named set of values, and overrides

``fit`` takes every field as a keyword argument, the paper's ``train`` command as a command-line option (its
training section, ``cvae.paper.config``), a run's config.json stores them by name, and the training loop
(``cvae.training``) reads them. Adding a setting is its ``setting(...)`` line here and the code that uses it.

The declared defaults are the paper's set-up (Sohn et al. 2015; the Pyro tutorial's optimizer). ``NAMED`` holds the
other set, ``anti_collapse``: the library's defaults for ``fit``, which keep the latent in use where y has several
answers for one x (docs/library.md measures each).

Torch-free, so that a command's --help imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

OBJECTIVES = ("elbo", "gsnn", "hybrid", "iwae")  # what a CVAE is trained on (cvae.objectives.training_loss)
LEGACY_OBJECTIVES = {"cvae": "elbo"}  # names older versions wrote for an objective
PRECISIONS = ("auto", "fp32", "bf16")  # the networks' matrix products (cvae.precision): a choice, or auto
# The largest seed: every seed derived from it (seed * 10 + k + 5 for the initial weights, seed * 1_000_003 + epoch
# for the order of an epoch, seed + rank * 1_000_003 for a process's noise) stays far inside the 64-bit range of
# torch's generators.
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 1_000_000  # below the stride of the data-order seeds (seed * 1_000_003 + epoch, cvae.training)
UP_TO_MAX_EPOCHS = f"an integer of at least 0 and at most {MAX_EPOCHS}"
# float32's range of normal numbers: the networks, their optimizer and their losses compute in float32 (or less), and
# the commands flush smaller numbers to zero (cvae.paper.cli.start_torch)
FLOAT32_TINY, FLOAT32_MAX = 2.0 ** -126, (2 - 2.0 ** -23) * 2.0 ** 127


@dataclass(frozen=True)
class Setting:
    """What a field of TrainingSettings means and which values it takes (``setting`` declares both)."""

    help: str
    check: Callable[[object], str | None]  # a value -> None, or what was expected instead
    choices: tuple[str, ...] | None = None


def setting(default: Any, help: str, check: Callable[[object], str | None] | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """A TrainingSettings field: its default and its Setting. A flag's check (a bool default) and a choice's
    (choices=...) are implied."""
    if check is None:
        check = _boolean if isinstance(default, bool) else _one_of(choices)
    return field(default=default, metadata={"setting": Setting(help, check, choices)})


def is_integer(value: object) -> bool:
    """An int (numpy's integers included, which are numbers.Integral), not a bool (Python's or numpy's)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or a float (numpy's included), not a bool."""
    return not isinstance(value, bool) and (is_integer(value) or isinstance(value, float)
                                            or type(value).__name__.startswith("float"))


def integer(minimum: int, maximum: float = math.inf, expected: str = "") -> Callable[[object], str | None]:
    """A check: an integer from minimum to maximum; ``expected`` says so (by default "an integer of at least N")."""
    expected = expected or f"an integer of at least {minimum}"
    return lambda value: None if is_integer(value) and minimum <= int(value) <= maximum else expected


def real(accept: Callable[[float], bool], expected: str) -> Callable[[object], str | None]:
    """A check: a finite number that ``accept`` takes; ``expected`` says which."""
    def check(value: object) -> str | None:
        return None if is_number(value) and math.isfinite(float(value)) and accept(float(value)) else expected
    return check


def _one_of(names: tuple[str, ...] | None) -> Callable[[object], str | None]:
    return lambda value: None if isinstance(value, str) and value in (names or ()) else \
        f"one of {', '.join(map(repr, names or ()))}"


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else "True or False"


@dataclass(frozen=True)
class TrainingSettings:
    """Every setting of a training run: the optimizer, early stopping, the objective and its remedies against an
    unused latent, the arithmetic. Defaults: the paper's set-up."""

    epochs: int = setting(50, "at most this many epochs",
                          integer(1, MAX_EPOCHS, f"an integer of at least 1 and at most {MAX_EPOCHS}"))
    patience: int = setting(3, "epochs without improvement of the validation loss before stopping",
                            integer(1, MAX_EPOCHS, f"an integer of at least 1 and at most {MAX_EPOCHS}"))
    batch_size: int = setting(128, "examples per step (under torchrun: the global batch, shared by the processes)",
                              integer(1))
    lr: float = setting(1e-3, "Adam's learning rate", real(
        lambda v: FLOAT32_TINY <= v <= FLOAT32_MAX, "a positive finite number that float32 holds (from 1.2e-38 to "
        "3.4e38), e.g. 1e-3"))
    weight_decay: float = setting(0.0, "Adam's L2 penalty on the weights (0: none, the paper's)",
                                  real(lambda v: 0 <= v <= 1, "a number from 0 to 1, e.g. 1e-5"))
    seed: int = setting(0, "of the initial weights, the data order and the noise",
                        integer(0, MAX_SEED, f"an integer of at least 0 and at most {MAX_SEED}"))
    objective: str = setting(
        "elbo", "the CVAE's training objective: elbo (eq. 4), gsnn (eq. 9), hybrid (eq. 10) or iwae (the "
        "importance-weighted bound, Burda et al. 2016); a Regressor is trained on its exact likelihood",
        choices=OBJECTIVES)
    alpha: float = setting(0.5, "weight of the ELBO in the hybrid objective",
                           real(lambda v: 0 <= v <= 1, "a number from 0 to 1, e.g. 0.5"))
    iw_samples: int = setting(5, "samples of z per example in the iwae objective",
                              integer(1))
    lr_decay: float = setting(1.0, "the learning rate of epoch e (from 0) is lr * lr_decay ** e (1: constant)",
                              real(lambda v: FLOAT32_TINY <= v <= 1, "a number above 0 and at most 1 (at least "
                                   "1.2e-38, float32's smallest normal number), e.g. 0.95"))
    kl_warmup: int = setting(
        0, "epochs over which the KL term's weight rises linearly from 0 to 1 (Bowman et al. 2016; 0: always 1, the "
        "paper's); patience counts from its end", integer(0, MAX_EPOCHS, UP_TO_MAX_EPOCHS))
    lr_halving: int = setting(
        0, "after the KL warm-up, halve the learning rate after every this many epochs without a new best validation "
        "loss (0: never)", integer(0, MAX_EPOCHS, UP_TO_MAX_EPOCHS))
    precision: str = setting(
        "fp32", "the arithmetic of the networks' matrix products in training: fp32, bf16 (autocast; the losses stay "
        "float32), or auto (bf16 where the hardware multiplies it natively and fast, cvae.precision)",
        choices=PRECISIONS)
    sample_targets: bool = setting(
        False, "train the CVAE on binary targets b ~ Bernoulli(y), drawn afresh for every batch (dynamic "
        "binarization: its objective is then the true likelihood of binarized outputs); a baseline stays on y")
    free_bits: float = setting(
        0.0, "free bits (Kingma et al. 2016): nats of KL per latent dimension that cost the same as none (0: off, "
        "the ELBO)", real(lambda v: 0 <= v <= 1e6, "a number >= 0 and at most 1e6, e.g. 0.1"))
    aux_weight: float = setting(
        0.0, "with an autoregressive term: weight of an auxiliary loss, -log p(y|x,z) of the generation net without "
        "the term (after Zhao et al. 2017; 0: off)",
        real(lambda v: 0 <= v <= 1e6, "a number >= 0 and at most 1e6, e.g. 1"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = _setting(f).check(value)
            if problem:
                raise ValueError(f"{f.name} must be {problem}, got {value!r}")
            if isinstance(f.default, float) and not isinstance(value, float):  # 1 -> 1.0, numpy's -> Python's
                object.__setattr__(self, f.name, float(value))
            elif isinstance(f.default, int) and not isinstance(f.default, bool) and type(value) is not int:
                object.__setattr__(self, f.name, int(value))
        if (self.free_bits or self.aux_weight) and self.objective != "elbo":
            raise ValueError(f"free_bits and aux_weight change the ELBO objective, not objective={self.objective!r}: "
                             "give objective='elbo' or leave them at 0")

    @classmethod
    def named(cls, name: str, **overrides: Any) -> TrainingSettings:
        """The named set of values ``name`` (NAMED: "paper", "anti_collapse"), then ``overrides``."""
        if name not in NAMED:
            raise ValueError(f"no settings named {name!r}; the named sets are {', '.join(map(repr, NAMED))}")
        return cls(**(NAMED[name] | overrides))

    def replace(self, **changes: Any) -> TrainingSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingSettings:
        """The settings a dict of them describes (``to_dict``); the ELBO's older name "cvae" is read as "elbo"."""
        unknown = sorted(set(values) - set(NAMES))
        if unknown:
            raise ValueError(f"unknown training setting {', '.join(map(repr, unknown))}: the settings are "
                             f"{', '.join(NAMES)}")
        values = dict(values)
        if values.get("objective") in LEGACY_OBJECTIVES:
            values["objective"] = LEGACY_OBJECTIVES[values["objective"]]
        return cls(**values)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of an epoch (counted from 0): exponential decay, lr * lr_decay ** epoch."""
        return self.lr * self.lr_decay ** epoch

    def kl_weight_at(self, epoch: int, step: int, num_batches: int) -> float:
        """The KL warm-up (Bowman et al. 2016): beta = min(1, t / (kl_warmup * num_batches)) at step t counted
        from the start of training, a function of (epoch, step) alone, so a resumed run agrees."""
        if self.kl_warmup == 0:
            return 1.0
        return min(1.0, (epoch * num_batches + step) / (self.kl_warmup * num_batches))


def _setting(f: dataclasses.Field) -> Setting:
    return f.metadata["setting"]


FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(TrainingSettings)
NAMES = tuple(f.name for f in FIELDS)
SETTINGS: dict[str, Setting] = {f.name: _setting(f) for f in FIELDS}


def check_seed(seed: object, name: str = "seed") -> int:
    """seed as an int when it is one a training seed may be (0 .. MAX_SEED: every generator seed derived from it,
    such as seed + block * 1_000_003, stays within torch's 64 bits); else a ValueError naming it."""
    problem = SETTINGS["seed"].check(seed)
    if problem:
        raise ValueError(f"{name} must be {problem} (the generator seeds derived from it must stay within 64 bits), "
                         f"got {seed!r}")
    return int(seed)
DEFAULTS: dict[str, Any] = {f.name: f.default for f in FIELDS}
# Named sets of values. "paper": the declared defaults. "anti_collapse": fit's defaults, against a latent that the
# decoder learns to ignore: a KL warm-up over 10 epochs, the learning rate halved after every 2 epochs without a new
# best, a patience of 6 (docs/library.md, "Why these defaults").
NAMED: dict[str, dict[str, Any]] = {
    "paper": {},
    "anti_collapse": {"patience": 6, "kl_warmup": 10, "lr_halving": 2},
}
