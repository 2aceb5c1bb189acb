"""The export stage writes both formats for a FIX-CLIP model and, for a model no format can express (Holistic
CLIP's multi-branch image tower), writes the reason instead of a folder that would embed differently."""
import json

from fixclip.base_model import build_clip
from fixclip.config import FixClipConfig, HolisticConfig
from fixclip.holistic import HolisticClip
from fixclip.model import FixClip
from fixclip.model_folder import save_model_folder
from pipeline.params.export import ExportParams
from stages.export import NOT_EXPORTED, run
from tests.stages.test_evaluate import BASE_CONFIG


def _run(tmp_path, model):
    folder = tmp_path / "model"
    save_model_folder(model, BASE_CONFIG, folder)
    return run(ExportParams(model=str(folder)), tmp_path / "export", tmp_path / "export.json")


def test_fixclip_model_is_exported_in_both_formats(tmp_path):
    metrics = _run(tmp_path, FixClip(build_clip(BASE_CONFIG, seed=0), FixClipConfig()))
    for name in ("open_clip", "transformers"):
        assert metrics[name]["max_abs_difference"] <= metrics["atol"] and metrics[name]["bytes"] > 0
        assert not (tmp_path / "export" / name / NOT_EXPORTED).exists()
    assert json.loads((tmp_path / "export.json").read_text()) == metrics


def test_holistic_model_is_not_exported_and_says_why(tmp_path):
    metrics = _run(tmp_path, HolisticClip(build_clip(BASE_CONFIG, seed=0), HolisticConfig()))
    for name in ("open_clip", "transformers"):
        assert "HolisticClip.encode_image" in metrics[name]["not_exported"]
        assert [p.name for p in (tmp_path / "export" / name).iterdir()] == [NOT_EXPORTED]
