"""The run summary names what failed, says which stages have not run, and tabulates the evaluation."""
import json
import subprocess
import sys
from pathlib import Path

from pipeline.report import main, metrics_file, report
from tests.conftest import assert_user_error

REPO = Path(__file__).resolve().parents[2]
DAG_ORDER = ("source", "download", "caption", "benchmarks", "shard", "train", "evaluate", "export")


def metrics(**overrides) -> dict:
    """A full set of metrics files shaped like a real run's, each dict updated with `overrides[<stage>]`."""
    files = {
        "source": {"kind": "url_list", "rows": 1000, "urls": 990, "dropped_empty": 0, "dropped_invalid": 0,
                   "dropped_duplicate": 0, "dropped_sampling": 10},
        "download": {"urls": 990, "success": 990, "failed": 0, "failed_to_download": 0, "failed_to_resize": 0,
                     "failures": {}, "shards": 1, "seconds": 20.0, "images_per_s": 49.5},
        "caption": {"images": 990, "captions": 990, "captions_per_image": 1, "ok": 990, "empty": 0, "refusal": 0,
                    "too_short": 0, "repetitive": 0, "truncated": 0, "failed": 0, "caption_tokens": 80000,
                    "shards": 1, "shards_skipped": 0, "captioned_this_run": 990, "generated_tokens_this_run": 80000,
                    "transient_retries": 0, "seconds": 100.0, "images_per_s": 9.9, "captions_per_s": 9.9,
                    "tokens_per_s": 800.0},
        "benchmarks": {"images": 1980, "images_per_benchmark": {"toy_long": 500, "toy_zeroshot": 480}},
        "shard": {"raw_images": 990, "captioned": 990, "captions_per_image": 1, "substituted_captions": 0,
                  "dropped_no_caption": 0, "dropped_filtered_caption": 0, "dropped_undecodable_image": 0,
                  "train": 940, "val": 50, "train_shards": 1, "val_shards": 1},
        "train": {"steps": 29, "samples": 928, "samples_per_step": 32, "world_size": 1, "resumed_from_step": 0,
                  "skipped_steps": 0, "samples_per_s": 60.0, "final_loss": 4.25, "final_lr": 1e-8},
        "evaluate": {
            "long": {model: {"i2t_R@1": i2t, "i2t_R@5": 50.0, "t2i_R@1": t2i, "t2i_R@5": 60.0, "images": 100,
                             "texts": 100, "duplicate_captions": 0, "seconds": 1.0}
                     for model, i2t, t2i in (("base", 7.5, 3.64), ("trained", 45.0, 47.36))},
            "zeroshot": {model: {"top1": top1, "top5": 80.0, "classes": 48, "images": 480, "seconds": 0.5}
                         for model, top1 in (("base", 18.125), ("trained", 17.71))},
        },
        "export": {"atol": 1e-5, "open_clip": {"bytes": 7_463_078, "max_abs_difference": 0.0, "seconds": 2.4},
                   "transformers": {"bytes": 11_110_947, "max_abs_difference": 6e-8, "seconds": 2.8},
                   "contents": {"image_tower": "backbone without the regional prompts"}},
    }
    for stage, changes in overrides.items():
        files[stage].update(changes)
    return files


def write(folder: Path, files: dict) -> Path:
    for stage, content in files.items():
        metrics_file(stage, folder).write_text(json.dumps(content))
    return folder


def stage_line(text: str, stage: str) -> str:
    [line] = [line for line in text.splitlines() if line.startswith((f"{stage} ", f"{stage}:"))]
    return line


def table_rows(text: str) -> dict:
    """{(benchmark, model): [I2T R@1, T2I R@1, top-1]} from the Markdown table."""
    lines = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    rows = lines[2:]  # past the header and its separator
    return {(cells[0].strip(), cells[1].strip()): [c.strip() for c in cells[2:]] for cells in rows}


def test_clean_run_reports_no_failures_on_any_stage(tmp_path):
    text = report(write(tmp_path, metrics(source={"dropped_sampling": 0})))
    for stage in ("download", "caption", "train"):
        assert stage_line(text, stage).endswith("failures: none")
    for stage in ("source", "shard"):
        assert stage_line(text, stage).endswith("dropped: none")


def test_nonzero_failure_classes_are_named_and_zero_ones_are_not(tmp_path):
    text = report(write(tmp_path, metrics(
        download={"success": 983, "failed": 7, "failures": {"http_404": 5, "timeout": 2, "decode": 0}},
        caption={"ok": 985, "too_short": 4, "failed": 1},
        shard={"train": 935, "dropped_undecodable_image": 5},
        train={"skipped_steps": 3},
    )))
    download = stage_line(text, "download")
    assert "983/990 images ok" in download and "http_404 5" in download and "timeout 2" in download
    assert "decode" not in download and "none" not in download
    caption = stage_line(text, "caption")
    assert "985/990 captions ok" in caption and "too_short 4" in caption and "failed 1" in caption
    assert "refusal" not in caption and "truncated" not in caption
    assert "undecodable_image 5" in stage_line(text, "shard")
    assert "skipped_steps 3" in stage_line(text, "train")
    assert "sampling 10" in stage_line(text, "source") and "duplicate" not in stage_line(text, "source")


