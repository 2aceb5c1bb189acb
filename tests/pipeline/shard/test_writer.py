"""The shard stage: exact accounting, reproducible bytes, short-text rules, seeded split, safe tar reading."""
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import raw_shards
from pipeline.shard import file_limit, writer
from pipeline.shard import inputs as shard_inputs
from pipeline.shard.short_text import first_sentence
from pipeline.params.shard import ShardParams
from tests.conftest import REPO, file_digests

KEYS = [f"{s:05d}{i:04d}" for s in range(2) for i in range(s * 6, (s + 1) * 6)]
# A 2x2 PNG as literal bytes, so the pinned digests below do not depend on an image encoder's version.
TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000002000000020802000000fdd49a730000001649444154789c633ca1a1c1c0c0c0c4c0"
    "c0c0c0c000000dea011c249510340000000049454e44ae426082"
)
# sha256 of the tars that the shard stage of commit f11ee53 (before captions had a caption_index) wrote from the
# inputs of `test_one_caption_per_image_keeps_the_bytes_of_before`.
BYTES_BEFORE_SEVERAL_CAPTIONS = {
    "train/train-000000.tar": "73d9ef07d6aa2de433920b0a42a06bcb3371d4f3960bab86c332dca1f6b1d499",
    "train/train-000001.tar": "100854c8114a503fe2795a6da6af6c4148b93ef32af3d024893f8c09ed4d22d4",
    "train/train-000002.tar": "d4463c60ca64edbfff9c7e500fdc08c18382d0fa3c888e17fbb3de821c349b81",
    "val/val-000000.tar": "6e97c968ef6120892512af708d343d977f38060aabff874e1cbfd58a1cfeae5b",
}


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add(archive, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def make_raw(folder, n=12, bad_image=(3,), failed=(11,), image=_jpeg):
    """An img2dataset-shaped folder: NNNNN.tar + NNNNN.parquet, two shards; `image(i)` gives image i's bytes."""
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
                    _add(archive, f"{key}.jpg", b"garbage" if i in bad_image else image(i))
                    _add(archive, f"{key}.txt", f"alt {i}".encode())
        pd.DataFrame(rows).to_parquet(folder / f"{shard:05d}.parquet")
    return folder


def caption_text(key, caption_index):
    opening = "A first sentence" if caption_index == 0 else f"Caption {caption_index}"
    return f"{opening} about {key}. More words follow here."


def make_captions(folder, keys, filtered=(), missing=(), per_image=1, rejected=()):
    """Captions parquets as the caption stage writes them, one per raw shard (a key's first five digits):
    `per_image` rows per key (prompt 1, 2, ...); every caption of a `filtered` key and each (key, caption_index) in
    `rejected` is too_short."""
    folder.mkdir(parents=True)
    rows = [{"key": k, "caption_index": j, "caption": caption_text(k, j), "prompt_id": 1 + j, "model": "tiny",
             "finish_reason": "stop", "tokens": 9,
             "status": "too_short" if k in filtered or (k, j) in rejected else "ok"}
            for k in keys if k not in missing for j in range(per_image)]
    frame = pd.DataFrame(rows).astype({"caption_index": "int32"})
    for stem, part in frame.groupby(frame["key"].str[:5]):
        part.to_parquet(folder / f"{stem}.parquet")
    return folder


def regroup_captions(captions, raw):
    """The caption files rewritten one per raw shard of `raw`, by the keys each raw parquet lists."""
    frame = pd.concat([pd.read_parquet(path) for path in sorted(captions.glob("*.parquet"))])
    for path in captions.glob("*.parquet"):
        path.unlink()
    for parquet in sorted(raw.glob("*.parquet")):
        frame[frame["key"].isin(pd.read_parquet(parquet)["key"])].to_parquet(captions / parquet.name)


@pytest.fixture
def inputs(tmp_path):
    raw = make_raw(tmp_path / "raw")
    captions = make_captions(tmp_path / "captions", KEYS, filtered={"000000001"}, missing={"000000002"})
    return raw, captions


@pytest.fixture
def three_captions(tmp_path):
    """K = 3: image 0 has caption 1 rejected, image 4 caption 0 rejected, image 1 all three rejected."""
    raw = make_raw(tmp_path / "raw")
    captions = make_captions(tmp_path / "captions", KEYS, filtered={"000000001"}, missing={"000000002"},
                             per_image=3, rejected={("000000000", 1), ("000000004", 0)})
    return raw, captions


def _read(tar_path):
    with tarfile.open(tar_path) as archive:
        return [(m, archive.extractfile(m).read()) for m in archive.getmembers()]


def test_every_image_accounted(tmp_path, inputs):
    raw, captions = inputs
    metrics = writer.run(ShardParams(samples_per_shard=3, val_fraction=0.3), raw, captions, tmp_path / "out")
    assert metrics["raw_images"] == 11  # 12 rows, one failed download
    assert metrics["captioned"] == 11
    assert metrics["captions_per_image"] == 1 and metrics["substituted_captions"] == 0
    assert (metrics["dropped_no_caption"], metrics["dropped_filtered_caption"],
            metrics["dropped_undecodable_image"]) == (1, 1, 1)
    assert metrics["train"] + metrics["val"] == 8 and metrics["val"] > 0
    index = pd.read_parquet(tmp_path / "out/index.parquet")
    assert len(index) == 11 and index["uid"].is_unique
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["index.parquet", "train", "val"]
    written = {m.name.split(".")[0] for split in ("train", "val") for tar in (tmp_path / "out" / split).glob("*.tar")
               for m, _ in _read(tar)}
    assert written == set(index.loc[index["fate"].isin(["train", "val"]), "uid"])
    assert metrics["train_shards"] == len(list((tmp_path / "out/train").glob("*.tar")))


def test_samples_hold_both_texts_and_metadata(tmp_path, inputs):
    raw, captions = inputs
    writer.run(ShardParams(val_fraction=0.0, short_text="first_sentence"), raw, captions, tmp_path / "out")
    (tar,) = (tmp_path / "out/train").glob("*.tar")
    members = dict((m.name, data) for m, data in _read(tar))
    meta = json.loads(members["uid000.json"])
    assert members["uid000.long.txt"].decode() == "A first sentence about 000000000. More words follow here."
    assert members["uid000.short.txt"].decode() == "A first sentence about 000000000."
    assert meta["alt_text"] == "alt 0" and meta["original_size"] == [20, 16]
    assert meta["long_description"] == "truth 0." and meta["caption_model"] == "tiny"
    assert Image.open(io.BytesIO(members["uid000.jpg"])).size == (16, 16)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m, _ in _read(tar))
    assert meta["prompt_id"] == 1 and "prompt_ids" not in meta
    assert not any(".long_" in name for name in members), "one caption per image: no long_<j>.txt"


