"""The run configuration: every hyperparameter of a run, with the paper's defaults."""

from __future__ import annotations

import dataclasses
import platform
import sys
from dataclasses import dataclass, field

import numpy
import torch


@dataclass
class RunConfig:
    """Defaults reproduce the paper / Pyro tutorial set-up: MLPs 500-500, z of 200, Adam 1e-3,
    batch 128, at most 50 epochs with early stopping (patience 3) on the validation loss."""

    quadrants: list[int] = field(default_factory=lambda: [1, 2, 3])
    epochs: int = 50
    patience: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    z_dim: int = 200
    hidden: list[int] = field(default_factory=lambda: [500, 500])
    autoregressive: bool = False  # an Autoregression term in the generation net's logits (the paper has none)
    ar_window: int = 0  # its neighbourhood: every earlier pixel (0), or those in a window x window square
    seed: int = 0
    objective: str = "cvae"  # "cvae" (ELBO), "gsnn", "hybrid" or "iwae" (objectives.py)
    alpha: float = 0.5  # the ELBO's weight in the hybrid objective
    iw_samples: int = 5  # samples of z per image in the importance-weighted objective ("iwae")
    lr_decay: float = 1.0  # learning rate of epoch e (from 0): lr * lr_decay ** e
    preset: str = "paper"  # the named set of defaults the run started from (PRESETS)
    likelihood: str = "bernoulli"  # of y's pixels: "bernoulli" (the paper's) or "continuous-bernoulli"
    dataset: str = "mnist"
    binarize: bool = False
    data_dir: str = "data"
    train_subset: int | None = None
    num_samples: int = 100

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    @property
    def protocol(self) -> str:
        return "binarized" if self.binarize else "grayscale"


# Named sets of defaults (train.py --preset); options given beside a preset override its values.
PRESETS: dict[str, dict] = {
    "paper": {},  # the RunConfig defaults: the paper's set-up
    "strong": {"autoregressive": True},  # README, "A stronger configuration"
}


def environment() -> dict:
    """Library versions and machine, recorded beside the configuration of every run."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
