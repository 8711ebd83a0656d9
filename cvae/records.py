"""One model record: what rebuilds a model, saved whole in its checkpoint, and the one loader of every model class.

A model's record is its class and the arguments of its constructor, ``{"class": "cvae.conditional_vae.ConditionalVAE",
"args": {"x_dim": 3, ...}}``, the arguments in JSON values: a likelihood as ``{"likelihood": its config}``, a model
given to the constructor (a CVAE's baseline) as ``{"model": its record}``. A checkpoint is
``{"model": record, "state_dict": weights}``; ``load`` rebuilds the recorded class from it (after torch.load with
weights_only=True) and loads the weights. Modules of the user's own cannot be recorded: the record names them, and
they are passed to ``load`` again, built as when the model was saved.

Every model class of the package derives from ``Recorded`` and says how its arguments are read back from itself
(``arguments``); nanoGPT's ``model_args`` and Hugging Face's ``from_pretrained`` are the models followed. Checkpoints
of earlier versions (``{"kind", "config", "state_dict"}``) are read through ``legacy_record`` of the class that
wrote them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from . import checkpoints, likelihoods
from .checkpoints import CheckpointError, describe

PACKAGE = "cvae"  # records name classes of this package only: loading a checkpoint imports nothing else
# the library's kinds of checkpoint of earlier versions, and the modules of their classes
LIBRARY_LEGACY_KINDS = {"conditional_vae": "cvae.conditional_vae", "regressor": "cvae.regressor"}


class Recorded(nn.Module):
    """A model whose constructor arguments travel in its checkpoint: ``save``, ``load``, ``record``."""

    # kinds of the checkpoints earlier versions wrote for this class ({"kind": ...}), read by legacy_record
    LEGACY_KINDS: ClassVar[tuple[str, ...]] = ()
    _legacy: ClassVar[dict[str, type[Recorded]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for kind in cls.__dict__.get("LEGACY_KINDS", ()):
            Recorded._legacy[kind] = cls

    def arguments(self) -> dict[str, Any]:
        """The constructor's arguments that rebuild this model (modules of the user's own left out)."""
        raise NotImplementedError

    def user_modules(self) -> list[str]:
        """The names of the constructor's module arguments the record cannot hold, which ``load`` needs again."""
        return []

    @classmethod
    def legacy_record(cls, config: dict) -> dict:
        """The record of a checkpoint {"kind": one of LEGACY_KINDS, "config": config} of an earlier version."""
        raise NotImplementedError(f"{cls.__name__} has no checkpoints of earlier versions")

    def record(self) -> dict[str, Any]:
        """{"class", "args"[, "modules"]}: what rebuilds this model, in JSON values."""
        record = {"class": qualified_name(type(self)),
                  "args": {name: encode(value) for name, value in self.arguments().items()}}
        if modules := self.user_modules():
            record["modules"] = list(modules)
        return record

    def checkpoint(self) -> dict[str, Any]:
        return {"model": self.record(), "state_dict": self.state_dict()}

    def save(self, path: str | Path) -> None:
        """Write the record and the weights to ``path`` (atomically); ``load`` reads them back."""
        checkpoints.save(self.checkpoint(), path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu", **modules: nn.Module) -> Recorded:
        """The model saved at ``path``, of the class that saved it, which must be this class or one derived from it
        (CheckpointError naming the file and what it holds otherwise). A model built with modules of the user's own
        (recognition=, prior=, ...) needs the same kind of modules passed again: their weights are read from the
        file."""
        return cls.from_checkpoint(checkpoints.load(path, map_location), path, **modules)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, path: str | Path = "<checkpoint>", **modules: nn.Module) -> Recorded:
        record = checkpoint.get("model")
        if record is None and "kind" in checkpoint:  # written by an earlier version
            record = legacy_record(checkpoint, path)
        if not isinstance(record, dict):
            raise CheckpointError(f"{path} holds no model record (its keys: {', '.join(map(str, checkpoint))}): it "
                                  "was not written by a model's save, or by train.py.")
        saved = model_class(record, path)
        if not issubclass(saved, cls):
            raise CheckpointError(f"{path} holds a {saved.__name__} ({record['class']}), not a {cls.__name__}: load it "
                                  f"with {saved.__name__}.load.")
        model = build(record, path, **modules)
        try:
            model.to(floating_dtype(checkpoint["state_dict"])).load_state_dict(checkpoint["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path} does not hold the weights of the model it records "
                                  f"({describe(error)}).") from None
        return model


def qualified_name(cls: type) -> str:
    """A class's name as a record holds it: "cvae.conditional_vae.ConditionalVAE"."""
    return f"{cls.__module__}.{cls.__qualname__}"


def encode(value: Any) -> Any:
    """A constructor argument as a JSON value (see the module's docstring)."""
    if isinstance(value, Recorded):
        return {"model": value.record()}
    if isinstance(value, likelihoods.Likelihood):
        return {"likelihood": value.config()}
    if isinstance(value, (list, tuple)):
        return [encode(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a model's record holds numbers, strings, lists, likelihoods and models, not a "
                    f"{type(value).__name__}")


def decode(value: Any, path: str | Path) -> Any:
    """``encode``'s JSON value back as the argument."""
    if isinstance(value, dict) and set(value) == {"model"}:
        return build(value["model"], path)
    if isinstance(value, dict) and set(value) == {"likelihood"}:
        return likelihoods.from_config(value["likelihood"])
    if isinstance(value, list):
        return [decode(item, path) for item in value]
    return value


def model_class(record: dict, path: str | Path = "<checkpoint>") -> type[Recorded]:
    """The class a record names: a Recorded class of this package (nothing else is imported)."""
    name = record.get("class")
    module, _, qualname = name.rpartition(".") if isinstance(name, str) else ("", "", "")
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        raise CheckpointError(f"{path} records a model of class {name!r}, not one of this package ({PACKAGE}).")
    try:
        found = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        raise CheckpointError(f"{path} records a model of class {name!r}, which this version of {PACKAGE} does not "
                              "have (a newer version wrote it).") from None
    if not (isinstance(found, type) and issubclass(found, Recorded)):
        raise CheckpointError(f"{path} records {name!r}, which is not a model class.")
    return found


def build(record: dict, path: str | Path = "<checkpoint>", **modules: nn.Module) -> Recorded:
    """A new model (untrained weights) from its record, with the user's modules the record names."""
    cls = model_class(record, path)
    needed = list(record.get("modules", []))
    missing = [name for name in needed if name not in modules]
    unknown = [name for name in modules if name not in needed]
    if missing:
        raise ValueError(f"{path} holds a model built with modules of the user's own: pass "
                         f"{', '.join(f'{name}=...' for name in missing)} to {cls.__name__}.load, built as when it was "
                         "saved")
    if unknown:
        raise ValueError(f"{path} holds a model that takes no module {', '.join(map(repr, unknown))} (it records "
                         f"{', '.join(map(repr, needed)) or 'none'})")
    try:
        arguments = {name: decode(value, path) for name, value in record["args"].items()}
        return cls(**arguments, **modules)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path} does not hold a model that can be rebuilt ({describe(error)}).") from None


def load(path: str | Path, map_location: str | torch.device = "cpu", **modules: nn.Module) -> Recorded:
    """The model saved at ``path``, whatever its class (``Recorded.load`` of the class it records)."""
    return Recorded.load(path, map_location, **modules)


def legacy_record(checkpoint: dict, path: str | Path) -> dict:
    """The record of a checkpoint an earlier version wrote, ``{"kind", "config", "state_dict"}``, made by the class
    that wrote it (its LEGACY_KINDS), which must be imported (the paper's models: cvae.paper.models)."""
    kind = checkpoint.get("kind")
    if kind in LIBRARY_LEGACY_KINDS:
        importlib.import_module(LIBRARY_LEGACY_KINDS[kind])  # registers its class
    cls = Recorded._legacy.get(kind)
    if cls is None:
        raise CheckpointError(f"{path} holds a {kind!r} model written by an earlier version, of a class not imported: "
                              "the paper's models ('cvae', 'baseline') load with cvae.CVAE.load or "
                              "cvae.BaselineNet.load.")
    try:
        return cls.legacy_record(checkpoint.get("config", {}))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} does not hold a model that can be rebuilt ({describe(error)}).") from None


def floating_dtype(state_dict: dict) -> torch.dtype:
    """The dtype of a state dict's floating-point tensors (a model saved in float64 loads in float64)."""
    return next((value.dtype for value in state_dict.values() if value.is_floating_point()), torch.float32)