def test_ground_truth_and_alt_text_controls_swap_only_the_long_text(tmp_path, inputs):
    raw, captions = inputs
    captioned = writer.run(ShardParams(val_fraction=0.0, short_text="first_sentence"), raw, captions, tmp_path / "a")
    truth = writer.run(ShardParams(val_fraction=0.0, short_text="first_sentence", long_text="ground_truth"), raw,
                       captions, tmp_path / "b")
    assert captioned == truth  # the same images survive: only the text differs
    (tar,) = (tmp_path / "b/train").glob("*.tar")
    members = dict((m.name, data) for m, data in _read(tar))
    assert members["uid000.long.txt"].decode() == "truth 0." and members["uid000.short.txt"].decode() == "truth 0."
    alt = writer.run(ShardParams(val_fraction=0.0, long_text="alt_text"), raw, captions, tmp_path / "c")
    assert alt == captioned
    (tar,) = (tmp_path / "c/train").glob("*.tar")
    members = dict((m.name, data) for m, data in _read(tar))
    alt_text = json.loads(members["uid000.json"])["alt_text"]
    assert alt_text and members["uid000.long.txt"].decode() == alt_text != "truth 0."


@pytest.mark.parametrize("fixture", ["inputs", "three_captions"])  # one and three captions per image
def test_two_runs_give_identical_bytes(tmp_path, request, fixture):
    raw, captions = request.getfixturevalue(fixture)
    params = ShardParams(samples_per_shard=4, val_fraction=0.25)
    writer.run(params, raw, captions, tmp_path / "a")
    writer.run(params, raw, captions, tmp_path / "b")
    assert file_digests(tmp_path / "a") == file_digests(tmp_path / "b")
    writer.run(params.model_copy(update={"seed": 1}), raw, captions, tmp_path / "c")
    assert file_digests(tmp_path / "a") != file_digests(tmp_path / "c")


