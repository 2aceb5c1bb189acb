"""One FIX-CLIP model with every module on and every FIX-CLIP parameter moved off its initial value (as training
would), exported once to both formats for all the export tests."""
import pytest
import torch

from fixclip.config import FixClipConfig
from fixclip.export.hf_folder import export_transformers
from fixclip.export.openclip_folder import export_open_clip
from fixclip.model import FixClip
from fixclip.model_folder import load_base
from tests.stages.test_evaluate import BASE_CONFIG, BASE_WEIGHTS


def trained_like_model() -> FixClip:
    model = FixClip(load_base(BASE_CONFIG, BASE_WEIGHTS).clip, FixClipConfig())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith("clip."):  # stretched rows, mask embedding, prompts, HFA heads
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="package")
def exported(tmp_path_factory):
    """(model, open_clip folder, transformers folder, measured differences). The model comes back with
    ``prompts_at_inference`` off: the exports hold the backbone alone (docs/export.md)."""
    model = trained_like_model()
    root = tmp_path_factory.mktemp("export")
    differences = {"open_clip": export_open_clip(model, BASE_CONFIG, root / "open_clip"),
                   "transformers": export_transformers(model, BASE_CONFIG, root / "transformers")}
    model.prompts_at_inference = False
    return model, root / "open_clip", root / "transformers", differences
