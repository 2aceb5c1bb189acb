"""The shard stage: exact accounting, reproducible bytes, short-text rules, seeded split, safe tar reading."""
import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import shards
from pipeline.short_text import first_sentence
from pipeline.params.shard import ShardParams
from tests.conftest import file_digests


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add(archive, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def make_raw(folder, n=12, bad_image=(3,), failed=(11,)):
    """An img2dataset-shaped folder: NNNNN.tar + NNNNN.parquet, two shards."""
    folder.mkdir(parents=True)
    for shard in range(2):
        rows = []
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as archive:
            for i in range(shard * n // 2, (shard + 1) * n // 2):
                key = f"{shard:05d}{i:04d}"
                ok = i not in failed
                rows.append({"key": key, "uid": f"uid{i:03d}", "url": f"http://h/{i}.jpg", "caption": f"alt {i}",
                             "status": "success" if ok else "failed_to_download",
                             "original_width": 20, "original_height": 16, "long_description": f"truth {i}."})
                if ok:
                    _add(archive, f"{key}.jpg", b"garbage" if i in bad_image else _jpeg(i))
                    _add(archive, f"{key}.txt", f"alt {i}".encode())
        pd.DataFrame(rows).to_parquet(folder / f"{shard:05d}.parquet")
    return folder


def make_captions(folder, keys, filtered=(), missing=()):
    folder.mkdir(parents=True)
    rows = [{"key": k, "caption": f"A first sentence about {k}. More words follow here.", "prompt_id": 1,
             "model": "tiny", "finish_reason": "stop", "tokens": 9, "status": "too_short" if k in filtered else "ok"}
            for k in keys if k not in missing]
    pd.DataFrame(rows).to_parquet(folder / "00000.parquet")
    return folder


@pytest.fixture
def inputs(tmp_path):
    raw = make_raw(tmp_path / "raw")
    keys = [f"{s:05d}{i:04d}" for s in range(2) for i in range(s * 6, (s + 1) * 6)]
    captions = make_captions(tmp_path / "captions", keys, filtered={"000000001"}, missing={"000000002"})
    return raw, captions


def _read(tar_path):
    with tarfile.open(tar_path) as archive:
        return [(m, archive.extractfile(m).read()) for m in archive.getmembers()]


def test_every_image_accounted(tmp_path, inputs):
    raw, captions = inputs
    metrics = shards.run(ShardParams(samples_per_shard=3, val_fraction=0.3), raw, captions, tmp_path / "out")
    assert metrics["raw_images"] == 11  # 12 rows, one failed download
    assert metrics["captioned"] == 11
    assert (metrics["dropped_no_caption"], metrics["dropped_filtered_caption"],
            metrics["dropped_undecodable_image"]) == (1, 1, 1)
    assert metrics["train"] + metrics["val"] == 8 and metrics["val"] > 0
    index = pd.read_parquet(tmp_path / "out/index.parquet")
    assert len(index) == 11 and index["uid"].is_unique
    written = {m.name.split(".")[0] for split in ("train", "val") for tar in (tmp_path / "out" / split).glob("*.tar")
               for m, _ in _read(tar)}
    assert written == set(index.loc[index["fate"].isin(["train", "val"]), "uid"])
    assert metrics["train_shards"] == len(list((tmp_path / "out/train").glob("*.tar")))


def test_samples_hold_both_texts_and_metadata(tmp_path, inputs):
    raw, captions = inputs
    shards.run(ShardParams(val_fraction=0.0, short_text="first_sentence"), raw, captions, tmp_path / "out")
    (tar,) = (tmp_path / "out/train").glob("*.tar")
    members = dict((m.name, data) for m, data in _read(tar))
    meta = json.loads(members["uid000.json"])
    assert members["uid000.long.txt"].decode() == "A first sentence about 000000000. More words follow here."
    assert members["uid000.short.txt"].decode() == "A first sentence about 000000000."
    assert meta["alt_text"] == "alt 0" and meta["original_size"] == [20, 16]
    assert meta["long_description"] == "truth 0." and meta["caption_model"] == "tiny"
    assert Image.open(io.BytesIO(members["uid000.jpg"])).size == (16, 16)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m, _ in _read(tar))


def test_ground_truth_control_swaps_only_the_long_text(tmp_path, inputs):
    raw, captions = inputs
    captioned = shards.run(ShardParams(val_fraction=0.0, short_text="first_sentence"), raw, captions, tmp_path / "a")
    truth = shards.run(ShardParams(val_fraction=0.0, short_text="first_sentence", long_text="ground_truth"), raw,
                       captions, tmp_path / "b")
    assert captioned == truth  # the same images survive: only the text differs
    (tar,) = (tmp_path / "b/train").glob("*.tar")
    members = dict((m.name, data) for m, data in _read(tar))
    assert members["uid000.long.txt"].decode() == "truth 0." and members["uid000.short.txt"].decode() == "truth 0."


def test_two_runs_give_identical_bytes(tmp_path, inputs):
    raw, captions = inputs
    params = ShardParams(samples_per_shard=4, val_fraction=0.25)
    shards.run(params, raw, captions, tmp_path / "a")
    shards.run(params, raw, captions, tmp_path / "b")
    assert file_digests(tmp_path / "a") == file_digests(tmp_path / "b")
    shards.run(params.model_copy(update={"seed": 1}), raw, captions, tmp_path / "c")
    assert file_digests(tmp_path / "a") != file_digests(tmp_path / "c")


def test_short_text_rules():
    params = ShardParams(short_text="alt_text")
    assert shards.short_text(params, "u", "Long one. Two.", " alt ") == ("alt", "alt_text")
    assert shards.short_text(params, "u", "Long one. Two.", "") == ("Long one.", "first_sentence")
    assert first_sentence("No end at all") == "No end at all"
    assert first_sentence("Version 2.5 is out. Next.") == "Version 2.5 is out."
    both = ShardParams(short_text="both", alt_text_rate=0.3)
    rules = [shards.short_text(both, f"u{i}", "Long. Two.", "alt")[1] for i in range(2000)]
    assert abs(rules.count("alt_text") / 2000 - 0.3) < 0.05
    assert rules == [shards.short_text(both, f"u{i}", "Long. Two.", "alt")[1] for i in range(2000)]


def test_split_is_per_uid_and_stable_when_data_grows():
    params = ShardParams(val_fraction=0.2)
    small = {f"u{i}" for i in range(100) if shards.unit_hash(params.seed, "split", f"u{i}") < 0.2}
    large = {f"u{i}" for i in range(1000) if shards.unit_hash(params.seed, "split", f"u{i}") < 0.2}
    assert small == {u for u in large if int(u[1:]) < 100}
    assert 100 < len(large) < 300


def test_refuses_escaping_member(tmp_path, inputs):
    raw, captions = inputs
    with tarfile.open(raw / "00002.tar", "w") as archive:
        _add(archive, "../evil.jpg", _jpeg(0))
    pd.DataFrame(columns=["key", "status"]).to_parquet(raw / "00002.parquet")
    with pytest.raises(shards.ShardInputError, match=r"00002.tar: member '../evil.jpg' would escape"):
        shards.run(ShardParams(), raw, captions, tmp_path / "out")


def test_corrupt_tar_names_the_file(tmp_path, inputs):
    raw, captions = inputs
    data = (raw / "00001.tar").read_bytes()
    (raw / "00001.tar").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(shards.ShardInputError, match=r"00001.tar: corrupt tar"):
        shards.run(ShardParams(), raw, captions, tmp_path / "out")
