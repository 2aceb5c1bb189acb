"""Caption filters, params validation, and the deterministic prompt/seed choice (no server needed)."""
import pytest
from pydantic import ValidationError

from pipeline.caption.client import prompt_id_for, request_seed
from pipeline.caption.filters import CaptionFilter, repetition_ratio
from pipeline.params.caption import CaptionParams, Filters

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
    chosen = {prompt_id_for(f"{i:09d}", len(prompts)) for i in range(200)}
    assert chosen == set(range(len(prompts))), "every prompt is used"
    assert prompt_id_for("000000042", 6) == prompt_id_for("000000042", 6)
    assert request_seed(0, "k", 1) == request_seed(0, "k", 1)
    assert len({request_seed(0, "k", 1), request_seed(1, "k", 1), request_seed(0, "j", 1)}) == 3


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
