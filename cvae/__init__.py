"""Conditional Variational Auto-encoder (Sohn, Lee, Yan, NeurIPS 2015) in plain PyTorch.

    from cvae import QuadrantTask, BaselineNet, CVAE
"""

from .models import CVAE, BaselineNet
from .quadrants import QuadrantTask

__all__ = ["CVAE", "BaselineNet", "QuadrantTask"]
