"""torchrun with 2 gloo processes follows the loss trajectory of 1 process with the doubled per-step batch."""
import csv
import subprocess
import sys

import pytest
import torch

from fixclip.train.loop import train
from tests.conftest import REPO, stage_env
from tests.fixclip.train.test_data import tiny_run, train_command, write_train_shards

CURVES = ("loss", "long", "short", "hfa_2")


def _curve(folder, name):
    with open(folder / f"curves/plots/metrics/train/{name}.tsv") as f:
        return [float(row[name]) for row in csv.DictReader(f, delimiter="\t")]


@pytest.mark.expensive
def test_two_gloo_processes_match_one_process_with_double_batch(tmp_path):
    train_dir = write_train_shards(tmp_path / "shards")
    # Masks are drawn per rank, so the masked branch is compared with mask_ratio 0 (its loss is still computed).
    common = {"samples": 96, "seed": 1, "fixclip": {"mask_ratio": 0.0, "hfa_warmup_steps": 4}}  # heads alone, then all
    one = tiny_run(tmp_path / "one", train_dir, batch_size=16, num_workers=2, **common)
    two = tiny_run(tmp_path / "two", train_dir, batch_size=8, num_workers=1, **common)
    env = stage_env()
    env["OMP_NUM_THREADS"] = "1"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
         "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", *train_command(*two)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = train(*one)
    out, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, out[-4000:]
    assert "'world_size': 2" in out and metrics["world_size"] == 1

    for name in CURVES:
        single, ddp = _curve(tmp_path / "one", name), _curve(tmp_path / "two", name)
        assert len(single) == len(ddp) == 6
        assert torch.allclose(torch.tensor(ddp), torch.tensor(single), rtol=1e-4, atol=1e-5), (name, single, ddp)
