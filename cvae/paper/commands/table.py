"""The paper-style table from several evaluated runs (objectives cvae / gsnn / hybrid, the strong preset,
several seeds), beside the published figures, and the paired NN-vs-CVAE comparison with 95% confidence intervals.

    cvae-sohn table runs/default runs/seed1 runs/seed2 runs/gsnn runs/hybrid --out runs/paper_table.md
    cvae-sohn table --ablation runs/default runs/wide runs/strong   # one row per run: what it changes

(or cvae-sohn table ..., python -m cvae table ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import cli


def main(argv: list[str] | None = None) -> int:
    """table's command line (argv without the program name). Returns the exit status."""
    p = argparse.ArgumentParser(prog=cli.program("table"), description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", type=Path, help="evaluated runs (train --out)")
    p.add_argument("--ablation", action="store_true",
                   help="instead: one row per run, labelled by what it changes from the paper's set-up")
    p.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = p.parse_args(argv)

    from cvae import checkpoints

    from ..comparison import (
        ComparisonError,
        ablation_table,
        check_comparable,
        load_runs,
        paired_table,
        paper_table,
        published_table,
        samples_table,
    )

    try:
        runs = load_runs(args.run_dirs)
        check_comparable(runs, ablation=args.ablation)
    except (FileNotFoundError, checkpoints.RunFileError, ComparisonError) as error:
        raise cli.UserError(str(error)) from None
    if args.ablation:
        text = ablation_table(runs)
    else:
        samples = samples_table(runs)
        text = "\n".join([paper_table(runs), *([samples] if samples else []), published_table(),
                          "Paired comparison on the same test images:\n", paired_table(runs)])
    if args.out:
        checkpoints.write_text(args.out, text)
    print(text)
    return 0
