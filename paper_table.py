"""The paper-style table from several evaluated runs: ``python paper_table.py --help``.

The command is ``cvae.commands.table`` (also ``cvae-sohn table`` and ``python -m cvae table``).
"""

import sys

from cvae import cli
from cvae.commands.table import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli.run(main))
