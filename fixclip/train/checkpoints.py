"""Training checkpoints: written atomically (temporary file + fsync + rename), found by step, loaded with
``weights_only=True``. A killed writer leaves at most a hidden ``.step-*.tmp`` file, which is never read."""
import os
import re
import shutil
from pathlib import Path

import torch

from ..model_folder import save_atomic

_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def saved_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints in ``folder``, ascending."""
    if not Path(folder).is_dir():
        return []
    return sorted(int(m.group(1)) for m in map(_NAME.match, os.listdir(folder)) if m)


def latest_checkpoint(folder: Path) -> Path | None:
    steps = saved_steps(folder)
    return checkpoint_path(folder, steps[-1]) if steps else None


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and temporaries left by killed writers."""
    for step in saved_steps(folder)[:-keep]:
        checkpoint_path(folder, step).unlink(missing_ok=True)
    remove_temporaries(folder)


def remove_temporaries(folder: Path) -> None:
    for tmp in Path(folder).glob(".step-*.tmp"):
        tmp.unlink(missing_ok=True)


def clear(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