@pytest.fixture
def eight_raw_tars(tmp_path):
    """make_raw's two shards split in four each, two captions per image (one rejected, one image undecodable)."""
    raw = make_raw(tmp_path / "raw", n=48)
    keys = [f"{s:05d}{i:04d}" for s in range(2) for i in range(s * 24, (s + 1) * 24)]
    captions = make_captions(tmp_path / "captions", keys, filtered={"000000001"}, missing={"000000002"},
                             per_image=2, rejected={("000000005", 0)})
    for tar in sorted(raw.glob("*.tar")):  # split each raw shard in four, as img2dataset would write them
        frame = pd.read_parquet(raw / f"{tar.stem}.parquet")
        members = _read(tar)
        for part in range(4):
            stem = f"{int(tar.stem) * 4 + part + 10:05d}"
            chosen = frame.iloc[part::4]
            with tarfile.open(raw / f"{stem}.tar", "w") as archive:
                for member, data in members:
                    if member.name.split(".")[0] in set(chosen["key"]):
                        _add(archive, member.name, data)
            chosen.to_parquet(raw / f"{stem}.parquet")
        tar.unlink()
        (raw / f"{tar.stem}.parquet").unlink()
    regroup_captions(captions, raw)
    return raw, captions


def test_bytes_do_not_depend_on_the_number_of_workers(tmp_path, eight_raw_tars):
    """Eight raw tars, at least two shards written per split: one process and three give identical files."""
    raw, captions = eight_raw_tars
    params = ShardParams(samples_per_shard=6, val_fraction=0.3, workers=1)
    one = writer.run(params, raw, captions, tmp_path / "one")
    three = writer.run(params.model_copy(update={"workers": 3}), raw, captions, tmp_path / "three")
    assert one == three and one["train_shards"] >= 2 and one["val_shards"] >= 2
    assert one["dropped_undecodable_image"] == 1 and one["substituted_captions"] == 1
    assert file_digests(tmp_path / "one") == file_digests(tmp_path / "three")


