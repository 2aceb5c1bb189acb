"""The paths a stage reads and writes, as its command-line arguments: dvc.yaml names each path once (its `paths`
var) and passes it in the stage's `cmd` (docs/architecture.md, "Paths")."""
import argparse
from pathlib import Path

from core.cli import ArgumentParser


def stage_paths(stage: str, *names: str) -> argparse.Namespace:
    """Parse ``--<name> PATH`` for each name (``_`` spelt ``-``), every one required; a missing or unknown argument
    is a UserError (one line, exit 2, under ``exit_on_params_error``)."""
    parser = ArgumentParser(prog=f"python -m stages.{stage}", description=f"DVC stage {stage}; dvc.yaml gives its "
                            "paths (docs/architecture.md, \"Paths\").")
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True, metavar="PATH")
    return parser.parse_args()
