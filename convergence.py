"""How the CVAE's CLL estimates converge with the number of samples S: ``python convergence.py --help``.

The command is ``cvae.commands.convergence`` (also ``cvae-sohn convergence`` and ``python -m cvae convergence``).
"""

import sys

from cvae import cli
from cvae.commands.convergence import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli.run(main))
