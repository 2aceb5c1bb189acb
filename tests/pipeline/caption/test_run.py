"""The caption client and stage against a real vLLM server serving the tiny LLaVA."""
import asyncio
import io
import json
import os
import signal
import tarfile
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.caption.client import CaptionServiceError, ImageItem, caption_prompt_ids, caption_stream, prompt_id_for
from pipeline.caption.filters import REJECTIONS, STATUSES
from pipeline.params.caption import Filters, Sampling
from pipeline.caption import run as caption_run
from pipeline.caption.run import FINGERPRINT_FILE, run
from pipeline.caption.shard_io import RUNS_FILE, expected_rows, write_shard
from tests.vllm_fixtures import (  # noqa: F401
    raw_shards, tiny_params, toy_image, vllm_fleet, vllm_pids, vllm_server,
)

pytestmark = pytest.mark.slow


def jpeg(i: int) -> bytes:
    buffer = io.BytesIO()
    toy_image(i).save(buffer, "JPEG")
    return buffer.getvalue()


def caption_items(params, urls, items) -> list:
    results = []

    async def source():
        for item in items:
            yield item

    async def collect(result):
        results.append(result)

    stats = asyncio.run(caption_stream(params, urls, source(), len(items), collect))
    return results, stats


def raw_keys(raw_dir: Path) -> dict[str, list[str]]:
    keys = {}
    for tar_path in sorted(raw_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            keys[tar_path.stem] = sorted(m.name[:-4] for m in tar if m.name.endswith(".jpg"))
    return keys


def caption_rows(out_dir: Path) -> dict[str, list[str]]:
    return {p.stem: pq.read_table(p).column("key").to_pylist() for p in sorted(out_dir.glob("*.parquet"))}


def indexed_rows(out_dir: Path) -> dict[str, list[tuple[str, int]]]:
    """shard -> its (key, caption_index) rows in file order."""
    tables = {p.stem: pq.read_table(p).to_pydict() for p in sorted(out_dir.glob("*.parquet"))}
    return {shard: list(zip(t["key"], t["caption_index"])) for shard, t in tables.items()}


def assert_counts_add_up(metrics: dict, n_images: int, per_image: int = 1) -> None:
    assert metrics["images"] == n_images and metrics["captions_per_image"] == per_image
    assert sum(metrics[status] for status in STATUSES) == metrics["captions"] == n_images * per_image


def test_stage_captions_every_image(raw_shards, vllm_server, tmp_path):  # noqa: F811
    params = tiny_params(endpoints=[vllm_server])
    metrics = run(params, raw_shards, tmp_path / "captions", tmp_path / "caption.json", tmp_path / "logs")
    keys = raw_keys(raw_shards)
    assert caption_rows(tmp_path / "captions") == keys
    n_images = sum(map(len, keys.values()))
    assert_counts_add_up(metrics, n_images)
    assert metrics == json.loads((tmp_path / "caption.json").read_text())
    assert metrics["failed"] == 0 and metrics["ok"] > 0 and metrics["images_per_s"] > 0
    table = pq.read_table(next((tmp_path / "captions").glob("*.parquet"))).to_pylist()
    assert all(row["caption"] and row["tokens"] > 0 and row["model"] == params.model for row in table)
    assert {row["prompt_id"] for row in table} <= set(range(len(params.prompts)))
    assert {row["caption_index"] for row in table} == {0}

    again = run(params, raw_shards, tmp_path / "captions", tmp_path / "caption.json", tmp_path / "logs")
    assert again["shards_skipped"] == again["shards"] and again["captioned_this_run"] == 0
    assert_counts_add_up(again, n_images)

    changed = tiny_params(endpoints=[vllm_server], sampling=Sampling(max_tokens=8))
    redone = run(changed, raw_shards, tmp_path / "captions", tmp_path / "caption.json", tmp_path / "logs")
    assert redone["captioned_this_run"] == n_images, "a caption param change recaptions everything"
    assert json.loads((tmp_path / "captions" / FINGERPRINT_FILE).read_text())["params"]["sampling"]["max_tokens"] == 8


def test_same_image_prompt_seed_same_caption(vllm_server):  # noqa: F811
    params = tiny_params(retry_rejected_with_other_prompt=False, sampling=Sampling(max_tokens=24, temperature=1.0))
    item = ImageItem("00000", "000000007", jpeg(7), "jpg")
    first = caption_items(params, [vllm_server], [item])[0][0]
    second = caption_items(params, [vllm_server], [item])[0][0]
    assert first.caption and first.caption == second.caption
    assert first.prompt_id == prompt_id_for(item.key, len(params.prompts))
    reseeded = tiny_params(retry_rejected_with_other_prompt=False, sampling=Sampling(max_tokens=24, seed=1))
    assert caption_items(reseeded, [vllm_server], [item])[0][0].caption != first.caption


def test_many_concurrent_requests(vllm_server):  # noqa: F811
    params = tiny_params(concurrency=24)
    items = [ImageItem("00000", f"{i:09d}", jpeg(i), "jpg") for i in range(48)]
    results, stats = caption_items(params, [vllm_server], items)
    assert sorted(r.key for r in results) == [item.key for item in items]
    assert all(r.caption for r in results) and stats["tokens"] > 0
    assert len({r.prompt_id for r in results}) > 1, "prompts vary across images"


def run_killed_after_first_shard(params, raw_dir: Path, out: Path, tmp_path: Path, monkeypatch,
                                 finished: dict[str, int]) -> None:
    """Run the stage; the vLLM process group it started is SIGKILLed right after its first shard is on disk (the real
    writer, wrapped), and `finished` gets that shard's {file: mtime_ns}. Raises what the stage raises.

    Killing from the writer, not from a thread that polls for the first file, leaves shards to do however fast the
    stage runs: a poll can wake after the stage finished (CI, 2026-12-02)."""
    before = set(vllm_pids())

    def write_then_kill(out_dir, shard, *args):
        write_shard(out_dir, shard, *args)
        if not finished:
            finished.update({p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.parquet")})
            os.killpg(os.getpgid(min(set(vllm_pids()) - before)), signal.SIGKILL)

    monkeypatch.setattr(caption_run, "write_shard", write_then_kill)
    try:
        run(params, raw_dir, out, tmp_path / "caption.json", tmp_path / "logs")
    finally:
        monkeypatch.undo()


def test_resume_after_server_killed_mid_stage(raw_shards, vllm_fleet, vllm_server, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "captions"
    killing = tiny_params(concurrency=1, sampling=Sampling(max_tokens=64), retries=1, backoff_s=0.1)
    before, finished_first = set(vllm_pids()), {}
    with pytest.raises(CaptionServiceError):
        run_killed_after_first_shard(killing, raw_shards, out, tmp_path, monkeypatch, finished_first)
    assert len(finished_first) == 1 < len(raw_keys(raw_shards))
    assert not (set(vllm_pids()) - before), "the killed server's processes are gone"

    metrics = run(tiny_params(endpoints=[vllm_server], concurrency=1, sampling=Sampling(max_tokens=64)),
                  raw_shards, out, tmp_path / "caption.json", tmp_path / "logs")
    keys = raw_keys(raw_shards)
    assert caption_rows(out) == keys, "no caption lost, none duplicated"
    assert metrics["shards_skipped"] >= len(finished_first)
    assert {name: (out / name).stat().st_mtime_ns for name in finished_first} == finished_first
    n_images = sum(map(len, keys.values()))
    assert_counts_add_up(metrics, n_images)
    assert not list(out.glob(".*.tmp"))

    # Speed survives the resume: both runs' work counts, the killed one's finished shards included.
    runs = json.loads((out / RUNS_FILE).read_text())["runs"]
    killed_images = sum(len(keys[Path(name).stem]) for name in finished_first)
    assert [r["images"] for r in runs] == [killed_images, n_images - killed_images] == [
        killed_images, metrics["captioned_this_run"]]
    assert metrics["working_runs"] == 2 and metrics["seconds"] == pytest.approx(sum(r["seconds"] for r in runs))
    assert metrics["images_per_s"] == round(n_images / sum(r["seconds"] for r in runs), 3)  # the metric's rounding
    idle = run(tiny_params(endpoints=[vllm_server], concurrency=1, sampling=Sampling(max_tokens=64)),
               raw_shards, out, tmp_path / "caption.json", tmp_path / "logs")
    assert idle["captioned_this_run"] == 0 and idle["shards_skipped"] == len(keys)
    assert idle["images_per_s"] == metrics["images_per_s"] > 0 and idle["working_runs"] == 2


def test_stage_writes_three_captions_per_image_and_resumes(raw_shards, vllm_server, tmp_path):  # noqa: F811
    params = tiny_params(endpoints=[vllm_server], captions_per_image=3)
    out, keys = tmp_path / "captions", raw_keys(raw_shards)
    n_images = sum(map(len, keys.values()))
    expected = {shard: expected_rows(shard_keys, 3) for shard, shard_keys in keys.items()}

    def stage(stage_params=params) -> dict:
        return run(stage_params, raw_shards, out, tmp_path / "caption.json", tmp_path / "logs")

    metrics = stage()
    assert indexed_rows(out) == expected, "one row per (key, caption_index), sorted by both"
    assert_counts_add_up(metrics, n_images, 3)
    assert metrics["captioned_this_run"] == n_images and metrics["captions_per_s"] > metrics["images_per_s"] > 0
    rows = [row for path in sorted(out.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    for key in {row["key"] for row in rows}:
        asked = [row["prompt_id"] for row in rows if row["key"] == key]
        assert len(set(asked)) == 3, "7 prompts >= 2 x 3: own prompts and retries are all distinct"
    assert all(row["prompt_id"] in caption_prompt_ids(params, row["key"], row["caption_index"]) for row in rows)

    again = stage()
    assert again["shards_skipped"] == again["shards"] and again["captioned_this_run"] == 0
    assert_counts_add_up(again, n_images, 3)

    short_of_captions, old_layout = sorted(keys)[1:3]
    table = pq.read_table(out / f"{short_of_captions}.parquet")
    pq.write_table(table.filter(pc.equal(table["caption_index"], 0)), out / f"{short_of_captions}.parquet")
    pq.write_table(pq.read_table(out / f"{old_layout}.parquet").drop_columns("caption_index"),
                   out / f"{old_layout}.parquet")
    untouched = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")
                 if p.stem not in (short_of_captions, old_layout)}
    redone = stage()
    assert redone["captioned_this_run"] == len(keys[short_of_captions]) + len(keys[old_layout]), (
        "only the shard lacking captions 1 and 2 and the one without caption_index are redone")
    assert {name: (out / name).stat().st_mtime_ns for name in untouched} == untouched
    assert indexed_rows(out) == expected
    assert_counts_add_up(redone, n_images, 3)

    single = stage(tiny_params(endpoints=[vllm_server]))
    assert single["captioned_this_run"] == n_images, "captions_per_image is part of the fingerprint"
    assert single["working_runs"] == 1, "runs of another fingerprint do not count in its speed"
    assert indexed_rows(out) == {shard: expected_rows(shard_keys, 1) for shard, shard_keys in keys.items()}
    assert_counts_add_up(single, n_images, 1)


@pytest.mark.parametrize("n_prompts, retried", [(7, True), (3, False)])
def test_rejected_caption_retries_k_prompts_on_only_when_one_is_free(vllm_server, n_prompts, retried):  # noqa: F811
    params = tiny_params(captions_per_image=3, prompts=tiny_params().prompts[:n_prompts],
                         filters=Filters(min_words=1000), sampling=Sampling(max_tokens=8))
    items = [ImageItem("00000", f"{i:09d}", jpeg(i), "jpg") for i in range(2)]
    results, stats = caption_items(params, [vllm_server], items)
    assert sorted((r.key, r.caption_index) for r in results) == expected_rows([item.key for item in items], 3)
    assert all(r.status in REJECTIONS for r in results), "every caption is too short for this filter"
    for result in results:
        asked = caption_prompt_ids(params, result.key, result.caption_index)
        assert len(asked) == (2 if retried else 1) and result.prompt_id == asked[-1]
    one_attempt_each = sum(r.tokens for r in results)
    assert (stats["tokens"] > one_attempt_each) if retried else (stats["tokens"] == one_attempt_each)
