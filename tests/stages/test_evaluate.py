"""Model folders, and the evaluate stage end to end on the tiny base CLIP."""
import csv
import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from fixclip.base_model import build_clip
from fixclip.config import FixClipConfig
from fixclip.model_folder import load_base, load_model_folder
from fixclip.model import FixClip
from pipeline.params import ParamsError
from pipeline.params.evaluate import EvaluateParams, ToyBenchmarkParams
from pipeline.params.download import DownloadParams
from pipeline.params.source import ToyWorldParams
from pipeline.toyworld.benchmark import generate
from pipeline.params.train import BaseModelParams
from stages.evaluate import check_extra_models, run

REPO = Path(__file__).resolve().parents[2]
BASE_CONFIG, BASE_WEIGHTS = REPO / "assets/base_clip/model.json", REPO / "assets/base_clip/weights.pt"
WORLD = ToyWorldParams()
DOWNLOAD = DownloadParams()
SMALL_TOY = ToyBenchmarkParams(num_images=24, num_layout_images=12, num_short_scene_images=20,
                               num_classification_images=16)


def _save_folder(folder: Path, model: FixClip, cfg: FixClipConfig) -> Path:
    """A trained-model folder without model.json (the fallback base config applies), DDP-style prefixed keys."""
    folder.mkdir(parents=True)
    (folder / "fixclip.json").write_text(cfg.model_dump_json())
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, folder / "weights.pt")
    return folder


def _toy_splits(tmp_path: Path) -> dict:
    """The benchmarks stage's part: both splits of the small toy benchmark; run()'s keyword arguments for them."""
    generate(SMALL_TOY, WORLD, DOWNLOAD, tmp_path / "toy")
    generate(SMALL_TOY.development(), WORLD, DOWNLOAD, tmp_path / "toy_dev")
    return {"toy_dir": tmp_path / "toy", "dev_toy_dir": tmp_path / "toy_dev",
            "dev_metrics_path": tmp_path / "metrics/eval_dev.json", "results_path": tmp_path / "metrics/results.json"}


