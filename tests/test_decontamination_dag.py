"""Real `dvc repro`: near copies of benchmark images injected into the training URL list never reach the shards,
and changing the benchmark list reruns only the benchmarks and shard stages."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.decontaminate.copies import COPIES
from pipeline.toyworld.scenes import make_record
from tests.conftest import run
from tests.test_dvc_pipeline import VLLM_PYTHON, _commit, _metrics, _ran, _shrink

pytestmark = pytest.mark.slow
PHOTOS = ("astronaut", "coffee", "rocket", "chelsea")  # a real benchmark: one class folder per photo
CLEAN_PHOTOS = ("camera", "coins")
# Copies of toy benchmark images: the kinds bench/decontaminate.py measures at 100% recall on the toy world; its
# JPEG-30/50 copies and 50% downsizes of 64 px drawings are found 96.7-99.7% of the time (README), not always.
TOY_KINDS = ("resize 75%", "resize 125%", "resize 150%", "jpeg 95", "crop 10%", "greyscale", "png <-> jpeg")


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="needs the vLLM environment (make envs)")
@pytest.mark.timeout(1800)
def test_injected_benchmark_copies_are_dropped_and_counted(repo_copy):
    from tests.pipeline.decontaminate.test_lookup import photo

    _shrink(repo_copy)
    root = repo_copy
    for name in PHOTOS:
        (root / "data/benchmarks/photos" / name).mkdir(parents=True)
        photo(name).save(root / "data/benchmarks/photos" / name / f"{name}.png")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["benchmarks"].append({"name": "photos", "kind": "imagefolder",
                                             "root": "data/benchmarks/photos"})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "benchmarks"], root)
    assert _metrics(root, "benchmarks")["images_per_benchmark"]["photos"] == 4

    inputs, rows, expected = root / "inputs", [], {}
    inputs.mkdir()
    rng = np.random.default_rng(0)
    toy = [json.loads(line) for line in (root / "data/toy_benchmark/retrieval.jsonl").read_text().splitlines()]
    from PIL import Image

    def add(name: str, data: bytes, suffix: str, copy_of: str | None):
        path = inputs / f"{name}.{suffix}"
        path.write_bytes(data)
        rows.append({"url": f"file:inputs/{path.name}", "caption": name})
        if copy_of:
            expected[path.name] = copy_of

    for i, kind in enumerate(COPIES):
        source = PHOTOS[i % len(PHOTOS)]
        add(f"photo_{i}", *COPIES[kind](photo(source), rng), f"data/benchmarks/photos/{source}/{source}.png")
    for i, kind in enumerate(TOY_KINDS):
        item = f"data/toy_benchmark/{toy[i]['image']}"
        with Image.open(root / item) as image:
            image.load()
            add(f"toy_{i}", *COPIES[kind](image, rng), item)
    for name in CLEAN_PHOTOS:
        add(name, *COPIES["png <-> jpeg"](photo(name), rng), None)
    for i in range(10):  # scenes of another world seed: toy images, none of them a benchmark scene
        add(f"scene_{i}", *COPIES["png <-> jpeg"](make_record(99, i, 64, 3, 3, 6, True).image, rng), None)
    pd.DataFrame(rows).to_csv(inputs / "urls.csv", index=False)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["source"]["kind"] = "url_list"
    params["source"]["url_list"].update(path="inputs/urls.csv")
    params["download"]["allow_file_roots"] = ["inputs"]  # the guard opens file: URLs under data/toyworld only
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _commit(root, "injected")

    ran = _ran(run(["dvc", "repro", "shard"], root).stdout)
    assert ran == {"source", "download", "caption", "shard"}
    shard = _metrics(root, "shard")
    assert shard["raw_images"] == len(rows) == _metrics(root, "download")["success"]
    assert shard["dropped_benchmark_duplicate"] == len(expected)
    assert shard["benchmark_duplicates"]["photos"] == len(COPIES)
    toy_names = ("toy_long", "toy_long_cut77", "toy_short")  # the retrieval images' benchmarks
    assert all(shard["benchmark_duplicates"][name] == len(TOY_KINDS) for name in toy_names)
    assert shard["train"] + shard["val"] + sum(v for k, v in shard.items() if k.startswith("dropped_")) == len(rows)
    index = _index_with_urls(root)
    dropped = index[index["fate"] == "benchmark_duplicate"]
    assert dict(zip(dropped["file"], dropped["benchmark_item"])) == expected
    assert (dropped["benchmark_distance"] <= params["shard"]["decontaminate_threshold"]).all()
    assert index.loc[~index["file"].isin(expected), "benchmark"].isna().all()
    _commit(root, "run")
    not_run = set(json.loads(run(["dvc", "status", "--json"], root).stdout))  # this test stops at shard
    assert not_run == {"train", "evaluate", "export"}

    # Benchmarks change: without the photos, their copies are training data again. Only the benchmarks stage (and
    # evaluate, which reads the list, had it run) sees the change; repro reruns benchmarks and shard, not download
    # or caption.
    params["evaluate"]["benchmarks"] = [b for b in params["evaluate"]["benchmarks"] if b["name"] != "photos"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(json.loads(run(["dvc", "status", "--json"], root).stdout)) == not_run | {"benchmarks"}
    assert _ran(run(["dvc", "repro", "shard"], root).stdout) == {"benchmarks", "shard"}
    shard = _metrics(root, "shard")
    assert shard["dropped_benchmark_duplicate"] == len(TOY_KINDS) and "photos" not in shard["benchmark_duplicates"]
    _commit(root, "no photos")

    # A benchmark file changes: the fingerprints are made again.
    photo("camera").save(root / "data/benchmarks/photos/coffee/coffee.png")
    assert set(json.loads(run(["dvc", "status", "--json"], root).stdout)) == not_run | {"benchmarks"}


def _index_with_urls(root) -> pd.DataFrame:
    """The shard index with each image's source file name (img2dataset records the URL, made absolute)."""
    index = pd.read_parquet(root / "data/shards/index.parquet")
    raw = pd.concat([pd.read_parquet(p, columns=["key", "url"]) for p in sorted((root / "data/raw").glob("*.parquet"))])
    raw["file"] = raw["url"].str.rsplit("/", n=1).str[-1]
    return index.merge(raw, on="key", how="left", validate="one_to_one")
