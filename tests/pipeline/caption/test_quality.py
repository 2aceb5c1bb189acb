"""The caption stage scores toy-world captions against the scenes that travel with the raw images."""
import pandas as pd

from pipeline.caption.quality import caption_quality
from pipeline.toyworld.captions import describe
from pipeline.toyworld.scenes import make_record


def _write(tmp_path, captions: dict[str, str], with_scenes: bool = True):
    records = {f"{i:09d}": make_record(4, i, 32, 3, 3, 6, True) for i in range(len(captions))}
    raw = pd.DataFrame({"key": list(records), "status": "success"})
    if with_scenes:
        raw["scene"] = [r.scene_json for r in records.values()]
    (tmp_path / "raw").mkdir()
    raw.to_parquet(tmp_path / "raw/00000.parquet")
    (tmp_path / "captions").mkdir()
    pd.DataFrame({"key": list(captions), "caption": list(captions.values())}).to_parquet(
        tmp_path / "captions/00000.parquet")
    return records


def test_right_captions_score_one_and_a_failed_caption_counts_as_wrong(tmp_path):
    records = {f"{i:09d}": make_record(4, i, 32, 3, 3, 6, True) for i in range(6)}
    captions = {k: describe(r.scene_json, "sentences") for k, r in records.items()}
    captions["000000005"] = None  # a failed request
    _write(tmp_path, captions)
    quality = caption_quality(tmp_path / "raw", tmp_path / "captions", ["00000"])
    assert quality["captions"] == 6
    assert quality["exact"] == round(5 / 6, 4) and quality["count"] == round(5 / 6, 4)


def test_sources_without_scenes_have_no_quality(tmp_path):
    _write(tmp_path, {"000000000": "a caption"}, with_scenes=False)
    assert caption_quality(tmp_path / "raw", tmp_path / "captions", ["00000"]) is None
