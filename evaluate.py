"""Re-evaluate the saved checkpoints of a run on the test set: ``python evaluate.py --help``.

The command is ``cvae.paper.commands.evaluate`` (also ``cvae-sohn evaluate`` and ``python -m cvae evaluate``).
"""

import sys

from cvae.paper import cli
from cvae.paper.commands.evaluate import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli.run(main))
