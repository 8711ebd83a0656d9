"""Conditional Variational Auto-encoder (Sohn, Lee, Yan, NeurIPS 2015) in plain PyTorch.

    from cvae import ConditionalVAE, Regressor, fit, likelihoods, estimators   # any (x, y)
    from cvae import QuadrantTask, BaselineNet, CVAE                          # the paper's MNIST experiment
"""

import torch

from . import estimators, likelihoods
from .conditional_vae import ConditionalVAE
from .fitting import fit
from .models import CVAE, BaselineNet
from .quadrants import QuadrantTask
from .regressor import Regressor

# Flush denormal floats to zero. Adam's moments of weights whose input pixel is rarely non-zero decay into
# denormals after a few epochs, and denormal arithmetic made CPU training epochs 2x slower. Set on import,
# before torch starts its OpenMP threads, because those threads inherit the setting only when they are created
# (setting it later reaches the calling thread alone).
torch.set_flush_denormal(True)

__all__ = ["ConditionalVAE", "Regressor", "fit", "likelihoods", "estimators", "CVAE", "BaselineNet", "QuadrantTask"]