def test_stage_lines_carry_counts_and_speed(tmp_path):
    text = report(write(tmp_path, metrics()))
    assert "990/1000 rows" in stage_line(text, "source")
    assert "49.5 img/s" in stage_line(text, "download") and "20 s" in stage_line(text, "download")
    assert "9.9 img/s" in stage_line(text, "caption") and "800 tok/s" in stage_line(text, "caption")
    assert "940 train + 50 val of 990 images" in stage_line(text, "shard")
    assert "29 steps" in stage_line(text, "train") and "60.0 samples/s" in stage_line(text, "train")
    assert "2 benchmarks x 2 models (base, trained)" in stage_line(text, "evaluate")
    assert "3.0 s" in stage_line(text, "evaluate")
    assert "open_clip 7.5 MB max|diff| 0e+00, transformers 11.1 MB max|diff| 6e-08" in stage_line(text, "export")
    assert "image tower: backbone without the regional prompts" in stage_line(text, "export")


def test_lines_follow_the_dag_order(tmp_path):
    text = report(write(tmp_path, metrics()))
    stage_lines = [line for line in text.splitlines() if line and not line.startswith((" ", "|"))]
    assert [line.split()[0] for line in stage_lines] == list(DAG_ORDER)


def test_caption_line_counts_captions_and_says_how_many_per_image(tmp_path):
    assert "per image" not in stage_line(report(write(tmp_path, metrics())), "caption")
    text = report(write(tmp_path, metrics(caption={"captions": 2970, "captions_per_image": 3, "ok": 2961,
                                                   "too_short": 9, "captions_per_s": 29.7})))
    caption = stage_line(text, "caption")
    assert "2961/2970 captions ok (3 per image)" in caption and "too_short 9" in caption
    assert "9.9 img/s" in caption


def test_caption_metrics_from_before_several_captions_read_as_one_per_image(tmp_path):
    files = metrics()
    for key in ("captions", "captions_per_image", "captions_per_s"):
        del files["caption"][key]
    caption = stage_line(report(write(tmp_path, files)), "caption")
    assert "990/990 captions ok" in caption and "per image" not in caption


def test_caption_quality_is_shown_only_when_scored(tmp_path):
    files = metrics(caption={"quality": {"captions": 990, "count": 0.8887, "shape": 0.9062, "exact": 0.5457}})
    lines = report(write(tmp_path, files)).splitlines()
    quality = lines[lines.index(stage_line("\n".join(lines), "caption")) + 1]
    assert "990 captions" in quality and "count 0.89" in quality and "exact 0.55" in quality
    del files["caption"]["quality"]
    assert "quality" not in report(write(tmp_path, files))


def test_missing_files_are_reported_as_not_run(tmp_path):
    files = metrics()
    write(tmp_path, {stage: files[stage] for stage in ("source", "download")})
    text = report(tmp_path)
    assert "990/990 images ok" in stage_line(text, "download")
    for stage in ("caption", "shard", "train", "evaluate", "export"):
        assert stage_line(text, stage) == f"{stage}: not run yet"
    assert "|" not in text
    assert report(tmp_path / "nothing").splitlines() == [f"{stage}: not run yet" for stage in DAG_ORDER]


def test_eval_table_has_one_row_per_benchmark_and_model_with_its_numbers(tmp_path):
    results = metrics()["evaluate"]
    rows = table_rows(report(write(tmp_path, metrics())))
    assert set(rows) == {(bench, model) for bench, models in results.items() for model in models}
    for model, scores in results["long"].items():
        assert rows[("long", model)] == [f"{scores['i2t_R@1']:.1f}", f"{scores['t2i_R@1']:.1f}", ""]
    for model, scores in results["zeroshot"].items():
        assert rows[("zeroshot", model)] == ["", "", f"{scores['top1']:.1f}"]


def test_eval_table_is_markdown_with_a_header(tmp_path):
    lines = report(write(tmp_path, metrics())).splitlines()
    start = lines.index("| benchmark | model | I2T R@1 | T2I R@1 | top-1 |")
    assert lines[start + 1] == "|---|---|---|---|---|"
    assert all(line.count("|") == 6 for line in lines[start:])


def test_report_on_the_repository_metrics_has_every_stage():
    """Run from the repository without --metrics-dir: the files where dvc.yaml puts them."""
    out = subprocess.run([sys.executable, "-m", "pipeline.report"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    for stage in DAG_ORDER:
        path = REPO / metrics_file(stage)
        assert (stage_line(out, stage) == f"{stage}: not run yet") == (not path.is_file())
    if (REPO / metrics_file("evaluate")).is_file():
        results = json.loads((REPO / metrics_file("evaluate")).read_text())
        assert len(table_rows(out)) == sum(len(models) for models in results.values())


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert_user_error(capsys, lambda: main(["--metrics-dir", str(tmp_path / "nope")]), "nope: no such folder")
    (tmp_path / "train.json").write_text('{"steps": 3')
    assert_user_error(capsys, lambda: main(["--metrics-dir", str(tmp_path)]), "train.json: not valid JSON")
