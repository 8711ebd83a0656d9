"""Re-evaluate the saved checkpoints of a run on the test set: ``python evaluate.py --help``.

The command is ``cvae.commands.evaluate`` (also ``cvae-sohn evaluate`` and ``python -m cvae evaluate``).
"""

import sys

from cvae import cli
from cvae.commands.evaluate import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli.run(main))
