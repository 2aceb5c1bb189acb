"""The held-out toy benchmark, model folders, and the evaluate stage end to end on the tiny base CLIP."""
import csv
import json
from pathlib import Path

import pytest
import torch

from fixclip.config import FixClipConfig
from fixclip.eval.encode import CachedEncoder
from fixclip.model_folder import load_base, load_model_folder
from fixclip.model import FixClip
from pipeline.params.evaluate import EvaluateParams, ToyBenchmarkParams
from pipeline.params.source import ToyWorldParams
from pipeline.toy_benchmark import HeldOutError, generate
from pipeline.toyworld import make_record
from pipeline.params.train import BaseModelParams
from stages.evaluate import run

REPO = Path(__file__).resolve().parents[2]
BASE_CONFIG, BASE_WEIGHTS = REPO / "assets/base_clip/model.json", REPO / "assets/base_clip/weights.pt"
WORLD = ToyWorldParams()
SMALL_TOY = ToyBenchmarkParams(num_images=24, num_classification_images=16)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_toy_benchmark_is_deterministic_and_disjoint_from_the_training_world(tmp_path):
    generate(SMALL_TOY, WORLD, tmp_path / "a")
    generate(SMALL_TOY, WORLD, tmp_path / "b")
    first = _files(tmp_path / "a")
    assert first == _files(tmp_path / "b")
    assert len([name for name in first if name.endswith(".png")]) == 24 + 16

    rows = [json.loads(line) for line in (tmp_path / "a/retrieval.jsonl").read_text().splitlines()]
    training = [make_record(WORLD.seed, i, WORLD.image_size, WORLD.grid, WORLD.min_objects, WORLD.max_objects,
                            WORLD.textures) for i in range(200)]
    assert not {r["uid"] for r in rows} & {t.uid for t in training}
    assert not {r["scene"] for r in rows} & {t.scene_json for t in training}
    assert not {r["long_caption"] for r in rows} & {t.long_description for t in training}
    assert all(len(r["long_caption"]) > len(r["short_caption"]) for r in rows)

    labels = [json.loads(line)["label"] for line in (tmp_path / "a/classification.jsonl").read_text().splitlines()]
    classes = json.loads((tmp_path / "a/classes.json").read_text())
    assert set(labels) <= set(classes["classnames"]) and len(classes["classnames"]) == 48

    with pytest.raises(HeldOutError, match="not held out"):
        generate(SMALL_TOY.model_copy(update={"seed": WORLD.seed}), WORLD, tmp_path / "c")


def _save_folder(folder: Path, model: FixClip, cfg: FixClipConfig) -> Path:
    """A trained-model folder without model.json (the fallback base config applies), DDP-style prefixed keys."""
    folder.mkdir(parents=True)
    (folder / "fixclip.json").write_text(cfg.model_dump_json())
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, folder / "weights.pt")
    return folder


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
    with pytest.raises(FileNotFoundError, match="fixclip.json"):
        load_model_folder(tmp_path / "missing", BASE_CONFIG)


def test_encoder_caches_per_model_and_keeps_order(tmp_path):
    generate(SMALL_TOY, WORLD, tmp_path)
    paths = sorted((tmp_path / "images").glob("*.png"))[:5]
    encoder = CachedEncoder(load_base(BASE_CONFIG, BASE_WEIGHTS), "base", batch_size=2)
    first = encoder.images(paths)
    assert torch.allclose(first.norm(dim=-1), torch.ones(5))
    assert torch.equal(encoder.images(paths[::-1]), first.flip(0))
    texts = ["a red circle " * k for k in range(1, 8)]
    embedded = encoder.texts(texts)
    with torch.no_grad():
        direct = torch.nn.functional.normalize(encoder.model.encode_text(encoder.tokenizer(texts)), dim=-1)
    torch.testing.assert_close(embedded, direct)
    encoder.model = None  # cached: a second call must not touch the model
    assert torch.equal(encoder.texts(texts[2:]), embedded[2:])


def test_stage_writes_base_and_trained_side_by_side(tmp_path):
    cfg = FixClipConfig.plain().with_(stretch=True)
    trained = _save_folder(tmp_path / "models/fixclip", FixClip(load_base(BASE_CONFIG, BASE_WEIGHTS).clip, cfg), cfg)
    params = EvaluateParams.model_validate({
        "trained_model": str(trained), "toy": SMALL_TOY.model_dump(), "batch_size": 16})
    base = BaseModelParams(config=str(BASE_CONFIG), weights=str(BASE_WEIGHTS))
    results = run(params, base, WORLD, toy_dir=tmp_path / "toy", metrics_path=tmp_path / "metrics/eval.json",
                  plots_dir=tmp_path / "plots/eval")

    written = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert set(written) == {"toy_long", "toy_short", "toy_zeroshot"}
    for name in ("toy_long", "toy_short"):
        for model in ("base", "trained"):
            metrics = written[name][model]
            assert {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} <= set(metrics)
            assert all(0 <= metrics[f"i2t_R@{k}"] <= 100 for k in (1, 5, 10)) and metrics["images"] == 24
    assert set(written["toy_zeroshot"]["trained"]) >= {"top1", "top5"}
    # Long descriptions exceed 77 tokens: the 248-token model sees their tails, so its long-text numbers differ.
    recalls = [{k: v for k, v in written["toy_long"][m].items() if "R@" in k} for m in ("base", "trained")]
    assert recalls[0] != recalls[1]

    for model in ("base", "trained"):
        with open(tmp_path / f"plots/eval/{model}.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["task"] for r in rows] == ["toy_long I2T R@1", "toy_long T2I R@1", "toy_short I2T R@1",
                                             "toy_short T2I R@1", "toy_zeroshot top-1"]
