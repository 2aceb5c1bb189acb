"""The evaluation encoder: normalised embeddings in input order, computed once per model and input."""
import pytest
import torch

from fixclip.eval.encode import CachedEncoder
from fixclip.model_folder import load_base
from pipeline.toyworld.benchmark import generate
from tests.stages.test_evaluate import BASE_CONFIG, BASE_WEIGHTS, DOWNLOAD, SMALL_TOY, WORLD


@pytest.mark.expensive
def test_encoder_caches_per_model_and_keeps_order(tmp_path):
    generate(SMALL_TOY, WORLD, DOWNLOAD, tmp_path)
    paths = sorted((tmp_path / "images").glob("*.jpg"))[:5]
    encoder = CachedEncoder(load_base(BASE_CONFIG, BASE_WEIGHTS), "base", batch_size=2)
    first = encoder.images(paths)
    assert torch.allclose(first.norm(dim=-1), torch.ones(5))
    assert torch.equal(encoder.images(paths[::-1]), first.flip(0))
    texts = ["a red circle " * k for k in range(1, 8)]
    embedded = encoder.texts(texts)
    with torch.no_grad():
        direct = torch.nn.functional.normalize(encoder.model.encode_text(encoder.model.tokenizer()(texts)), dim=-1)
    torch.testing.assert_close(embedded, direct)
    encoder.model = None  # cached: a second call must not touch the model
    assert torch.equal(encoder.texts(texts[2:]), embedded[2:])


def test_texts_cut_to_max_tokens_read_only_their_start():
    """A 248-token model told to read 77 tokens embeds a long text as the text cut there, whatever follows."""
    from fixclip.config import FixClipConfig
    from fixclip.model import FixClip

    base = load_base(BASE_CONFIG, BASE_WEIGHTS)
    encoder = CachedEncoder(FixClip(base.clip, FixClipConfig.plain().with_(stretch=True)), "stretched")
    start = "a red circle " * 30  # 90 tokens: the cut lies inside it
    cut = encoder.texts([start + "and a blue star", start + "and a green cross"], max_tokens=77)
    full = encoder.texts([start + "and a blue star", start + "and a green cross"])
    assert torch.equal(cut[0], cut[1]) and not torch.equal(full[0], full[1])
