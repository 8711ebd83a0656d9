"""``python -m cvae COMMAND ...``: the same as the ``cvae-sohn`` command (``cvae.paper.commands``)."""

import sys

from cvae.paper.commands import main

sys.exit(main())
