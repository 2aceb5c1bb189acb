"""A throwaway git + DVC repository whose one stage writes made-up metrics from its params, with named `dvc exp run`s
in it: what `pipeline.experiments` and `pipeline.frontier` read."""
import sys
from pathlib import Path

import yaml

from tests.conftest import run


def experiment_repo(root: Path, params: dict, evaluate: str, metrics: list[str],
                    runs: list[tuple[str, dict]]) -> Path:
    """Commit a repository whose stage runs `evaluate` (Python reading params.yaml, writing the `metrics` files,
    uncached), then `dvc exp run -n NAME -S key=value ...` for each (NAME, {key: value}) of `runs`; returns root."""
    stage = {"cmd": f"{sys.executable} evaluate.py", "deps": ["evaluate.py"], "params": list(params),
             "metrics": [{name: {"cache": False}} for name in metrics]}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": stage}}))
    (root / "evaluate.py").write_text(evaluate)
    (root / "metrics").mkdir()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, root)
    for name, values in runs:
        run(["dvc", "exp", "run", "-n", name, *(arg for k, v in values.items() for arg in ("-S", f"{k}={v}"))], root)
    return root
