"""``python -m cvae COMMAND ...``: the same as the ``cvae-sohn`` command (``cvae.commands``)."""

import sys

from cvae.commands import main

sys.exit(main())
