import pytest
from pydantic import ValidationError

from pipeline.params.evaluate import EvaluateParams
from pipeline.params.source import ToyWorldParams


def test_defaults_are_the_held_out_toy_benchmark():
    params = EvaluateParams()
    assert [b.name for b in params.benchmarks] == ["toy_long", "toy_long_cut77", "toy_layout", "toy_short",
                                                   "toy_short_scenes", "toy_zeroshot", "toy_zeroshot_colour",
                                                   "toy_zeroshot_shape"]
    assert params.toy.seed != ToyWorldParams().seed


@pytest.mark.parametrize("raw, message", [
    ({"benchmarks": [{"kind": "urban1k", "name": "urban1k", "root": "/no/such/dir"}]}, "root: not found"),
    ({"benchmarks": [{"kind": "coco", "name": "coco"}]}, "does not match any of the expected tags"),
    ({"benchmarks": [{"kind": "toy", "name": "zs", "task": "zeroshot", "max_text_tokens": 77}]},
     "max_text_tokens: applies to retrieval benchmarks only"),
    ({"toy": {"num_images": 7}}, "multiple of 2"),
    ({"benchmarks": [{"kind": "toy", "name": "t", "task": "zeroshot", "root": "x"}]}, "Extra inputs"),
    ({"benchmarks": [{"kind": "toy", "name": "t", "task": "zeroshot"}] * 2}, "duplicate names"),
    ({"toy": {"templates": ["a photo"]}}, "needs '{c}'"),
    ({"toy": {"num_layout_images": 0}}, "toy.num_layout_images: 0, but benchmark 'toy_layout' reads that set"),
    ({"toy": {"num_layout_images": 5}}, "multiple of 2"),
    ({"toy": {"seed": 5, "dev_seed": 5}}, "dev_seed: equals seed"),
    ({"batch_size": "8"}, "Input should be a valid integer"),
])
def test_bad_params_fail_naming_the_problem(raw, message):
    with pytest.raises(ValidationError, match=message):
        EvaluateParams.model_validate(raw)


def test_real_benchmark_entries_pass_their_options_to_the_adapter(tmp_path):
    params = EvaluateParams.model_validate({"benchmarks": [
        {"kind": "coco_karpathy", "name": "coco5k", "annotations": str(tmp_path), "image_root": str(tmp_path)}]})
    assert params.benchmarks[0].adapter_kwargs() == {"annotations": str(tmp_path), "image_root": str(tmp_path),
                                                     "split": "test", "captions_per_image": 5}
