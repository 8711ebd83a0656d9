"""Conditional Variational Auto-encoder (Sohn, Lee, Yan, NeurIPS 2015) in plain PyTorch.

    from cvae import ConditionalVAE, Regressor, fit, likelihoods, estimators   # any (x, y)
    from cvae import QuadrantTask, BaselineNet, CVAE                          # the paper's MNIST experiment

The names are imported when first used (PEP 562), so that importing cvae, or running a command's --help, does not
import torch. Importing cvae changes nothing of torch's numerics: the commands that train or evaluate set
``torch.set_flush_denormal`` themselves (``cvae.paper.commands``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import estimators, likelihoods
    from .conditional_vae import ConditionalVAE
    from .fitting import fit
    from .paper.models import CVAE, BaselineNet
    from .paper.quadrants import QuadrantTask
    from .regressor import Regressor

# each public name -> the module that defines it (relative to this package)
# (CVAE, BaselineNet and QuadrantTask are the paper experiment's, cvae.paper, named here for convenience: the
# library's own modules never import cvae.paper)
_SOURCES = {"ConditionalVAE": ".conditional_vae", "Regressor": ".regressor", "fit": ".fitting",
            "likelihoods": ".likelihoods", "estimators": ".estimators", "CVAE": ".paper.models",
            "BaselineNet": ".paper.models", "QuadrantTask": ".paper.quadrants"}

__all__ = ["ConditionalVAE", "Regressor", "fit", "likelihoods", "estimators", "CVAE", "BaselineNet", "QuadrantTask"]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and keep it in the package's namespace."""
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_SOURCES[name], __name__)
    value = module if module.__name__.rpartition(".")[2] == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
