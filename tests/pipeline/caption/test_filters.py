"""Caption filters, params validation, and the deterministic prompt/seed choice (no server needed)."""
import subprocess

import pytest
import yaml
from pydantic import ValidationError

from pipeline.caption.client import (
    caption_prompt_id, caption_prompt_ids, prompt_id_for, request_seed, retry_prompt_id,
)
from pipeline.caption.filters import CaptionFilter, repetition_ratio
from pipeline.params import ParamsError, parse_params
from pipeline.params.caption import CaptionParams, Filters
from pipeline.paths import stage_command
from tests.conftest import REPO, stage_env

KEYS = [f"{i:09d}" for i in range(200)]

LONG = "In the top left cell there is a large red circle with a striped fill."


@pytest.fixture
def caption_filter():
    return CaptionFilter(Filters(min_words=6, max_repetition=0.3, repetition_ngram=3, keep_truncated=False))


@pytest.mark.parametrize("text, finish_reason, expected", [
    (LONG, "stop", "ok"),
    ("", "stop", "empty"),
    ("   \n ", "stop", "empty"),
    ("A red circle.", "stop", "too_short"),
    ("a red circle " * 10, "stop", "repetitive"),
    (LONG, "length", "truncated"),
    ("I'm sorry, but I cannot describe this image for you today.", "stop", "refusal"),
    ("As an AI language model I will not comment on this picture at all.", "stop", "refusal"),
])
def test_each_class(caption_filter, text, finish_reason, expected):
    assert caption_filter.classify(text, finish_reason) == expected


def test_truncated_kept_when_asked():
    assert CaptionFilter(Filters(min_words=6, keep_truncated=True)).classify(LONG, "length") == "ok"


def test_custom_refusal_pattern():
    caption_filter = CaptionFilter(Filters(min_words=1, refusal_patterns=[r"\bno image\b"]))
    assert caption_filter.classify("There is no image attached here, it seems.", "stop") == "refusal"
    assert caption_filter.classify("I'm sorry, a red circle sits in the centre.", "stop") == "ok"


def test_repetition_ratio():
    assert repetition_ratio("a b c d e f".split(), 2) == 0.0
    assert repetition_ratio("a b a b a b".split(), 2) == pytest.approx(1 - 2 / 5)
    assert repetition_ratio(["a"], 3) == 0.0


def test_prompt_and_seed_are_functions_of_the_key():
    prompts = CaptionParams().prompts
    chosen = {prompt_id_for(key, len(prompts)) for key in KEYS}
    assert chosen == set(range(len(prompts))), "every prompt is used"
    assert prompt_id_for("000000042", 6) == prompt_id_for("000000042", 6)
    assert request_seed(0, "k", 1) == request_seed(0, "k", 1)
    assert len({request_seed(0, "k", 1), request_seed(1, "k", 1), request_seed(0, "j", 1)}) == 3


def test_the_captions_of_an_image_ask_distinct_consecutive_prompts():
    for key in KEYS:
        first = prompt_id_for(key, 7)
        assert caption_prompt_id(key, 0, 7) == first, "caption 0 asks what the single caption asked"
        assert [caption_prompt_id(key, j, 7) for j in range(7)] == [(first + j) % 7 for j in range(7)]


def test_retry_rule():
    assert [retry_prompt_id(p, 1, 7) for p in range(7)] == [1, 2, 3, 4, 5, 6, 0], "K = 1: the next prompt"
    assert retry_prompt_id(5, 3, 7) == 1
    assert retry_prompt_id(0, 3, 3) is None and retry_prompt_id(2, 3, 2) is None, "every prompt is already asked"
    assert retry_prompt_id(0, 1, 1) is None
    for key in KEYS:
        own = {caption_prompt_id(key, j, 7) for j in range(3)}
        retries = {retry_prompt_id(caption_prompt_id(key, j, 7), 3, 7) for j in range(3)}
        assert len(retries) == 3 and not retries & own, "with 2K <= P the retries ask prompts no caption asked"


