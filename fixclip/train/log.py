"""Progress bar (samples/s, loss, ETA) and DVCLive curves of the main rank, and the step timer behind their samples/s.

Curves are written with the optimizer step as x. On resume, rows logged after the checkpoint (by the run that was
killed) are dropped first, so every step appears once and `dvc plots show` draws one clean line."""
import csv
import time
from pathlib import Path

from dvclive import Live
from tqdm import tqdm


def _truncate_curves(log_dir: Path, last_step: int) -> None:
    for tsv in (log_dir / "plots" / "metrics").rglob("*.tsv"):
        with open(tsv, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows:
            continue
        step_col = rows[0].index("step")
        kept = [rows[0]] + [row for row in rows[1:] if int(row[step_col]) <= last_step]
        with open(tsv, "w", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows(kept)


class StepTimer:
    """Seconds between successive ``lap()`` calls, so a step's rate counts everything the loop does between two
    steps (data wait, logging, checkpoints), as open_clip_train's per-step samples/s does."""

    def __init__(self):
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds


class TrainLog:
    """Call ``step()`` after every optimizer step and ``close()`` at the end."""

    def __init__(self, log_dir: str | None, total_steps: int, start_step: int, samples_per_step: int,
                 log_every: int, progress: bool):
        self.log_every = log_every
        self.samples_per_step = samples_per_step
        self.live: Live | None = None
        if log_dir:
            if start_step:
                _truncate_curves(Path(log_dir), start_step)
            self.live = Live(log_dir, resume=bool(start_step), save_dvc_exp=False, dvcyaml=False)
        self.bar = tqdm(total=total_steps * samples_per_step, initial=start_step * samples_per_step, unit="sample",
                        unit_scale=True, dynamic_ncols=True, disable=not progress, desc="train")

    def step(self, step: int, metrics: dict) -> None:
        self.bar.update(self.samples_per_step)
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", step=step, refresh=False)
        if self.live is not None and step % self.log_every == 0:
            self.live.step = step
            for name, value in metrics.items():
                self.live.log_metric(f"train/{name}", value)

    def close(self) -> None:
        self.bar.close()
        if self.live is not None:
            self.live.make_summary()
            self.live.end()