@pytest.mark.expensive
def test_stage_writes_base_and_trained_side_by_side(tmp_path):
    cfg = FixClipConfig.plain().with_(stretch=True)
    trained = _save_folder(tmp_path / "models/fixclip", FixClip(load_base(BASE_CONFIG, BASE_WEIGHTS).clip, cfg), cfg)
    params = EvaluateParams.model_validate({
        "trained_model": str(trained), "toy": SMALL_TOY.model_dump(), "batch_size": 16})
    base = BaseModelParams(config=str(BASE_CONFIG), weights=str(BASE_WEIGHTS))
    results = run(params, base, metrics_path=tmp_path / "metrics/eval.json", plots_dir=tmp_path / "plots/eval",
                  **_toy_splits(tmp_path))

    written = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert written == json.loads(json.dumps(results))
    headline = json.loads((tmp_path / "metrics/results.json").read_text())  # the trained model's R@1 / top-1 alone
    assert headline["toy_long"] == {d: round(written["toy_long"]["trained"][f"{d}_R@1"], 1) for d in ("i2t", "t2i")}
    assert headline["toy_zeroshot"] == {"top1": round(written["toy_zeroshot"]["trained"]["top1"], 1)}
    assert set(headline) == set(written)
    assert set(written) == {"toy_long", "toy_long_cut77", "toy_layout", "toy_short", "toy_short_scenes",
                            "toy_zeroshot", "toy_zeroshot_colour", "toy_zeroshot_shape"}
    # The development split: the same benchmarks and models on other scenes, so other scores.
    dev = json.loads((tmp_path / "metrics/eval_dev.json").read_text())["dev"]
    assert set(dev) == set(written) and set(dev["toy_long"]) == {"base", "trained"}
    assert dev["toy_long"]["base"]["images"] == 24 and dev["toy_long"]["base"] != written["toy_long"]["base"]
    for name, images in (("toy_long", 24), ("toy_short", 24), ("toy_layout", 12), ("toy_short_scenes", 20)):
        for model in ("base", "trained"):
            metrics = written[name][model]
            assert {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} <= set(metrics)
            assert all(0 <= metrics[f"i2t_R@{k}"] <= 100 for k in (1, 5, 10)) and metrics["images"] == images
    for name, classes in (("toy_zeroshot", 48), ("toy_zeroshot_colour", 8), ("toy_zeroshot_shape", 6)):
        assert set(written[name]["trained"]) >= {"top1", "top5"} and written[name]["trained"]["classes"] == classes
    # Long descriptions exceed 77 tokens: the 248-token model sees their tails, so its long-text numbers differ.
    recalls = [{k: v for k, v in written["toy_long"][m].items() if "R@" in k} for m in ("base", "trained")]
    assert recalls[0] != recalls[1]
    # Cut to 77 tokens, the texts are what the 77-token base reads anyway: its numbers do not move.
    cut = {k: v for k, v in written["toy_long_cut77"]["base"].items() if "R@" in k}
    assert cut == recalls[0]

    for model in ("base", "trained"):
        with open(tmp_path / f"plots/eval/{model}.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["task"] for r in rows] == [
            "toy_long I2T R@1", "toy_long T2I R@1", "toy_long_cut77 I2T R@1", "toy_long_cut77 T2I R@1",
            "toy_layout I2T R@1", "toy_layout T2I R@1", "toy_short I2T R@1", "toy_short T2I R@1",
            "toy_short_scenes I2T R@1", "toy_short_scenes T2I R@1", "toy_zeroshot top-1", "toy_zeroshot_colour top-1",
            "toy_zeroshot_shape top-1"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_fails_before_any_work(tmp_path):
    params = EvaluateParams.model_validate({"toy": SMALL_TOY.model_dump(), "device": "cuda", "trained_model": None})
    base = BaseModelParams(config=str(BASE_CONFIG), weights=str(BASE_WEIGHTS))
    with pytest.raises(ParamsError, match="evaluate.device"):
        run(params, base, toy_dir=tmp_path / "toy", dev_toy_dir=tmp_path / "toy_dev",
            metrics_path=tmp_path / "eval.json", dev_metrics_path=tmp_path / "eval_dev.json",
            results_path=tmp_path / "results.json", plots_dir=tmp_path / "plots")
    assert not any(tmp_path.iterdir())


def test_extra_models_are_scored_beside_base_and_trained(tmp_path, monkeypatch):
    """A checkpoint in Long-CLIP's released format (a tiny one: heads of 64 channels as OpenAI's layout needs)."""
    from tests.fixclip.test_checkpoint_formats import _write_longclip  # here: that module imports this one

    monkeypatch.chdir(tmp_path)
    tiny = build_clip({"embed_dim": 64, "quick_gelu": True,
                       "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 1, "head_width": 64},
                       "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}},
                      seed=0)
    tables = [0.01 * torch.randn(248, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    (tmp_path / "models/extra").mkdir(parents=True)
    _write_longclip(tiny, tables, tmp_path / "models/extra/longclip-tiny.pt")
    cfg = FixClipConfig.plain().with_(stretch=True)
    trained = _save_folder(tmp_path / "models/fixclip", FixClip(load_base(BASE_CONFIG, BASE_WEIGHTS).clip, cfg), cfg)
    params = EvaluateParams.model_validate({
        "trained_model": str(trained), "toy": SMALL_TOY.model_dump(), "batch_size": 16,
        "benchmarks": [{"name": "toy_long", "kind": "toy", "task": "long_retrieval"}],
        "extra_models": [{"name": "longclip-tiny", "path": "models/extra/longclip-tiny.pt"}]})
    base = BaseModelParams(config=str(BASE_CONFIG), weights=str(BASE_WEIGHTS))
    results = run(params, base, metrics_path=tmp_path / "eval.json", plots_dir=tmp_path / "plots",
                  **_toy_splits(tmp_path))
    assert list(results["toy_long"]) == ["base", "trained", "longclip-tiny"]
    assert results["toy_long"]["longclip-tiny"]["images"] == 24
    assert json.loads((tmp_path / "eval.json").read_text())["toy_long"]["longclip-tiny"] == json.loads(
        json.dumps(results["toy_long"]["longclip-tiny"]))


def test_a_model_with_prompts_is_also_scored_without_them(tmp_path):
    """The trained row keeps the regional prompts (fixclip.load's default); trained_without_prompts is its backbone
    alone, what the exports hold."""
    cfg = FixClipConfig.plain().with_(regional_prompts=True)
    model = FixClip(load_base(BASE_CONFIG, BASE_WEIGHTS).clip, cfg)
    with torch.no_grad():
        model.prompts.tokens.normal_(generator=torch.Generator().manual_seed(0))
    trained = _save_folder(tmp_path / "models/fixclip", model, cfg)
    params = EvaluateParams.model_validate({
        "trained_model": str(trained), "toy": SMALL_TOY.model_dump(), "batch_size": 16,
        "benchmarks": [{"name": "toy_long", "kind": "toy", "task": "long_retrieval"}]})
    base = BaseModelParams(config=str(BASE_CONFIG), weights=str(BASE_WEIGHTS))
    results = run(params, base, metrics_path=tmp_path / "eval.json", plots_dir=tmp_path / "plots",
                  **_toy_splits(tmp_path))["toy_long"]
    assert list(results) == ["base", "trained", "trained_without_prompts"]
    recall = [{k: v for k, v in results[row].items() if "R@" in k} for row in results]
    assert recall[2] == recall[0]  # the prompts are all this model adds to the base
    assert recall[1] != recall[0]


@pytest.mark.parametrize("extra, message", [
    ({"name": "x", "path": "models/extra/none.pt"}, "path: not found"),
    ({"name": "trained", "path": "models/extra/README.md"}, "taken by the base or the trained model"),
])
def test_extra_models_are_refused_naming_the_key(extra, message, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ValidationError, match=message):
        EvaluateParams.model_validate({"extra_models": [extra]})


def test_an_extra_model_outside_the_tracked_folder_is_refused_naming_the_key(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    extra = tmp_path / "elsewhere/ViT-B-16.pt"
    extra.write_bytes(b"")
    params = EvaluateParams.model_validate({"extra_models": [{"name": "x", "path": str(extra)}]})
    with pytest.raises(ParamsError, match=r"evaluate\.extra_models\.0\.path: .* is not under models/extra/"):
        check_extra_models(params, Path("models/extra"))
    check_extra_models(params, tmp_path / "elsewhere")  # under the folder given: accepted
