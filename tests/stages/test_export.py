"""The export stage writes both formats for a FIX-CLIP model and, for a model no format can express (Holistic
CLIP's multi-branch image tower), writes the reason instead of a folder that would embed differently."""
import json

import yaml

from fixclip.base_model import build_clip
from fixclip.config import FixClipConfig, HolisticConfig
from fixclip.holistic import HolisticClip
from fixclip.model import FixClip
from fixclip.model_folder import save_model_folder
from pipeline.params import load_params
from pipeline.params.export import ExportParams
from stages.export import CARD, NOT_EXPORTED, run, run_facts
from tests.conftest import REPO
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
    metrics = run(ExportParams(model=str(folder)), tmp_path / "export", tmp_path / "export.json",
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


def test_each_export_carries_a_model_card_with_the_hub_s_header_and_the_run_s_scores(tmp_path):
    model = FixClip(build_clip(BASE_CONFIG, seed=0), FixClipConfig())
    folder = tmp_path / "model"
    save_model_folder(model, BASE_CONFIG, folder)
    results = {"toy_long": {"base": {"i2t_R@1": 17.9, "t2i_R@1": 15.0}, "trained": {"i2t_R@1": 53.2, "t2i_R@1": 51.6},
                            "trained_without_prompts": {"i2t_R@1": 45.8, "t2i_R@1": 49.6}},
               "toy_zeroshot": {"base": {"top1": 97.5}, "trained": {"top1": 88.5},
                                "trained_without_prompts": {"top1": 91.9}}}
    (tmp_path / "eval.json").write_text(json.dumps(results))
    facts = run_facts(load_params(REPO / "params.yaml"))
    run(ExportParams(model=str(folder)), tmp_path / "export", tmp_path / "export.json",
        eval_metrics=tmp_path / "eval.json", facts=facts)
    for name, library in (("open_clip", "open_clip"), ("transformers", "transformers")):
        card = (tmp_path / "export" / name / CARD).read_text()
        _, head, body = card.split("---\n", 2)
        meta = yaml.safe_load(head)
        assert meta["library_name"] == library and meta["pipeline_tag"] == "zero-shot-image-classification"
        assert meta["base_model"] == "assets/base_clip/model.json" and "fixclip" in meta["tags"]
        scored = {r["dataset"]["name"]: [m["value"] for m in r["metrics"]] for r in meta["model-index"][0]["results"]}
        assert scored == {"toy_long": [45.8, 49.6], "toy_zeroshot": [91.9]}  # the export's own row
        assert "| toy_long | 45.8 / 49.6 | 53.2 / 51.6 | 17.9 / 15.0 |" in body
        assert "| toy_zeroshot | 91.9 | 88.5 | 97.5 |" in body
        assert "3000 synthetic 64 px images" in body and "`assets/tiny_llava/model`" in body
        assert '"mask_ratio": 0.75' in body and '"lr": 0.0005' in body


def test_a_model_card_without_an_evaluation_says_so(tmp_path):
    model = FixClip(build_clip(BASE_CONFIG, seed=0), FixClipConfig())
    folder = tmp_path / "model"
    save_model_folder(model, BASE_CONFIG, folder)
    run(ExportParams(model=str(folder)), tmp_path / "export", tmp_path / "export.json",
        facts=run_facts(load_params(REPO / "params.yaml")))
    card = (tmp_path / "export" / "open_clip" / CARD).read_text()
    assert "model-index" not in card and "did not score this model folder" in card
