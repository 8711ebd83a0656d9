"""Train the baseline and the CVAE on the MNIST quadrant task, then evaluate them: ``python train.py --help``.

The command is ``cvae.paper.commands.train`` (also ``cvae-sohn train`` and ``python -m cvae train``).
"""

import sys

from cvae.paper import cli
from cvae.paper.commands.train import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli.run(main))
