"""Real `dvc repro` in a temporary git repository: outputs, caching, and which stages a params change reruns."""
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.caption.filters import STATUSES
from tests.conftest import REPO, copy_project, file_digests, run
from tests.stage_imports import imported_files, stage_module, stages
from tests.vllm_fixtures import tiny_captioners  # noqa: F401

pytestmark = pytest.mark.slow
VLLM_PYTHON = REPO / ".venv-vllm/bin/python"
# One library file per stage, plus files shared by several stages.
CODE_EDITS = ("pipeline/source/url_list.py", "pipeline/download/run.py", "pipeline/caption/client.py",
              "pipeline/shard/writer.py", "fixclip/loss.py", "fixclip/eval/metrics.py", "pipeline/toyworld/scenes.py",
              "fixclip/model.py", "core/outputs.py", "fixclip/export/hf_folder.py")


def _commit(root, message):
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], root)


def _shrink(root):
    """The embedded default, made small enough for a test (the copy has no vLLM environment of its own)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["source"]["toyworld"]["num_images"] = 40
    params["download"].update(number_sample_per_shard=16, processes_count=1, thread_count=4)
    params["caption"].update(python=str(VLLM_PYTHON))
    params["shard"].update(samples_per_shard=16, val_fraction=0.2)
    params["train"].update(epochs=None, samples=64, batch_size=16, num_workers=1, checkpoint_every=2,
                           shuffle_buffer=16)
    params["evaluate"]["toy"].update(num_images=24, num_layout_images=12, num_short_scene_images=20,
                                     num_classification_images=48)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _commit(root, "small")


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def _image_sizes(raw):
    sizes = set()
    for tar in raw.glob("*.tar"):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                if member.name.endswith(".jpg"):
                    sizes.add(Image.open(io.BytesIO(archive.extractfile(member).read())).size)
    return sizes


def _metrics(root, stage):
    return json.loads((root / "metrics" / f"{stage}.json").read_text())


def _assert_captioned_by(root, model, served_name, fingerprints: list[str]) -> None:
    """Every image has a counted status, caption.json and each caption row name the model, and the resume
    fingerprint differs from every earlier captioner's (appended to `fingerprints`)."""
    caption = _metrics(root, "caption")
    assert caption["model"] == str(model) and caption["served_model_name"] == served_name
    assert caption["images"] == _metrics(root, "shard")["raw_images"] == _metrics(root, "download")["success"]
    assert caption["captions"] == caption["images"] * caption["captions_per_image"] == sum(
        caption[status] for status in STATUSES) and caption["ok"] > 0
    models = {m for path in (root / "data/captions").glob("*.parquet")
              for m in pq.read_table(path, columns=["model"]).column("model").to_pylist()}
    assert models == {str(model)}
    fingerprint = (root / "data/captions/_fingerprint.json").read_text()
    assert fingerprint not in fingerprints
    fingerprints.append(fingerprint)


