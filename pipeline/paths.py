"""The pipeline's paths for code outside the DAG (report, gallery, bench, tests): dvc.yaml's `paths` var, where each
is written once (docs/architecture.md, "Paths"). The stages get theirs as arguments of their `cmd` instead."""
import re
import shlex
import sys
from pathlib import Path

import yaml

PIPELINE = Path(__file__).resolve().parents[1] / "dvc.yaml"  # this repository's, whichever folder a run is in
_VAR = re.compile(r"\$\{paths\.([\w.]+)\}")


def _pipeline() -> dict:
    return yaml.safe_load(PIPELINE.read_text())


def pipeline_paths() -> dict:
    """{name: path} of dvc.yaml's `paths` var, relative to a run's folder; `metrics` maps a name to its file."""
    return next(entry["paths"] for entry in _pipeline()["vars"] if "paths" in entry)


def resolve(text: str) -> str:
    """``text`` with each ``${paths.<name>}`` filled in, as DVC fills it in."""
    paths = pipeline_paths()

    def value(match: re.Match) -> str:
        found = paths
        for key in match.group(1).split("."):
            found = found[key]
        return found

    return _VAR.sub(value, text)


def stage_command(stage: str) -> list[str]:
    """The stage's command as ``dvc repro`` runs it (its `cmd`, paths filled in), with this interpreter."""
    program, *args = shlex.split(resolve(_pipeline()["stages"][stage]["cmd"]))
    return [sys.executable if program == "python" else program, *args]
