"""Model folders: a trained folder round-trips exactly; a base CLIP folder loads with every module off."""

import pytest
import torch

from fixclip.config import FixClipConfig
from fixclip.model import FixClip
from fixclip.model_folder import load_base, load_model_folder
from tests.conftest import REPO
from tests.stages.test_evaluate import BASE_CONFIG, BASE_WEIGHTS, _save_folder


def test_model_folder_round_trip_and_base_layout(tmp_path):
    base = load_base(BASE_CONFIG, BASE_WEIGHTS)
    images = torch.randn(2, 3, 64, 64)
    tokens = base.tokenizer()(["a red circle", "two shapes on beige"])
    plain = load_model_folder(_save_folder(tmp_path / "plain", base, FixClipConfig.plain()), BASE_CONFIG)
    with torch.no_grad():
        assert torch.equal(plain.encode_image(images), base.encode_image(images))
        assert torch.equal(plain.encode_text(tokens), base.encode_text(tokens))

    cfg = FixClipConfig.plain().with_(stretch=True)
    stretched = FixClip(load_base(BASE_CONFIG, BASE_WEIGHTS).clip, cfg)
    loaded = load_model_folder(_save_folder(tmp_path / "stretched", stretched, cfg), BASE_CONFIG)
    assert loaded.context_length == 248 and loaded.cfg == cfg
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), stretched.state_dict().values()))

    assert load_model_folder(REPO / "assets/base_clip", BASE_CONFIG).cfg == FixClipConfig.plain()
    with pytest.raises(FileNotFoundError, match="missing: no such file or folder"):
        load_model_folder(tmp_path / "missing", BASE_CONFIG)