def test_prompts_each_caption_asks():
    params = CaptionParams(captions_per_image=3)  # 7 prompts
    first = prompt_id_for("000000042", 7)
    assert caption_prompt_ids(params, "000000042", 1) == [(first + 1) % 7, (first + 4) % 7]
    no_retry = params.model_copy(update={"retry_rejected_with_other_prompt": False})
    assert caption_prompt_ids(no_retry, "000000042", 1) == [(first + 1) % 7]
    three = CaptionParams(prompts=["a", "b", "c"], captions_per_image=3)
    own = prompt_id_for("000000042", 3)
    assert [caption_prompt_ids(three, "000000042", j) for j in range(3)] == [[(own + j) % 3] for j in range(3)], (
        "P = K: no retry")
    one = CaptionParams()
    assert caption_prompt_ids(one, "000000042", 0) == [first, (first + 1) % 7], "K = 1: as before"


@pytest.mark.parametrize("values, key", [
    ({"prompts": []}, "prompts"),
    ({"prompts": ["ok", " "]}, "prompts"),
    ({"endpoints": ["localhost:8000"]}, "endpoints"),
    ({"filters": {"refusal_patterns": ["("]}}, "refusal_patterns"),
    ({"filters": {"max_repetition": 2}}, "max_repetition"),
    ({"sampling": {"max_tokens": 0}}, "max_tokens"),
    ({"server": {"dtype": "auto", "bogus": 1}}, "bogus"),
    ({"num_servers": 2, "gpus": ["0"]}, "gpus"),
    ({"concurency": 4}, "concurency"),
    ({"captions_per_image": 0}, "captions_per_image"),
    ({"captions_per_image": 8}, "captions_per_image"),
    ({"prompts": ["one", "two"], "captions_per_image": 3}, "captions_per_image"),
])
def test_bad_params_name_the_key(values, key):
    with pytest.raises(ValidationError, match=key):
        CaptionParams(**values)


def test_gpus_one_group_per_server():
    params = CaptionParams(num_servers=2, gpus=["0", "1", "2", "3"], server={"tensor_parallel_size": 2})
    assert params.num_servers == 2


def test_fingerprint_ignores_operational_knobs():
    base = CaptionParams()
    assert base.content_fingerprint() == CaptionParams(concurrency=4, num_servers=2, retries=9).content_fingerprint()
    assert base.content_fingerprint() != CaptionParams(sampling={"max_tokens": 7}).content_fingerprint()


def test_fingerprint_holds_the_captions_per_image():
    assert CaptionParams().content_fingerprint() != CaptionParams(captions_per_image=2).content_fingerprint()


def test_more_captions_than_prompts_names_the_key():
    with pytest.raises(ParamsError, match=r"caption\.captions_per_image: 8 captions per image need as many distinct "
                                          r"prompts, but prompts lists 7"):
        parse_params({"caption": {"captions_per_image": 8}})


def test_caption_stage_fails_before_work_on_too_many_captions(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["caption"]["captions_per_image"] = len(raw["caption"]["prompts"]) + 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = stage_env() | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(stage_command("caption"), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "caption.captions_per_image:" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_max_image_side_shrinks_only_larger_images_keeping_their_aspect():
    import io

    from PIL import Image

    from pipeline.caption.client import shrunk

    def png(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGBA", (width, height), (10, 200, 30, 255)).save(buffer, "PNG")
        return buffer.getvalue()

    large, small = png(400, 200), png(40, 20)
    data, extension = shrunk(large, "png", 100)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size, extension) == ("JPEG", (100, 50), "jpg")
    assert shrunk(small, "png", 100) == (small, "png")
    assert shrunk(large, "png", None) == (large, "png")
    assert shrunk(b"not an image", "jpg", 100) == (b"not an image", "jpg"), "the server names what fails to decode"
