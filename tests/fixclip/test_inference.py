"""fixclip.load and the `python -m fixclip` CLI: embeddings and scores of image and text files, no DVC."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import fixclip
from fixclip.model_folder import save_model_folder
from tests.conftest import REPO
from tests.fixclip.export.conftest import trained_like_model
from tests.fixclip.export.test_export import TEXTS, _image_files
from tests.stages.test_evaluate import BASE_CONFIG


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    save_model_folder(trained_like_model(), BASE_CONFIG, folder)
    return folder


def _cli(*args, check=True):
    return subprocess.run([sys.executable, "-m", "fixclip", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, check=check)


def test_load_returns_the_model_its_preprocess_and_its_tokenizer(model_folder, tmp_path):
    model, preprocess, tokenizer = fixclip.load(model_folder)
    reference = trained_like_model()
    assert not model.training and model.context_length == 248 and tokenizer.context_length == 248
    images = torch.stack([preprocess(__import__("PIL.Image").Image.open(p).convert("RGB"))
                          for p in _image_files(tmp_path)])
    with torch.inference_mode():
        assert torch.equal(model.encode_image(images), reference.encode_image(images))
        assert torch.equal(model.encode_text(tokenizer(TEXTS)), reference.encode_text(tokenizer(TEXTS)))


def test_cli_embed_and_score_agree(model_folder, tmp_path):
    images = _image_files(tmp_path)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n\n")  # a blank line is not a text
    out = tmp_path / "embeddings.npz"
    _cli("embed", model_folder, "--images", *images, "--texts", texts, "--out", out)
    saved = np.load(out)
    assert saved["image_embeddings"].shape == (len(images), 64) and saved["text_embeddings"].shape == (len(TEXTS), 64)
    assert list(saved["texts"]) == TEXTS
    np.testing.assert_allclose(np.linalg.norm(saved["text_embeddings"], axis=1), 1.0, atol=1e-5)

    table = _cli("score", model_folder, "--images", *images, "--texts", texts).stdout.splitlines()
    assert table[0].split("\t") == ["image", *TEXTS]
    scores = np.array([[float(v) for v in row.split("\t")[1:]] for row in table[1:]])
    np.testing.assert_allclose(scores, saved["image_embeddings"] @ saved["text_embeddings"].T, atol=1e-4)


def test_cli_without_inputs_or_with_a_missing_folder_fails_clearly(model_folder, tmp_path):
    result = _cli("score", model_folder, check=False)
    assert result.returncode == 2 and "score needs --images and --texts" in result.stderr
    result = _cli("embed", tmp_path / "nowhere", "--texts", __file__, "--out", tmp_path / "x.npz", check=False)
    assert result.returncode != 0 and "no fixclip.json" in result.stderr
