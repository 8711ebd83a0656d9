"""The command line: ``cvae-sohn COMMAND ...`` (or ``python -m cvae COMMAND ...``).

    cvae-sohn train --quadrants 2 --epochs 5 --out runs/quick
    cvae-sohn evaluate runs/quick
    cvae-sohn COMMAND --help

Each command is a module of this package with ``main(argv) -> int``, imported only when it runs; its failures
are mapped to a message and an exit status by ``cvae.paper.cli.run``. The root scripts (train.py, evaluate.py, ...)
run the same modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> one line saying what it does (each is the module of that name in this package, "-" read as "_")
COMMANDS = {
    "train": "train the baseline and the CVAE on the quadrant task, then evaluate them on the test set",
    "evaluate": "re-evaluate the saved checkpoints of a run on the test set and write its table and figures",
    "sample": "complete your own 28x28 digit image with a trained run and write a PNG grid of samples",
    "table": "the paper-style table from several evaluated runs, beside the published figures",
    "convergence": "how the CVAE's CLL estimates converge with the number of samples S",
    "autoregressive-baseline": "the strong preset's control: the NN with the same autoregressive term, no latent",
}


def parser() -> argparse.ArgumentParser:
    """The dispatcher's parser: a command and the arguments it is given."""
    p = argparse.ArgumentParser(
        prog="cvae-sohn", description="The Conditional VAE of Sohn, Lee, Yan (2015) on the MNIST quadrant task.",
        epilog="Run cvae-sohn COMMAND --help for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)  # the command's own parser reads its arguments
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command: ``main(["train", "--epochs", "5"])``. Returns its exit status."""
    from .. import cli

    argv = sys.argv[1:] if argv is None else list(argv)
    command, rest = parser().parse_known_args(argv[:1])[0].command, argv[1:]
    module = importlib.import_module(f".{command.replace('-', '_')}", __name__)
    return cli.run(lambda: module.main(rest))
