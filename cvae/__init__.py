"""Conditional Variational Auto-encoder (Sohn, Lee, Yan, NeurIPS 2015) in plain PyTorch.

    from cvae import QuadrantTask, BaselineNet, CVAE
"""

import torch

from .models import CVAE, BaselineNet
from .quadrants import QuadrantTask

# Flush denormal floats to zero. Adam's moments of weights whose input pixel is rarely non-zero decay into
# denormals after a few epochs, and denormal arithmetic made CPU training epochs 2x slower. Set on import,
# before torch starts its OpenMP threads, because those threads inherit the setting only when they are created
# (setting it later reaches the calling thread alone).
torch.set_flush_denormal(True)

__all__ = ["CVAE", "BaselineNet", "QuadrantTask"]
