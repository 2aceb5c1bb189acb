"""How right the served captioner is, on every run: toy-world captions parsed against their scenes.

The source's `scene` column travels with every image through img2dataset (raw shard parquets), so each caption row
is scored against its image's ground truth by `pipeline.toyworld.captions.score_captions`. Every row counts, whatever
its filter status (a failed request is a wrong caption). Sources without scenes (a URL list) have no quality.
"""
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.toyworld.captions import score_captions


def ground_truth_scenes(raw_dir: Path) -> dict[str, str]:
    """key -> scene JSON of every successfully downloaded image that has one."""
    scenes = {}
    for parquet in sorted(Path(raw_dir).glob("*.parquet")):
        if "scene" not in pq.read_schema(parquet).names:
            continue
        table = pq.read_table(parquet, columns=["key", "status", "scene"]).to_pydict()
        scenes.update((k, s) for k, status, s in zip(table["key"], table["status"], table["scene"])
                      if status == "success" and s)
    return scenes


def caption_quality(raw_dir: Path, captions_dir: Path, shards: list[str]) -> dict | None:
    """Per-attribute accuracy and the share of fully right captions over all caption rows; None without scenes."""
    scenes = ground_truth_scenes(raw_dir)
    if not scenes:
        return None
    pairs = []
    for shard in shards:
        table = pq.read_table(Path(captions_dir) / f"{shard}.parquet", columns=["key", "caption"]).to_pydict()
        pairs += [(caption or "", scenes[key]) for key, caption in zip(table["key"], table["caption"])]
    return {"captions": len(pairs), **{k: round(v, 4) for k, v in score_captions(pairs).items()}}