@pytest.mark.slow
def test_ray_tasks_write_the_same_bytes(tmp_path, eight_raw_tars, monkeypatch):
    """distributor: ray on a local Ray instance (2 CPUs) writes what one local process writes."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    raw, captions = eight_raw_tars
    params = ShardParams(samples_per_shard=6, val_fraction=0.3, workers=1)
    local = writer.run(params, raw, captions, tmp_path / "local")
    on_ray = writer.run(params.model_copy(update={"distributor": "ray", "workers": 2}), raw, captions,
                        tmp_path / "ray")
    tasks = on_ray.pop("ray")["tasks_per_node"]
    assert local == on_ray and file_digests(tmp_path / "local") == file_digests(tmp_path / "ray")
    # one node here; each raw tar planned and each shard written by one task
    assert len(tasks) == 1 and sum(tasks.values()) == 8 + local["train_shards"] + local["val_shards"]
    assert not ray.is_initialized(), "the local instance is stopped afterwards"


@pytest.mark.parametrize("check", ["decode", "header"])
def test_truncated_image_is_dropped_by_either_check(tmp_path, check):
    raw = make_raw(tmp_path / "raw", bad_image=(), image=lambda i: _jpeg(i)[:-40] if i == 7 else _jpeg(i))
    captions = make_captions(tmp_path / "captions", KEYS)
    metrics = writer.run(ShardParams(check_images=check), raw, captions, tmp_path / "out")
    assert metrics["dropped_undecodable_image"] == 1 and metrics["train"] + metrics["val"] == 10
    index = pd.read_parquet(tmp_path / "out/index.parquet")
    assert index.loc[index["fate"] == "undecodable_image", "key"].tolist() == ["000010007"]


def test_short_text_rules():
    params = ShardParams(short_text="alt_text")
    assert writer.short_texts(params, ["u", "v"], ["Long one. Two.", "Long one. Two."], [" alt ", ""]) == (
        ["alt", "Long one."], ["alt_text", "first_sentence"])
    assert first_sentence("No end at all") == "No end at all"
    assert first_sentence("Version 2.5 is out. Next.") == "Version 2.5 is out."
    both = ShardParams(short_text="both", alt_text_rate=0.3)
    uids = [f"u{i}" for i in range(2000)]
    _, rules = writer.short_texts(both, uids, ["Long. Two."] * 2000, ["alt"] * 2000)
    assert abs(rules.count("alt_text") / 2000 - 0.3) < 0.05
    assert rules == writer.short_texts(both, uids[::-1], ["Long. Two."] * 2000, ["alt"] * 2000)[1][::-1]


def test_unit_hashes_are_per_uid_and_match_the_scalar_definition():
    """The split is stable when the data grows; the vector form equals sha256's first 8 bytes over 2**64."""
    small = {f"u{i}" for i, h in enumerate(writer.unit_hashes(0, "split", [f"u{i}" for i in range(100)])) if h < 0.2}
    large = {f"u{i}" for i, h in enumerate(writer.unit_hashes(0, "split", [f"u{i}" for i in range(1000)])) if h < 0.2}
    assert small == {u for u in large if int(u[1:]) < 100}
    assert 100 < len(large) < 300
    uids = ["a", "b\u00e9", "", "x" * 300]
    expected = [int.from_bytes(hashlib.sha256(f"7:order:{uid}".encode()).digest()[:8], "big") / 2**64 for uid in uids]
    assert writer.unit_hashes(7, "order", uids).tolist() == expected
    assert writer.unit_hashes(7, "order", []).tolist() == []


def test_refuses_escaping_member(tmp_path, inputs):
    raw, captions = inputs
    with tarfile.open(raw / "00002.tar", "w") as archive:
        _add(archive, "../evil.jpg", _jpeg(0))
    pd.DataFrame(columns=["key", "status"]).to_parquet(raw / "00002.parquet")
    with pytest.raises(writer.ShardInputError, match=r"00002.tar: member '../evil.jpg' would escape"):
        writer.run(ShardParams(), raw, captions, tmp_path / "out")


