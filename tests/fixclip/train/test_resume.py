"""Checkpoints: a SIGKILLed run resumes to the same weights, writes are atomic, NaN never reaches a checkpoint."""
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import torch

from fixclip.train import checkpoints as ckpt
from fixclip.loss import FixClipLoss
from fixclip.train.loop import NonFiniteLossError, train
from fixclip.model_folder import WEIGHTS, load_model_folder
from tests.conftest import REPO, stage_env
from tests.fixclip.train.test_data import tiny_run, train_command, write_train_shards


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    return write_train_shards(tmp_path_factory.mktemp("shards"))


def _start(run):
    return subprocess.Popen([sys.executable, *train_command(*run)], cwd=REPO, env=stage_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc):
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    return out


def _weights(folder):
    return torch.load(folder / "model" / WEIGHTS, weights_only=True)


def _logged_steps(folder):
    with open(folder / "curves/plots/metrics/train/loss.tsv") as f:
        return [int(row["step"]) for row in csv.DictReader(f, delimiter="\t")]


@pytest.mark.expensive
def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path, train_dir):
    # 12 steps of 8, checkpoints every 3; dual branch, regional prompts and HFA all on (masks are drawn per step).
    killed = tiny_run(tmp_path / "killed", train_dir, num_workers=1)
    victim = _start(killed)
    deadline = time.monotonic() + 240
    while ckpt.saved_steps(tmp_path / "killed/checkpoints")[-1:] < [6]:
        assert victim.poll() is None and time.monotonic() < deadline, "run ended before its checkpoint at step 6"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed/model" / WEIGHTS).exists(), "killed too late: the run had finished"

    assert "resumed from" in _finish(_start(killed))
    train(*tiny_run(tmp_path / "plain", train_dir, num_workers=1))
    expected, got = _weights(tmp_path / "plain"), _weights(tmp_path / "killed")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert _logged_steps(tmp_path / "killed") == list(range(1, 13))  # each step once, no duplicates after resume


@pytest.mark.expensive
def test_rerun_after_params_change_starts_afresh(tmp_path, train_dir):
    train(*tiny_run(tmp_path, train_dir, samples=48))
    assert ckpt.saved_steps(tmp_path / "checkpoints") == [3]
    metrics = train(*tiny_run(tmp_path, train_dir, samples=48, lr=1e-4))
    assert metrics["resumed_from_step"] == 0
    assert train(*tiny_run(tmp_path, train_dir, samples=48, lr=1e-4))["resumed_from_step"] == 3


def test_rerun_on_other_data_of_the_same_size_starts_afresh(tmp_path, train_dir):
    """Same params, same shard names and sample counts, other texts (e.g. shard.long_text: ground_truth): a checkpoint
    of the first data must not be resumed on the second."""
    data = tmp_path / "data"
    shutil.copytree(train_dir, data)
    train(*tiny_run(tmp_path, data, samples=48))
    assert ckpt.saved_steps(tmp_path / "checkpoints") == [3]
    for tar_path in sorted(data.glob("*.tar")):
        with tarfile.open(tar_path) as archive:
            members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
        with tarfile.open(tar_path, "w") as archive:
            for member, payload in members:
                payload = payload.upper() if member.name.endswith("long.txt") else payload
                member.size = len(payload)
                archive.addfile(member, io.BytesIO(payload))
    assert train(*tiny_run(tmp_path, data, samples=48))["resumed_from_step"] == 0


def test_exported_model_rebuilds(tmp_path, train_dir):
    train(*tiny_run(tmp_path, train_dir, samples=16))
    model = load_model_folder(tmp_path / "model")
    state = _weights(tmp_path)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    ckpt.save_atomic({"step": 1}, ckpt.checkpoint_path(tmp_path, 1))

    def dies_midway(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"step": 2}, ckpt.checkpoint_path(tmp_path, 2))
    assert sorted(os.listdir(tmp_path)) == ["step-00000001.pt"]
    (tmp_path / ".step-00000003.pt.999.tmp").write_bytes(b"left by a SIGKILLed writer")
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_path(tmp_path, 1)
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path)) == {"step": 1}
    ckpt.prune(tmp_path, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["step-00000001.pt"]


def _nan_at_call(monkeypatch, bad_call):
    original, calls = FixClipLoss.forward, []

    def forward(self, out):
        parts = original(self, out)
        calls.append(1)
        if len(calls) == bad_call:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(FixClipLoss, "forward", forward)


def test_nan_loss_stops_naming_the_step_without_a_poisoned_checkpoint(tmp_path, train_dir, monkeypatch):
    _nan_at_call(monkeypatch, bad_call=5)
    with pytest.raises(NonFiniteLossError, match=r"^step 5: the loss is not finite"):
        train(*tiny_run(tmp_path, train_dir, samples=64, checkpoint_every=2))
    assert ckpt.saved_steps(tmp_path / "checkpoints") == [2, 4]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "checkpoints"))
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "model").exists()


def test_nan_loss_skip_policy_skips_one_step(tmp_path, train_dir, monkeypatch):
    _nan_at_call(monkeypatch, bad_call=3)
    metrics = train(*tiny_run(tmp_path, train_dir, samples=48, grad_accum=2, batch_size=4, nan_policy="skip"))
    assert metrics["steps"] == 6 and metrics["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path).values())
