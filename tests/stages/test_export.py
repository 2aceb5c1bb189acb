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


def test_fixclip_model_is_exported_in_both_formats_saying_what_they_hold(tmp_path):
    """The exports hold the image tower without the regional prompts; each folder's config and the metrics say so,
    with the scores of both forms that evaluate measured for this model."""
    model = FixClip(build_clip(BASE_CONFIG, seed=0), FixClipConfig())
    folder = tmp_path / "model"
    save_model_folder(model, BASE_CONFIG, folder)
    row = {"i2t_R@1": 40.0, "t2i_R@1": 42.0}
    (tmp_path / "eval.json").write_text(json.dumps({
        "toy_long": {"base": row, "trained": row, "trained_without_prompts": {"i2t_R@1": 30.0, "t2i_R@1": 31.0}},
        "toy_zeroshot": {"base": {"top1": 90.0}, "trained": {"top1": 80.0}, "trained_without_prompts": {"top1": 85.0}}}))
    metrics = run(ExportParams(model=str(folder)), tmp_path / "export", tmp_path / "export.json", evaluated=True,
                  eval_metrics=tmp_path / "eval.json")
    for name in ("open_clip", "transformers"):
        assert metrics[name]["max_abs_difference"] <= metrics["atol"] and metrics[name]["bytes"] > 0
        assert not (tmp_path / "export" / name / NOT_EXPORTED).exists()
    assert json.loads((tmp_path / "export.json").read_text()) == metrics
    contents = metrics["contents"]
    assert contents["image_tower"].startswith("backbone without the regional prompts")
    assert contents["scores"] == {"with_prompts": {"toy_long": [40.0, 42.0], "toy_zeroshot": 80.0},
                                  "without_prompts": {"toy_long": [30.0, 31.0], "toy_zeroshot": 85.0}}
    configs = ("open_clip/open_clip_config.json", "transformers/config.json")
    for config in configs:
        assert json.loads((tmp_path / "export" / config).read_text())["fixclip_export"] == contents


def test_holistic_model_is_not_exported_and_says_why(tmp_path):
    metrics = _run(tmp_path, HolisticClip(build_clip(BASE_CONFIG, seed=0), HolisticConfig()))
    for name in ("open_clip", "transformers"):
        assert "HolisticClip.encode_image" in metrics[name]["not_exported"]
        assert [p.name for p in (tmp_path / "export" / name).iterdir()] == [NOT_EXPORTED]