def test_corrupt_tar_names_the_file(tmp_path, inputs):
    raw, captions = inputs
    data = (raw / "00001.tar").read_bytes()
    (raw / "00001.tar").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(writer.ShardInputError, match=r"00001.tar: corrupt tar"):
        writer.run(ShardParams(), raw, captions, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == [], "the planned texts are scratch, gone after a failed run too"


def test_one_caption_per_image_keeps_the_bytes_of_before(tmp_path):
    raw = make_raw(tmp_path / "raw", image=lambda i: TINY_PNG)
    captions = make_captions(tmp_path / "captions", KEYS, filtered={"000000001"}, missing={"000000002"})
    writer.run(ShardParams(samples_per_shard=3, val_fraction=0.3, short_text="both"), raw, captions, tmp_path / "out")
    tars = {name: digest for name, digest in file_digests(tmp_path / "out").items() if name.endswith(".tar")}
    assert tars == BYTES_BEFORE_SEVERAL_CAPTIONS


def test_captions_without_caption_index_are_one_per_image(tmp_path, inputs):
    """Parquets of a caption stage from before `captions_per_image` give the same shards."""
    raw, captions = inputs
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for path in captions.glob("*.parquet"):
        pd.read_parquet(path).drop(columns="caption_index").to_parquet(legacy / path.name)
    writer.run(ShardParams(), raw, captions, tmp_path / "a")
    writer.run(ShardParams(), raw, legacy, tmp_path / "b")
    assert file_digests(tmp_path / "a") == file_digests(tmp_path / "b")


def _samples(out_dir):
    """uid -> {member suffix: bytes}, and the member suffixes of each sample in tar order, over every shard."""
    samples, orders = {}, {}
    for tar in sorted(out_dir.glob("*/*.tar")):
        for member, data in _read(tar):
            uid, suffix = member.name.split(".", 1)
            samples.setdefault(uid, {})[suffix] = data.decode() if suffix != "jpg" else data
            orders.setdefault(uid, []).append(suffix)
    return samples, orders


def test_three_captions_per_image(tmp_path, three_captions):
    raw, captions = three_captions
    metrics = writer.run(ShardParams(val_fraction=0.3, short_text="first_sentence"), raw, captions, tmp_path / "out")
    assert metrics["captions_per_image"] == 3 and metrics["captioned"] == 11
    assert metrics["substituted_captions"] == 2, "image 0's caption 1 and image 4's caption 0"
    assert (metrics["dropped_no_caption"], metrics["dropped_filtered_caption"],
            metrics["dropped_undecodable_image"]) == (1, 1, 1)
    assert metrics["train"] + metrics["val"] == 8
    samples, orders = _samples(tmp_path / "out")
    assert len(samples) == 8 and "uid001" not in samples, "all captions of image 1 rejected: filtered_caption"
    assert set(map(tuple, orders.values())) == {
        ("jpg", "long.txt", "long_0.txt", "long_1.txt", "long_2.txt", "short.txt", "json")}

    first = samples["uid000"]
    assert first["long.txt"] == first["long_0.txt"] == caption_text("000000000", 0)
    assert first["long_1.txt"] == caption_text("000000000", 0), "rejected caption 1 -> the first ok caption"
    assert first["long_2.txt"] == caption_text("000000000", 2)
    meta = json.loads(first["json"])
    assert meta["prompt_ids"] == [1, 2, 3] and meta["prompt_id"] == 1

    fourth = samples["uid004"]
    assert fourth["long.txt"] == fourth["long_0.txt"] == fourth["long_1.txt"] == caption_text("000000004", 1)
    assert fourth["short.txt"] == "Caption 1 about 000000004."
    assert json.loads(fourth["json"])["prompt_id"] == 2, "the long text's caption's prompt"
    assert [samples["uid005"][f"long_{j}.txt"] for j in range(3)] == [caption_text("000000005", j) for j in range(3)]


def test_three_captions_with_ground_truth_text(tmp_path, three_captions):
    raw, captions = three_captions
    params = ShardParams(val_fraction=0.0, long_text="ground_truth")
    truth = writer.run(params, raw, captions, tmp_path / "out")
    assert truth["substituted_captions"] == 0 and truth["train"] == 8 and truth["dropped_filtered_caption"] == 1
    samples, _ = _samples(tmp_path / "out")
    assert all(sample[f"long_{j}.txt"] == sample["long.txt"] == f"truth {int(uid[3:])}."
               for uid, sample in samples.items() for j in range(3))


def test_incomplete_or_repeated_captions_name_the_key(tmp_path):
    raw = make_raw(tmp_path / "raw")
    captions = make_captions(tmp_path / "captions", KEYS, per_image=3)
    frame = pd.read_parquet(captions / "00000.parquet")
    frame[(frame["key"] != "000000004") | (frame["caption_index"] != 1)].to_parquet(captions / "00000.parquet")
    with pytest.raises(writer.ShardInputError, match=r"key '000000004' has captions \[0, 2\]"):
        writer.run(ShardParams(), raw, captions, tmp_path / "out")
    pd.concat([frame, frame.iloc[:1]]).to_parquet(captions / "00000.parquet")
    with pytest.raises(writer.ShardInputError, match="key '000000000' has caption 0 more than once"):
        writer.run(ShardParams(), raw, captions, tmp_path / "out")
    frame.to_parquet(captions / "00000.parquet")
    moved = pd.read_parquet(captions / "00001.parquet")
    pd.concat([moved, frame.iloc[:1]]).to_parquet(captions / "00001.parquet")
    with pytest.raises(writer.ShardInputError, match="00001.parquet: key '000000000' is not in raw/00001.parquet"):
        writer.run(ShardParams(), raw, captions, tmp_path / "out")
    moved.to_parquet(captions / "00001.parquet")
    frame.to_parquet(captions / "00007.parquet")
    with pytest.raises(writer.ShardInputError, match="00007.parquet: captions of no raw shard"):
        writer.run(ShardParams(), raw, captions, tmp_path / "out")
    (captions / "00007.parquet").unlink()
    frame.assign(caption_index=frame["caption_index"] - (frame["key"] == "000000003")).to_parquet(
        captions / "00000.parquet")
    with pytest.raises(writer.ShardInputError, match=r"key '000000003' has captions \[-1, 0, 1\]"):
        writer.run(ShardParams(), raw, captions, tmp_path / "out")


def test_shard_order_breaks_hash_ties_by_uid():
    index = pd.DataFrame({"order": [0.5, 0.1, 0.5, 0.3, 0.5], "uid": ["b", "x", "a", "c", "ab"]})
    assert list(writer.shard_order(index)) == [1, 3, 2, 4, 0]
    index["order"] = [0.5, 0.1, 0.7, 0.3, 0.9]
    assert list(writer.shard_order(index)) == [1, 3, 0, 2, 4]


def test_inputs_read_per_raw_shard(tmp_path):
    """Records of successful downloads with every listed key; K from parquet statistics (or a file without them, or
    without caption_index); a missing caption file is no captions."""
    (tmp_path / "captions").mkdir()
    raw = tmp_path / "00000.parquet"
    pd.DataFrame({"key": ["a", "b", "c"], "status": ["success", "failed", "success"],
                  "original_width": [3, 4, None]}).to_parquet(raw)
    records, listed = raw_shards.read_records(raw)
    assert records["key"].tolist() == ["a", "c"] and listed == {"a", "b", "c"}
    assert records["original_width"].isna().tolist() == [False, True]
    assert raw_shards.read_records(tmp_path / "none.parquet")[0].empty
    first, second, legacy = (tmp_path / "captions" / f"{n}.parquet" for n in ("00000", "00001", "00002"))
    pd.DataFrame({"key": ["c", "a", "c", "a"], "caption_index": [1, 1, 0, 0], "caption": ["C1", "A1", "C0", "A0"],
                  "status": ["ok"] * 4}).to_parquet(first)
    pq.write_table(pa.table({"key": ["x"], "caption_index": [2]}), second, write_statistics=False)
    pd.DataFrame({"key": ["y"], "caption": ["Y."], "status": ["ok"]}).to_parquet(legacy)
    assert shard_inputs.captions_per_image([first]) == 2 and shard_inputs.captions_per_image([legacy]) == 1
    assert shard_inputs.captions_per_image([first, second, legacy]) == 3
    captions = shard_inputs.read_captions(first, 2, listed)
    assert captions["key"].tolist() == ["a", "a", "c", "c"] and captions["caption"].tolist() == ["A0", "A1", "C0", "C1"]
    assert shard_inputs.read_captions(legacy, 1, {"y"})["caption_index"].tolist() == [0]
    assert shard_inputs.read_captions(tmp_path / "captions/none.parquet", 2, listed).empty


def make_one_image_raw_shards(folder, count):
    """`count` raw shards of one image each, with their caption files: a shard of all samples draws on every one."""
    (folder / "raw").mkdir(parents=True)
    for stem in (f"{shard:05d}" for shard in range(count)):
        with tarfile.open(folder / "raw" / f"{stem}.tar", "w") as archive:
            _add(archive, f"{stem}0000.png", TINY_PNG)
        pd.DataFrame([{"key": f"{stem}0000", "uid": f"u{stem}", "status": "success", "caption": "alt"}]).to_parquet(
            folder / "raw" / f"{stem}.parquet")
    keys = [f"{shard:05d}0000" for shard in range(count)]
    make_captions(folder / "captions", keys)


def run_with_file_limit(folder, soft, hard, workers):
    """The shard stage on folder/raw in a fresh process whose open-file limit is (soft, hard)."""
    script = (f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
              "from pathlib import Path; from pipeline.shard import writer; from pipeline.params.shard import ShardParams\n"
              f"print(writer.run(ShardParams(workers={workers}, check_images='header'), Path('raw'), "
              "Path('captions'), Path('out'))['train'])")
    return subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"})


@pytest.mark.expensive
@pytest.mark.parametrize("workers", [1, 2])
def test_a_shard_may_draw_on_more_raw_shards_than_the_soft_file_limit(tmp_path, workers):
    """120 raw shards feed one shard: 240 open files, past a soft limit of 200 (the stage raises it to fit)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * 120 + file_limit.SPARE:
        pytest.skip(f"this machine's hard limit ({hard}) leaves no room to raise the soft limit into")
    make_one_image_raw_shards(tmp_path, 120)
    done = run_with_file_limit(tmp_path, 200, hard, workers)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "out" / "train").glob("*.tar"))) == 1 and int(done.stdout) >= 100


@pytest.mark.expensive
def test_a_hard_file_limit_too_low_fails_before_any_work_naming_the_key(tmp_path):
    make_one_image_raw_shards(tmp_path, 120)
    done = run_with_file_limit(tmp_path, 200, 200, 2)
    assert done.returncode != 0 and "shard.samples_per_shard" in done.stderr and "hard limit is 200" in done.stderr
    assert not list((tmp_path / "out").rglob("*.tar"))


def test_benchmark_copies_are_dropped_named_and_counted(tmp_path, inputs):
    """Images 0 and 1 are benchmark images: image 0 (kept so far) and image 1 (its caption filtered: a leak is named
    as such) become benchmark_duplicate, with the item and distance in the index; the workers fork after the stage
    has checked the fingerprint folder."""
    from pipeline.decontaminate import fingerprint
    from pipeline.decontaminate.downloaded import Decontamination
    from pipeline.decontaminate.index import read, write

    raw, captions = inputs
    pictures = np.stack([fingerprint.canonical(fingerprint.decode(_jpeg(i))) for i in (0, 1)])
    write(tmp_path / "prints", pd.DataFrame({"benchmark": ["a,b", "b"], "item": ["zero.jpg", "one.jpg"]}), pictures)
    read(tmp_path / "prints")
    check = Decontamination(tmp_path / "prints", ShardParams().decontaminate_threshold, "keep_ratio")
    metrics = writer.run(ShardParams(samples_per_shard=3, val_fraction=0.3, workers=2), raw, captions,
                         tmp_path / "out", check)
    assert (metrics["dropped_benchmark_duplicate"], metrics["dropped_filtered_caption"]) == (2, 0)
    assert metrics["benchmark_duplicates"] == {"a": 1, "b": 2}
    assert metrics["train"] + metrics["val"] == 7
    index = pd.read_parquet(tmp_path / "out/index.parquet").set_index("uid")
    copies = index[index["fate"] == "benchmark_duplicate"]
    assert copies["benchmark_item"].to_dict() == {"uid000": "zero.jpg", "uid001": "one.jpg"}
    assert (copies["benchmark_distance"] < 0.01).all() and index.loc["uid004", "benchmark"] is pd.NA
