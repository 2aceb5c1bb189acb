"""fixclip.load and the `python -m fixclip` CLI: embeddings and scores of image and text files, no DVC."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import fixclip
from fixclip.__main__ import main
from core.cli import user_errors
from fixclip.model_folder import save_model_folder
from tests.conftest import REPO, assert_user_error
from tests.fixclip.export.conftest import trained_like_model
from tests.fixclip.export.test_export import TEXTS, _image_files
from tests.fixclip.helpers import fixclip_here
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


@pytest.mark.expensive
def test_cli_embed_and_score_agree(model_folder, tmp_path, capsys):
    images = _image_files(tmp_path)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n\n")  # a blank line is not a text
    out = tmp_path / "embeddings.npz"
    _cli("embed", model_folder, "--images", *images, "--texts", texts, "--out", out)
    saved = np.load(out)
    assert saved["image_embeddings"].shape == (len(images), 64) and saved["text_embeddings"].shape == (len(TEXTS), 64)
    assert list(saved["texts"]) == TEXTS
    np.testing.assert_allclose(np.linalg.norm(saved["text_embeddings"], axis=1), 1.0, atol=1e-5)

    table = fixclip_here(capsys, "score", model_folder, "--images", *images, "--texts", texts).out.splitlines()
    assert table[0].split("\t") == ["image", *TEXTS]
    scores = np.array([[float(v) for v in row.split("\t")[1:]] for row in table[1:]])
    np.testing.assert_allclose(scores, saved["image_embeddings"] @ saved["text_embeddings"].T, atol=1e-4)


def test_cli_user_error_is_one_line_exit_2_without_traceback(model_folder, tmp_path):
    """The issue's example, as a user types it: a missing image file."""
    result = _cli("score", model_folder, "--images", tmp_path / "missing.png", "--texts", __file__, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    missing = tmp_path / "missing.png"
    assert result.stderr.strip() == (f"error: python -m fixclip score: argument --images: {missing}: "
                                     "no such file or folder")


def test_cli_images_takes_a_folder(model_folder, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    images = _image_files(tmp_path / "folder")
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n")
    by_folder = fixclip_here(capsys, "score", model_folder, "--images", tmp_path / "folder", "--texts", texts).out
    by_files = fixclip_here(capsys, "score", model_folder, "--images", *images, "--texts", texts).out
    assert by_folder == by_files and len(by_folder.splitlines()) == 1 + len(images)


def test_cli_says_which_texts_it_cuts_at_the_context(model_folder, tmp_path, capsys):
    """Two texts equal up to token ~260 score the same: the CLI says the model read them only in part."""
    long_text = " and ".join(TEXTS[1:2] * 20)
    texts = tmp_path / "texts.txt"
    texts.write_text(f"a red circle\n{long_text}\n{long_text} and a green star\n")
    result = fixclip_here(capsys, "score", model_folder, "--images", *_image_files(tmp_path), "--texts", texts)
    warning = [line for line in result.err.splitlines() if line.startswith("warning:")]
    tokens = len(fixclip.load(model_folder)[2].encode(long_text)) + 2
    assert len(warning) == 1 and "reads 248 tokens" in warning[0], result.err
    assert f"text 2 has {tokens} tokens" in warning[0] and "text 3 has" in warning[0] and "text 1 " not in warning[0]
    scores = np.array([[float(v) for v in row.split("\t")[1:]] for row in result.out.splitlines()[1:]])
    np.testing.assert_array_equal(scores[:, 1], scores[:, 2])  # what the warning is about
    short = tmp_path / "short.txt"
    short.write_text("a red circle\n")
    assert "warning" not in fixclip_here(capsys, "score", model_folder, "--images", *_image_files(tmp_path), "--texts",
                                  short).err


def test_cli_help_imports_neither_torch_nor_open_clip():
    probe = ("import runpy, sys; sys.argv = ['fixclip', '--help']\n"
             "try:\n    runpy.run_module('fixclip', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert "usage: python -m fixclip" in result.stdout and result.stderr.strip() == "[]", result.stderr


@pytest.mark.parametrize("case, names", [
    ("no_inputs", ["score needs --images and --texts"]),
    ("empty_texts_file", ["--texts ", "blank.txt: no text in this file"]),
    ("images_folder_without_images", ["empty: no images (.jpg"]),
    ("corrupt_fixclip_json", ["broken/fixclip.json: not valid JSON"]),
    ("invalid_fixclip_json", ["wrong/fixclip.json: mask_ratio"]),
    ("corrupt_model_json", ["badbase/model.json: not valid JSON"]),
    ("device_unknown", ["--device foo: not a device torch knows"]),
    ("device_cuda_without_gpu", ["--device cuda: no CUDA device here"]),
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
    (tmp_path / "blank.txt").write_text("\n  \n")
    _broken_copies(model_folder, tmp_path)
    if case == "device_cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    argv = {
        "no_inputs": ["score", model_folder],
        "missing_model": ["score", tmp_path / "nowhere", "--images", image, "--texts", texts],
        "not_a_model": ["score", tmp_path / "empty", "--images", image, "--texts", texts],
        "not_an_image": ["score", model_folder, "--images", texts, "--texts", texts],
        "truncated_image": ["score", model_folder, "--images", tmp_path / "cut.png", "--texts", texts],
        "texts_not_utf8": ["embed", model_folder, "--texts", tmp_path / "latin1.txt", "--out", tmp_path / "e.npz"],
        "out_folder_missing": ["embed", model_folder, "--texts", texts, "--out", tmp_path / "absent" / "e.npz"],
        "unknown_command": ["scores", model_folder],
        "empty_texts_file": ["embed", model_folder, "--texts", tmp_path / "blank.txt", "--out", tmp_path / "e.npz"],
        "images_folder_without_images": ["score", model_folder, "--images", tmp_path / "empty", "--texts", texts],
        "corrupt_fixclip_json": ["score", tmp_path / "broken", "--images", image, "--texts", texts],
        "invalid_fixclip_json": ["score", tmp_path / "wrong", "--images", image, "--texts", texts],
        "corrupt_model_json": ["score", tmp_path / "badbase", "--images", image, "--texts", texts],
        "device_unknown": ["score", model_folder, "--images", image, "--texts", texts, "--device", "foo"],
        "device_cuda_without_gpu": ["score", model_folder, "--images", image, "--texts", texts, "--device", "cuda"],
    }[case]
    assert_user_error(capsys, lambda: main([str(a) for a in argv]), *names)


def _broken_copies(model_folder, root):
    """Copies of the model folder with fixclip.json cut, fixclip.json with a bad value and model.json cut."""
    for name, file, text in (("broken", "fixclip.json", '{"dual_branch": tr'),
                             ("wrong", "fixclip.json", '{"mask_ratio": "most"}'),
                             ("badbase", "model.json", "{")):
        shutil.copytree(model_folder, root / name)
        (root / name / file).write_text(text)


def test_a_bug_is_not_a_user_error():
    with pytest.raises(RuntimeError, match="a bug"):
        with user_errors():
            raise RuntimeError("a bug")
