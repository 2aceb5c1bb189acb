"""docs/methods.md, "Add a method", followed for a fourth method: plain CLIP fine-tuning (the base model as it is,
the standard contrastive loss on the long captions, no module added). Its section, model, loss and ``Method`` are
all in this module; it enters the registry (``fixclip.methods.METHODS``) for each test only, and no other file
knows it."""
import shutil

import pytest
import torch
from pydantic import Field
from torch import nn

from fixclip.checkpoint_formats import load_clip
from fixclip.config import MethodSection
from fixclip.loss import info_nce
from fixclip.methods import METHODS, Registered
from fixclip.model_folder import load_model_folder
from fixclip.train import checkpoints as ckpt
from fixclip.train.loop import train
from fixclip.trainable import Method, Trainable
from pipeline.params import ParamsError, parse_params
from tests.conftest import REPO
from tests.fixclip.train.test_data import tiny_run, write_train_shards


# 1. Its params section, train.clip.
class PlainClipConfig(MethodSection):
    """The label smoothing of its loss; nothing else to set."""

    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


# 2. Its model: the loop's interface with every hook at its default (no own random draws, warm-up or logit scale).
class PlainClip(Trainable):
    """The base open_clip CLIP at its own 77 text positions."""

    def __init__(self, clip: nn.Module, cfg: PlainClipConfig = PlainClipConfig()):
        super().__init__()
        self.clip, self.method_cfg = clip, cfg
        self.context_length = clip.context_length

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_image(images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=normalize)

    def forward(self, images: torch.Tensor, long_tokens: torch.Tensor, short_tokens: torch.Tensor | None = None):
        return {"image_features": self.encode_image(images, normalize=True),
                "text_features": self.encode_text(long_tokens, normalize=True), "logit_scale": self.logit_scale.exp()}


# 3. Its loss: symmetric InfoNCE, long caption <-> image.
class PlainClipLoss(nn.Module):
    def __init__(self, label_smoothing: float, rank: int, world_size: int):
        super().__init__()
        self.label_smoothing, self.rank, self.world_size = label_smoothing, rank, world_size

    @classmethod
    def from_config(cls, cfg: PlainClipConfig, rank: int = 0, world_size: int = 1) -> "PlainClipLoss":
        return cls(cfg.label_smoothing, rank, world_size)

    def forward(self, out: dict) -> dict:
        return {"loss": info_nce(out["image_features"], out["text_features"], out["logit_scale"],
                                 self.label_smoothing, self.rank, self.world_size)}


# 4. Its Method, and 5. its registry entry (fixture: for the test's duration).
PLAIN_CLIP = Method(PlainClip, PlainClipLoss)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(METHODS, "clip", Registered(PlainClipConfig, lambda: PLAIN_CLIP))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_train_shards(tmp_path_factory.mktemp("shards"), n=32, per_shard=8)


def _refusal(train: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params({"train": train})
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_unregistered_it_is_no_method():
    assert _refusal({"method": "clip"}).endswith("train.method: unknown method 'clip' (known: fixclip, longclip, "
                                                 "holistic)")


def test_its_params_section_validates_and_another_methods_is_refused(registered):
    train = parse_params({"train": {"method": "clip", "clip": {"label_smoothing": 0.1}}}).train
    assert train.method_section == PlainClipConfig(label_smoothing=0.1) and train.unused_method_keys() == []
    assert parse_params({"train": {"method": "clip"}}).train.method_section == PlainClipConfig()
    for section, message in [
        ({"method": "clip", "fixclip": {"hfa": False}}, "train.fixclip.hfa: set, but train.method is 'clip'"),
        # it reads none of FIX-CLIP's keys, not even the stretch the two other methods share
        ({"method": "clip", "fixclip": {"stretch_keep": 10}}, "train.fixclip.stretch_keep: set, but train.method is"),
        ({"clip": {"label_smoothing": 0.1}}, "train.clip.label_smoothing: set, but train.method is 'fixclip'"),
        ({"method": "clip", "clip": {"label_smoothing": "some"}}, "train.clip.label_smoothing: expected float, got"),
        ({"method": "clip", "clip": {"smoothing": 0.1}}, "train.clip.smoothing: unknown key"),
    ]:
        assert f"invalid params: {message}" in _refusal(section)


@pytest.mark.expensive
def test_it_trains_on_the_loop_and_resumes_from_its_checkpoint(registered, tmp_path, shards, capsys):
    cfg, dirs = tiny_run(tmp_path, shards, method="clip", samples=24, checkpoint_every=2)  # 3 steps of 8
    metrics = train(cfg, dirs)
    assert metrics["steps"] == 3 and metrics["resumed_from_step"] == 0 and 0 < metrics["final_loss"] < 10
    model = load_model_folder(dirs.out_dir)
    assert type(model) is PlainClip and model.method_cfg == PlainClipConfig() and model.context_length == 77
    base = load_clip(REPO / "assets/base_clip/model.json", REPO / "assets/base_clip/weights.pt").state_dict()
    trained = model.clip.state_dict()
    assert trained.keys() == base.keys() and not torch.equal(trained["visual.proj"], base["visual.proj"])

    # The checkpoint round trip: without the model folder, the rerun resumes from step 2 to the same weights.
    assert ckpt.saved_steps(dirs.checkpoint_dir) == [2]
    shutil.rmtree(dirs.out_dir)
    resumed = train(cfg, dirs)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 3
    assert "train: resumed from" in capsys.readouterr().err
    again = load_model_folder(dirs.out_dir).clip.state_dict()
    assert all(torch.equal(trained[key], again[key]) for key in trained)
