"""fixclip.load and the `python -m fixclip` CLI: embeddings and scores of image and text files, no DVC."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import fixclip
from fixclip.__main__ import main
from fixclip.cli import user_errors
from fixclip.model_folder import save_model_folder
from tests.conftest import REPO, assert_user_error
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


def test_cli_user_error_is_one_line_exit_2_without_traceback(model_folder, tmp_path):
    """The issue's example, as a user types it: a missing image file."""
    result = _cli("score", model_folder, "--images", tmp_path / "missing.png", "--texts", __file__, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    missing = tmp_path / "missing.png"
    assert result.stderr.strip() == f"error: python -m fixclip score: argument --images: {missing}: no such file"


@pytest.mark.parametrize("case, names", [
    ("no_inputs", ["score needs --images and --texts"]),
    ("missing_model", ["nowhere: no such file or folder"]),
    ("not_a_model", ["empty: ", "fixclip.json"]),
    ("not_an_image", ["texts.txt: not an image Pillow can read"]),
    ("truncated_image", ["cut.png: not an image Pillow can read"]),
    ("texts_not_utf8", ["latin1.txt: not UTF-8 text"]),
    ("out_folder_missing", ["--out: ", "absent: no such folder"]),
    ("unknown_command", ["invalid choice: 'scores'"]),
])
def test_cli_user_errors(case, names, model_folder, tmp_path, capsys):
    texts, image = tmp_path / "texts.txt", _image_files(tmp_path)[0]
    texts.write_text("a red circle\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "cut.png").write_bytes(image.read_bytes()[:60])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    argv = {
        "no_inputs": ["score", model_folder],
        "missing_model": ["score", tmp_path / "nowhere", "--images", image, "--texts", texts],
        "not_a_model": ["score", tmp_path / "empty", "--images", image, "--texts", texts],
        "not_an_image": ["score", model_folder, "--images", texts, "--texts", texts],
        "truncated_image": ["score", model_folder, "--images", tmp_path / "cut.png", "--texts", texts],
        "texts_not_utf8": ["embed", model_folder, "--texts", tmp_path / "latin1.txt", "--out", tmp_path / "e.npz"],
        "out_folder_missing": ["embed", model_folder, "--texts", texts, "--out", tmp_path / "absent" / "e.npz"],
        "unknown_command": ["scores", model_folder],
    }[case]
    assert_user_error(capsys, lambda: main([str(a) for a in argv]), *names)


def test_a_bug_is_not_a_user_error():
    with pytest.raises(RuntimeError, match="a bug"):
        with user_errors():
            raise RuntimeError("a bug")
