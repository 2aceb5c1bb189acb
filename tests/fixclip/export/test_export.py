"""Exports load in open_clip and transformers with no code of ours and embed like our model (images, and texts
shorter and longer than 77 tokens up to and past 248); what cannot be exported faithfully is refused."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from fixclip.base_model import build_clip, resolve_model_config
from fixclip.config import FixClipConfig, HolisticConfig
from fixclip.eval.encode import CachedEncoder, eval_transform
from fixclip.export.folded import ExportError, NotExpressible
from fixclip.export.hf_folder import export_transformers
from fixclip.export.openclip_folder import export_open_clip
from fixclip.export.verify import write_verified
from fixclip.holistic import HolisticClip
from fixclip.model import FixClip
from tests.stages.test_evaluate import BASE_CONFIG

_SCENE = "a large red circle with a striped fill in the top left cell of the grid, beside a small blue square"
TEXTS = ["a red circle", _SCENE, " and ".join([_SCENE] * 4), " and ".join([_SCENE] * 9), " and ".join([_SCENE] * 20)]


def _token_lengths(model: FixClip) -> list[int]:
    return [int((row != 0).sum()) for row in model.tokenizer()(TEXTS)]


def _image_files(folder, sizes=((64, 64), (64, 64), (64, 64))) -> list:
    generator = np.random.default_rng(0)
    paths = []
    for i, (width, height) in enumerate(sizes):
        path = folder / f"image_{i}.png"
        Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _pil(paths) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in paths]


def _ours(model: FixClip, paths) -> tuple[torch.Tensor, torch.Tensor]:
    encoder = CachedEncoder(model, "ours")
    return encoder.images(paths), encoder.texts(TEXTS)


def test_probe_texts_span_the_stretched_context(exported):
    model = exported[0]
    lengths = _token_lengths(model)
    assert min(lengths) < 77 < lengths[2] < 248 and max(lengths) == 248  # the last one is truncated at 248


def test_open_clip_loads_the_export_and_embeds_like_ours(exported, tmp_path):
    model, folder, _, differences = exported
    loaded, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    assert tokenizer.context_length == 248 and loaded.context_length == 248
    tokens = tokenizer(TEXTS)
    assert torch.equal(tokens, model.tokenizer()(TEXTS))
    images = _pil(_image_files(tmp_path))
    pixels = torch.stack([preprocess(image) for image in images])
    assert torch.equal(pixels, torch.stack([eval_transform(model)(image) for image in images]))
    with torch.inference_mode():
        theirs = F.normalize(loaded.encode_image(pixels), dim=-1), F.normalize(loaded.encode_text(tokens), dim=-1)
        ours = F.normalize(model.encode_image(pixels), dim=-1), F.normalize(model.encode_text(tokens), dim=-1)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    assert differences["open_clip"] <= 1e-5
    # What the export leaves out: with its regional prompts our model embeds images differently.
    with torch.inference_mode():
        prompted = F.normalize(model.encode_image(pixels, prompts=True), dim=-1)
    assert not torch.allclose(prompted, theirs[0], atol=1e-3)
    # The text beyond token 77 reaches the embedding: a 77-token cut of the long texts embeds differently.
    with torch.inference_mode():
        cut = F.normalize(loaded.encode_text(F.pad(open_clip.tokenize(TEXTS), (0, 248 - 77))), dim=-1)
    assert not torch.allclose(cut[2:], theirs[1][2:], atol=1e-3)


@pytest.mark.expensive
def test_transformers_loads_the_export_and_embeds_like_ours(exported, tmp_path):
    model, _, folder, differences = exported
    hf = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder)
    assert hf.config.text_config.max_position_embeddings == 248
    assert processor.tokenizer.model_max_length == 248
    batch = processor(text=TEXTS, images=_pil(_image_files(tmp_path)), padding="max_length", truncation=True,
                      return_tensors="pt")
    # Same ids as open_clip's 248-token tokenizer; padding differs (<|endoftext|> there, 0 in open_clip).
    ours_ids = model.tokenizer()(TEXTS)
    assert torch.equal(batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 0), ours_ids)
    image_paths = _image_files(tmp_path)
    assert torch.allclose(batch["pixel_values"], torch.stack([eval_transform(model)(im) for im in _pil(image_paths)]),
                          atol=1e-6)
    with torch.inference_mode():
        output = hf(**batch)
    ours = _ours(model, image_paths)
    torch.testing.assert_close(F.normalize(output.image_embeds, dim=-1), ours[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(F.normalize(output.text_embeds, dim=-1), ours[1], atol=1e-5, rtol=0)
    assert differences["transformers"] <= 1e-5


_FRESH_PROCESS = """
import sys
import numpy as np, torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor
folder, texts_file, out, *images = sys.argv[1:]
model = CLIPModel.from_pretrained(folder).eval()
processor = CLIPProcessor.from_pretrained(folder)
texts = open(texts_file, encoding="utf-8").read().splitlines()
batch = processor(text=texts, images=[Image.open(p).convert("RGB") for p in images], padding=True,
                  truncation=True, return_tensors="pt")
