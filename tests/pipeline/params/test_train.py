"""The `train:` section: validated before any work, errors name the key (train.fixclip.prompt_grid, ...)."""
import re

import pytest
import yaml

from fixclip.train.config import TrainConfig
from pipeline.params import ParamsError, parse_params
from pipeline.params.train import TrainParams
from stages.train import check_fits_base_model
from tests.conftest import REPO


def _error(train: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params({"train": train})
    return str(caught.value)


@pytest.mark.parametrize("train, message", [
    ({"fixclip": {"prompt_grid": [0, 3]}}, "train.fixclip.prompt_grid: needs [rows, cols], each at least 1"),
    ({"fixclip": {"prompt_grid": [3]}}, "train.fixclip.prompt_grid: needs [rows, cols]"),
    ({"fixclip": {"regional_prompt": False}}, "train.fixclip.regional_prompt: unknown key"),
    ({"fixclip": {"regional_prompts": "no"}}, "train.fixclip.regional_prompts: expected bool, got 'no'"),
    ({"fixclip": {"hfa_weights": [1.0, 1.0]}}, "train.fixclip.hfa_weights: needs one weight per group 2..2, got 2"),
    ({"method": "longclip", "longclip": {"pca_components": "all"}}, "train.longclip.pca_components: "),
    ({"method": "holistic", "caption_pool": 3}, "train.caption_pool: holistic reads all its captions"),
    ({"new_params_lr_scale": 0}, "train.new_params_lr_scale: "),
    ({"method": "clip"}, "train.method: "),
    ({"method": "longclip", "fixclip": {"hfa": False}}, "train.fixclip.hfa: set, but train.method is 'longclip'"),
    ({"holistic": {"num_branches": 2}}, "train.holistic.num_branches: set, but train.method is 'fixclip'"),
    ({"method": "fixclip", "longclip": {"pca_components": 8}}, "train.longclip.pca_components: set, but"),
    ({"method": "holistic", "holistic": {"captions_per_image": 8}},
     "train.holistic.captions_per_image: 8 captions need as many caption.prompts (7 listed)"),
    ({"batch_size": "32"}, "train.batch_size: expected int, got '32'"),
    ({"batch_size": 30, "num_workers": 4}, "train.batch_size: must be a multiple of num_workers (4)"),
    ({"epochs": 1.0, "samples": 100}, "train.epochs: set exactly one of epochs and samples"),
    ({"nan_policy": "ignore"}, "train.nan_policy: "),
    ({"distributed": {"nproc_per_node": 0}}, "train.distributed.nproc_per_node: "),
])
def test_bad_values_name_the_key(train, message):
    error = _error(train)
    assert "\n" not in error and re.search(rf"(invalid params: |; ){re.escape(message)}", error), error


@pytest.mark.parametrize("method", ["fixclip", "longclip", "holistic"])
def test_each_method_runs_on_the_other_sections_defaults(method):
    """`dvc exp run -S train.method=<m>` alone is valid; the stretch keys are shared by every method."""
    cfg = parse_params({"train": {"method": method, "fixclip": {"stretch_keep": 10}}}).train
    assert cfg.method == method and cfg.unused_method_keys() == []


def test_model_dependent_checks_name_the_key(monkeypatch):
    """prompt_grid must fit the base model's 8 x 8 patches: known only with the model, still before any work."""
    monkeypatch.chdir(REPO)
    params = TrainParams.model_validate({"fixclip": {"prompt_grid": [9, 3]}})
    with pytest.raises(ParamsError, match=r"train\.fixclip\.prompt_grid: more regions than the 8 x 8 patch grid"):
        check_fits_base_model(params)
    missing = TrainParams.model_validate({"base_model": {"weights": "nowhere.pt"}})
    with pytest.raises(ParamsError, match=r"train\.base_model\.weights: file not found"):
        check_fits_base_model(missing)


def test_the_yaml_section_is_the_library_config(monkeypatch):
    """One definition: the validated section is the library's TrainConfig, with params.yaml's values."""
    monkeypatch.chdir(REPO)
    section = yaml.safe_load("""
      fixclip: {regional_prompts: false, hfa_weights: [1.0], hfa_first_group: 2}
      epochs: 2.0
      betas: [0.9, 0.98]
    """)
    cfg = parse_params({"train": section}).train
    assert type(cfg) is TrainConfig
    assert cfg.fixclip.regional_prompts is False and cfg.fixclip.hfa_weights == [1.0]
    assert cfg.epochs == 2.0 and cfg.betas == [0.9, 0.98] and cfg.fixclip.prompt_grid == [3, 3]
    check_fits_base_model(cfg)