def _processes_in(root) -> list[int]:
    """Processes whose working folder is inside `root` (a leftover vLLM server would be one)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(root)):
                found.append(int(pid))
        except OSError:
            continue
    return found


_FIRST_RUN: dict = {}


@pytest.fixture(scope="session")
def first_run(tmp_path_factory):
    """The first `dvc repro` of the DAG test and the local run of the two-node Ray test (tests/test_ray_cluster.py),
    made once: the shrunk default with two training ranks (torchrun, batch 8 each; Ray Train's two workers take the
    same steps and batches). Session-scoped, so it runs before the Ray test's cluster starts. Returns {"root": the run's repository, "copy": a copy of it made
    right after the run, "stdout": repro's output}. The Ray test reruns in "root" (the samples' metadata holds each
    image's file:// URL, so a comparable run needs the same folder); the DAG test works on "copy". The run is kept
    in _FIRST_RUN: each module that imports this fixture gets its own instance of it."""
    if not _FIRST_RUN:
        root = copy_project(tmp_path_factory.mktemp("first_run") / "repo")
        _shrink(root)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["train"].update(batch_size=8, distributed={"nproc_per_node": 2, "nnodes": 1})
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _commit(root, "two ranks")
        stdout = run(["dvc", "repro"], root).stdout
        assert not _processes_in(root)  # no server left behind
        copy = tmp_path_factory.mktemp("first_run_copy") / "repo"
        shutil.copytree(root, copy, symlinks=True,  # DVC's own state (locks, hashes by inode) stays with root
                        ignore=lambda folder, names: ["tmp"] if Path(folder) == root / ".dvc" else [])
        _FIRST_RUN.update(root=root, copy=copy, stdout=stdout)
    return _FIRST_RUN


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="needs the vLLM environment (make envs)")
@pytest.mark.timeout(3600)  # eight pipeline runs on 40 images (11 min alone, 37 min on 2 busy cores); default 900 s
def test_full_dag_caches_and_reruns_only_what_changed(first_run, tiny_captioners):  # noqa: F811
    repo_copy = first_run["copy"]
    assert _ran(first_run["stdout"]) == {"source", "download", "caption", "benchmarks", "shard", "train", "evaluate",
                                         "export"}
    download, caption, shard = (_metrics(repo_copy, s) for s in ("download", "caption", "shard"))
    assert download["urls"] == 40 == download["success"] + sum(download["failures"].values())
    assert caption["images"] == download["success"] == shard["raw_images"]
    # The served toy captioner describes what is in the images (0.96 on 3000 images; 40 here, so a loose bound).
    assert caption["quality"]["captions"] == caption["images"] and caption["quality"]["colour"] > 0.7
    assert shard["train"] + shard["val"] + sum(v for k, v in shard.items() if k.startswith("dropped_")) == 40
    assert _image_sizes(repo_copy / "data/raw") == {(64, 64)}
    assert _metrics(repo_copy, "train")["samples"] == 64
    evaluation = _metrics(repo_copy, "eval")
    assert set(evaluation) == {"toy_long", "toy_long_cut77", "toy_layout", "toy_short", "toy_short_scenes",
                               "toy_zeroshot", "toy_zeroshot_colour", "toy_zeroshot_shape"}
    assert all(set(per_model) == {"base", "trained", "trained_without_prompts"} for per_model in evaluation.values())
    assert set(_metrics(repo_copy, "eval_dev")["dev"]) == set(evaluation)  # the development split, same benchmarks
    exported = _metrics(repo_copy, "export")
    assert all(exported[f]["max_abs_difference"] <= exported["atol"] for f in ("open_clip", "transformers"))
    assert exported["contents"]["scores"]["without_prompts"]["toy_long"] == [
        evaluation["toy_long"]["trained_without_prompts"][f"{d}_R@1"] for d in ("i2t", "t2i")]
    hf_config = json.loads((repo_copy / "models/export/transformers/config.json").read_text())
    assert hf_config["text_config"]["max_position_embeddings"] == 248
    for library in ("open_clip", "transformers"):  # each export's model card holds evaluate's numbers
        card = yaml.safe_load((repo_copy / "models/export" / library / "README.md").read_text().split("---\n")[1])
        scored = {r["dataset"]["name"]: [m["value"] for m in r["metrics"]] for r in card["model-index"][0]["results"]}
        assert scored == {benchmark: [round(per_model["trained_without_prompts"][key], 2) for key in
                                      (["top1"] if "top1" in per_model["trained"] else ["i2t_R@1", "t2i_R@1"])]
                          for benchmark, per_model in evaluation.items()}
    gallery = run(["python", "-m", "pipeline.gallery"], repo_copy)  # make repro's last step, on the real outputs
    assert "gallery: 40 URLs, every one accounted for: True" in gallery.stdout
    # The diffusion experiments on the run's outputs, as smoke runs: the CPU probe (make diffusion) and the GPU script.
    run(["python", "-m", "fixclip.cross_attention_probe", "--seeds", "0", "--epochs", "1", "--out", "build/probe"],
        repo_copy)
    probe = json.loads((repo_copy / "build/probe/probe.json").read_text())
    counted = {(rows[0]["before_objects"], rows[0]["after_objects"]) for rows in probe.values()}
    assert len(probe) == 4 and len(counted) == 1  # four encoders scored on the same objects
    run(["python", "-m", "fixclip.toy_diffusion", "--device", "cpu", "--steps", "2", "--batch-size", "4",
         "--perception-steps", "2", "--sample-steps", "2", "--test-scenes", "8", "--out", "build/toy_diffusion"],
        repo_copy)
    drawn = json.loads((repo_copy / "build/toy_diffusion/results.json").read_text())
    assert set(drawn["encoders"]) == {"base CLIP (77 tokens)", "FIX-CLIP"} and drawn["steps"] == 2
    assert Image.open(repo_copy / "build/toy_diffusion/samples.png").size == (8 * 32 * 3, 3 * 32 * 3)
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo_copy).stdout)["data"]
    assert "dvclive/train/plots/metrics/train/loss.tsv" in plots and "R@1 and top-1, base vs trained" in plots
    _commit(repo_copy, "run")

    again = run(["dvc", "repro"], repo_copy)
    assert _ran(again.stdout) == set() and "Data and pipelines are up to date." in again.stdout

    for edited in CODE_EDITS:  # an edit reruns exactly the stages that import the file
        path = repo_copy / edited
        original = path.read_text()
        path.write_text(original + "\n# edited\n")
        try:
            status = json.loads(run(["dvc", "status", "--json"], repo_copy).stdout)
        finally:
            path.write_text(original)
        importers = {name for name, stage in stages().items() if edited in imported_files(stage_module(stage))}
        assert importers and set(status) == importers, (edited, sorted(status), sorted(importers))

    shards = file_digests(repo_copy / "data/shards")
    run(["dvc", "repro", "-f", "-s", "shard"], repo_copy)
    assert file_digests(repo_copy / "data/shards") == shards  # byte-identical rewrite

    def exp_run(*changes, check=True):
        return run(["dvc", "exp", "run", *(arg for change in changes for arg in ("-S", change))], repo_copy,
                   check=check)

    def rerun(*changes):
        return _ran(exp_run(*changes).stdout)

    assert rerun("evaluate.batch_size=8") == {"evaluate", "export"}  # export reports evaluate's scores (and times)
    assert rerun("export.atol=0.0001") == {"export"}
    assert rerun("shard.short_text=first_sentence") == {"shard", "train", "evaluate", "export"}

    # Swap the captioner to the paper's family (LLaVA-NeXT: ~1,200 image tokens per 64 px image through its tiling).
    # At the default max_model_len it is refused before any server starts; with room it reruns caption and what
    # depends on it. Random weights rarely stop: keep the captions cut at max_tokens.
    fingerprints = [(repo_copy / "data/captions/_fingerprint.json").read_text()]
    llava_next = (f"caption.model={tiny_captioners['llava_next']}", "caption.served_model_name=tiny-llava-next")
    refused = exp_run(*llava_next, check=False)
    assert refused.returncode != 0 and "error: caption.server.max_model_len: 512 is too small for caption.model" in (
        refused.stdout + refused.stderr)
    assert not _processes_in(repo_copy)
    swapped = exp_run(*llava_next, "caption.server.max_model_len=2048", "caption.sampling.max_tokens=48",
                      "caption.filters.keep_truncated=true")
    assert _ran(swapped.stdout) == {"caption", "shard", "train", "evaluate", "export"}
    assert "<= caption.server.max_model_len 2048" in swapped.stdout
    _assert_captioned_by(repo_copy, tiny_captioners["llava_next"], "tiny-llava-next", fingerprints)

    # A train param reruns train and what follows; FIX-CLIP's switches are refused by another method.
    refused = exp_run("train.method=longclip", "train.fixclip.regional_prompts=false", check=False)
    assert refused.returncode != 0 and "train.fixclip.regional_prompts: set, but train.method is 'longclip'" in (
        refused.stdout + refused.stderr)
    assert rerun("train.method=longclip", "train.fixclip.regional_prompts=true") == {"train", "evaluate", "export"}

    # One run from download on: smaller images, Qwen2-VL (dynamic resolution: a few image tokens, so the default
    # max_model_len) writing 3 captions per image from 3 prompts, and Holistic CLIP reading all 3.
    assert rerun("download.image_size=48", f"caption.model={tiny_captioners['qwen2_vl']}",
                 "caption.served_model_name=tiny-qwen2-vl", "caption.server.max_model_len=512",
                 "caption.captions_per_image=3", "train.method=holistic") == {
        "download", "caption", "benchmarks", "shard", "train", "evaluate", "export"}
    assert _image_sizes(repo_copy / "data/raw") == {(48, 48)}
    _assert_captioned_by(repo_copy, tiny_captioners["qwen2_vl"], "tiny-qwen2-vl", fingerprints)
    caption = _metrics(repo_copy, "caption")
    assert caption["captions_per_image"] == 3 and caption["images"] == _metrics(repo_copy, "shard")["raw_images"]
    assert set(_metrics(repo_copy, "eval")["toy_long"]) == {"base", "trained"}
    assert "HolisticClip" in _metrics(repo_copy, "export")["transformers"]["not_exported"]
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo_copy).stdout)
    assert shown[""]["data"]["metrics/download.json"]["data"]["success"] == 40
    assert not _processes_in(repo_copy)


def test_bad_params_fail_repro_naming_the_key(repo_copy):
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["download"]["thread_count"] = "many"
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(["dvc", "repro"], repo_copy, check=False)
    assert result.returncode != 0
    assert "download.thread_count: expected int, got 'many'" in result.stderr + result.stdout
    assert not (repo_copy / "data/urls.parquet").exists()