with torch.inference_mode():
    output = model(**batch)
assert not any(name == "fixclip" or name.startswith("fixclip.") for name in sys.modules), "fixclip was imported"
np.savez(out, images=output.image_embeds.numpy(), texts=output.text_embeds.numpy())
"""


@pytest.mark.expensive
def test_a_fresh_process_with_only_transformers_reproduces_our_embeddings(exported, tmp_path):
    model, _, folder, _ = exported
    images = _image_files(tmp_path)
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(TEXTS), encoding="utf-8")
    out = tmp_path / "theirs.npz"
    subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(folder), str(texts_file), str(out), *map(str, images)],
                   check=True, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    theirs = np.load(out)
    ours = _ours(model, images)
    torch.testing.assert_close(F.normalize(torch.from_numpy(theirs["images"]), dim=-1), ours[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(F.normalize(torch.from_numpy(theirs["texts"]), dim=-1), ours[1], atol=1e-5, rtol=0)


def test_a_model_with_its_own_image_embedding_is_refused_and_nothing_written(tmp_path):
    model = HolisticClip(build_clip(BASE_CONFIG), HolisticConfig(num_branches=2))  # mean of two CLS branches
    for export in (export_open_clip, export_transformers):
        with pytest.raises(NotExpressible, match="HolisticClip.encode_image is not the open_clip backbone's"):
            export(model, BASE_CONFIG, tmp_path / export.__name__)
    assert list(tmp_path.iterdir()) == []


def test_transformers_refuses_what_clip_model_cannot_express(tmp_path):
    config = copy.deepcopy(resolve_model_config(BASE_CONFIG))
    config["text_cfg"]["pool_type"] = "last"  # open_clip can pool the last token; transformers' CLIP cannot
    path = tmp_path / "model.json"
    path.write_text(json.dumps(config))
    model = FixClip(build_clip(path, seed=0), FixClipConfig.plain().with_(stretch=True)).eval()
    with pytest.raises(NotExpressible, match="text pooling 'last'"):
        export_transformers(model, path, tmp_path / "transformers")
    assert not (tmp_path / "transformers").exists()
    assert export_open_clip(model, path, tmp_path / "open_clip") <= 1e-5  # open_clip expresses it


def test_an_export_that_embeds_differently_never_replaces_the_folder(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    with pytest.raises(ExportError, match="embeds differently") as raised:
        write_verified(out, lambda folder: (folder / "weights").write_text("new"), lambda folder: 0.5, 1e-5, "test")
    assert not isinstance(raised.value, NotExpressible)  # a mismatch fails the stage; it is not a refusal
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and (out / "previous.txt").read_text() == "kept"
    assert write_verified(out, lambda folder: (folder / "weights").write_text("new"), lambda folder: 0.0, 1e-5,
                          "test") == 0.0
    assert [p.name for p in out.iterdir()] == ["weights"]


def test_exported_files_get_the_umask_s_permissions_like_every_other_output(exported):
    """safetensors writes 0600; an export is meant to be shared and read by other users and tools."""
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for folder in exported[1:3] for p in folder.iterdir()}
    assert "model.safetensors" in modes and "open_clip_model.safetensors" in modes
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
