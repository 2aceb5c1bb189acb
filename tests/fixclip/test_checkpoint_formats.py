"""Every CLIP checkpoint format people download loads through ``fixclip.load`` and embeds an image and a text like
that format's own library; bad input gets one line naming the file.

All formats are written from one random ViT-B/16 at its real widths and input (768-wide image tower, 224 px in
16 px patches = 196 patches, 512-wide text tower over 49408 tokens, 512-d embeddings) cut from 12 to 2 layers per
tower to keep the test fast. The depth does not change a format: every layer is stored the same way under its
index (``resblocks.N`` / ``layers.N``), so more layers mean more tensors of the same names and shapes, read by the
same code. The 248-token formats (open_clip hub, transformers, Long-CLIP) embed a 150-token text; the OpenAI ones
(77 tokens) the same text truncated at 77.
"""
import copy
import json
import pickle
import re
import warnings
import zipfile

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import build_model_from_openai_state_dict, convert_weights_to_fp16
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

import fixclip
from fixclip.base_model import build_clip
from fixclip.checkpoint_formats import CheckpointError, CheckpointNotFound, load_checkpoint, load_clip
from fixclip.export import hf_folder, openclip_folder
from fixclip.export.hf_folder import hf_config, hf_state_dict
from tests.conftest import REPO
from tests.fixclip.export.conftest import trained_like_model

pytestmark = pytest.mark.expensive  # ViT-B/16 checkpoints in each format

BASE_CONFIG = REPO / "assets/base_clip/model.json"
VIT_B16 = {"embed_dim": 512, "quick_gelu": True,
           "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 768, "layers": 2, "head_width": 64},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 2}}
VIT_B16_248 = copy.deepcopy(VIT_B16) | {"text_cfg": VIT_B16["text_cfg"] | {"context_length": 248}}
PREPROCESS = {"mean": [0.5, 0.45, 0.4], "std": [0.2, 0.25, 0.3], "interpolation": "bilinear"}
TEXTS = ["a red circle", " ".join(["a large red circle beside a small blue square on a striped mat ,"] * 11)]
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _random_vit_b16() -> torch.nn.Module:
    """Seeded, every parameter moved off its initial value (LayerNorms too, so no two tensors are alike), rounded to
    float16: OpenAI-format readers pass weights through float16, which then changes nothing."""
    clip = build_clip(VIT_B16, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in clip.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
            parameter.copy_(parameter.half().float())
    return clip.eval()


@pytest.fixture(scope="module")
def models():
    """(the random ViT-B/16, Long-CLIP's two 248-row text tables, the 248-token model embedding as Long-CLIP)."""
    clip = _random_vit_b16()
    generator = torch.Generator().manual_seed(2)
    tables = [0.01 * torch.randn(248, 512, generator=generator).half().float() for _ in range(2)]
    long = build_clip(VIT_B16_248).eval()
    long.load_state_dict(clip.state_dict() | {"positional_embedding": torch.cat([tables[0][:20], tables[1][20:]])})
    return clip, tables, long


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    """{format: path}: the 77-token model in the OpenAI formats and Long-CLIP's, the 248-token one in the others."""
    clip, tables, long = models
    root = tmp_path_factory.mktemp("checkpoints")
    return {"openai_archive": _write_openai_archive(clip, root / "ViT-B-16.pt"),
            "openai_state_dict": _write_openai_state_dict(clip, root / "ViT-B-16-state.pt"),
            "longclip": _write_longclip(clip, tables, root / "longclip-B.pt"),
            "open_clip": _write_open_clip_folder(long, root / "open_clip_hub"),
            "transformers": _write_transformers_folder(long, root / "clip-vit-base-patch16")}


def _openai_state(clip) -> dict:
    """The state dict partly in float16 as OpenAI's (open_clip's convert_weights_to_fp16 is OpenAI's
    convert_weights)."""
    half = copy.deepcopy(clip)
    convert_weights_to_fp16(half)
    dtypes = {k: v.dtype for k, v in half.state_dict().items()}
    return {k: v.to(dtypes[k]) for k, v in clip.state_dict().items()}


def _write_openai_archive(clip, path):
    """A TorchScript archive as OpenAI's: encode_image / encode_text traced, the causal mask a plain attribute
    (traced into a constant), input_resolution / context_length / vocab_size stored as parameters, float16 weights."""
    traced_from = copy.deepcopy(clip)
    traced_from.attn_mask = traced_from._buffers.pop("attn_mask")  # now a plain attribute
    for name, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        traced_from.__dict__.pop(name, None)  # open_clip keeps the last two as plain ints
        traced_from.register_parameter(name, torch.nn.Parameter(torch.tensor(value), requires_grad=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing's deprecation and TracerWarnings
        traced = torch.jit.trace_module(traced_from, {"encode_image": (torch.zeros(1, 3, 224, 224),),
                                                      "encode_text": (torch.zeros(1, 77, dtype=torch.long),)},
                                        check_trace=False)
    half = _openai_state(clip)
    for name, parameter in traced.named_parameters():
        parameter.data = parameter.data.to(half[name].dtype if name in half else parameter.dtype)
    traced.save(str(path))
    return path


def _write_openai_state_dict(clip, path):
    """A plain OpenAI state dict (torch.save of the archive's state_dict(), as some re-distributions hold)."""
    torch.save(_openai_state(clip) | {"input_resolution": torch.tensor(224)}, path)
    return path


def _write_longclip(clip, tables, path):
    """As Long-CLIP's train.py saves its model (beichenzbc/Long-CLIP, train/train.py line 277): the OpenAI names,
    positional_embedding and positional_embedding_res of 248 rows each, no mask."""
    torch.save(_openai_state(clip) | {"positional_embedding": tables[0], "positional_embedding_res": tables[1]}, path)
    return path


def _write_open_clip_folder(clip, folder):
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": VIT_B16_248, "preprocess_cfg": {
        **PREPROCESS, "size": 224, "resize_mode": "shortest"}}))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def _write_transformers_folder(clip, folder):
    """save_pretrained of a CLIPModel holding the weights (our export's mapping writes them; transformers reads them
    back as the reference), with the legacy eos_token_id 2 of OpenAI's hub configs and a CLIPImageProcessor."""
    from transformers import CLIPImageProcessor, CLIPModel

    config = hf_config(clip, VIT_B16_248)
    config.text_config.eos_token_id = 2
    with torch.device("meta"):  # no random initialisation: every weight is assigned below
        model = CLIPModel(config)
    model.load_state_dict(hf_state_dict(clip), strict=True, assign=True)
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=2,
                       image_mean=PREPROCESS["mean"], image_std=PREPROCESS["std"]).save_pretrained(folder)
    return folder


def _image(size=(224, 224), seed=0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8).numpy())


def _embed(model, pixels, tokens):
    with torch.inference_mode():
        return F.normalize(model.encode_image(pixels), dim=-1), F.normalize(model.encode_text(tokens), dim=-1)


def _assert_same_embeddings(ours, theirs):
    for a, b in zip(ours, theirs):
        cosine = (a * F.normalize(b, dim=-1)).sum(-1)
        assert float(cosine.min()) > 1 - 1e-4, cosine


def test_the_long_text_spans_past_77_tokens():
    length = int((open_clip.tokenize(TEXTS[1:], context_length=248) != 0).sum())
    assert 140 <= length <= 160


@pytest.fixture(scope="module")
def openai_reference(files):
    """open_clip's load_openai_model of the archive (it runs torch.jit.load on it; we never do)."""
    return open_clip.load_openai_model(str(files["openai_archive"]), precision="fp32", device="cpu").eval()


@pytest.mark.parametrize("kind", ["openai_archive", "openai_state_dict"])
def test_openai_checkpoints_embed_like_open_clip(files, openai_reference, kind, monkeypatch):
    """Both OpenAI files hold the same weights, so the archive's reference serves both."""
    reference = openai_reference
    reference_preprocess = open_clip.image_transform(224, is_train=False)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("the archive's code must not be loaded"))
    model, preprocess, tokenizer = fixclip.load(files[kind])
    assert tokenizer.context_length == 77 and model.clip.visual.grid_size == (14, 14)
    assert type(model.clip.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    image = _image()
    pixels = preprocess(image)[None]
    assert torch.equal(pixels, reference_preprocess(image)[None])
    tokens = tokenizer(TEXTS)
    assert torch.equal(tokens, open_clip.tokenize(TEXTS))
    _assert_same_embeddings(_embed(model, pixels, tokens), _embed(reference, pixels, tokens))


def test_the_archive_is_read_as_tensors_only(files):
    with zipfile.ZipFile(files["openai_archive"]) as archive:
        names = archive.namelist()
        assert any(name.endswith("constants.pkl") for name in names) and any("/code/" in name for name in names)
        assert b"HalfStorage" in archive.read("ViT-B-16/data.pkl")
    checkpoint = load_checkpoint(files["openai_archive"])
    assert checkpoint.kind == "OpenAI TorchScript archive" and checkpoint.context_length == 77
    assert checkpoint.config["quick_gelu"] and checkpoint.config["vision_cfg"]["layers"] == 2
    assert checkpoint.preprocess == {"size": (224, 224), "mode": "RGB", "mean": OPENAI_MEAN, "std": OPENAI_STD,
                                     "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}


def test_open_clip_hub_folder_embeds_like_open_clip_with_its_preprocessing(files):
    name = f"local-dir:{files['open_clip']}"
    reference, _, reference_preprocess = open_clip.create_model_and_transforms(name)
    model, preprocess, tokenizer = fixclip.load(files["open_clip"])
    attached = open_clip.get_model_preprocess_cfg(model.clip)
    assert {k: attached[k] for k in PREPROCESS} == PREPROCESS and model.context_length == 248
    image = _image((300, 260))
    pixels = preprocess(image)[None]
    assert torch.equal(pixels, reference_preprocess(image)[None])
    assert not torch.equal(pixels, open_clip.image_transform(224, is_train=False)(image)[None])
    tokens = tokenizer(TEXTS)
    assert torch.equal(tokens, open_clip.get_tokenizer(name)(TEXTS))
    _assert_same_embeddings(_embed(model, pixels, tokens), _embed(reference.eval(), pixels, tokens))


def test_transformers_folder_embeds_like_transformers(files):
    from transformers import CLIPImageProcessor, CLIPModel

    folder = files["transformers"]
    reference = CLIPModel.from_pretrained(folder).eval()
    model, preprocess, tokenizer = fixclip.load(folder)
    image = _image()
    pixels = preprocess(image)[None]
    reference_pixels = CLIPImageProcessor.from_pretrained(folder)(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, reference_pixels, atol=1e-5, rtol=0)
    tokens = tokenizer(TEXTS)  # CLIP's BPE ids; transformers pools at the largest id (legacy eos_token_id 2)
    with torch.inference_mode():
        theirs = (reference.get_image_features(pixel_values=reference_pixels),
                  reference.get_text_features(input_ids=tokens))
    theirs = tuple(t if isinstance(t, torch.Tensor) else t.pooler_output for t in theirs)
    _assert_same_embeddings(_embed(model, pixels, tokens), theirs)


def _longclip_reference(path, image: Image.Image, texts: list[str]):
    """Long-CLIP's own computation (beichenzbc/Long-CLIP) on the checkpoint's tensors:
    - preprocessing: model/longclip.py ``_transform`` (lines 35-42), bicubic resize, centre crop, OpenAI mean/std;
    - tokens: model/longclip.py ``tokenize`` (lines 313-351), OpenAI's BPE padded to 77 * 4 - 60 = 248;
    - encode_text: model/model_longclip.py line 359, token embedding + positional_embedding * mask1 +
      positional_embedding_res * mask2 with mask1 = rows < 20 and mask2 = rows >= 20 (lines 306-309), then the
      OpenAI transformer, ln_final, the token with the largest id, @ text_projection (lines 361-368);
    - the towers are OpenAI's CLIP, built here with open_clip's OpenAI conversion.
    """
    state = torch.load(path, weights_only=True)
    residual = state.pop("positional_embedding_res").float()
    clip = build_model_from_openai_state_dict(state, cast_dtype=None).float().eval()
    pixels = Compose([Resize(224, interpolation=InterpolationMode.BICUBIC), CenterCrop(224), ToTensor(),
                      Normalize(OPENAI_MEAN, OPENAI_STD)])(image.convert("RGB"))[None]
    tokens = open_clip.tokenize(texts, context_length=248)
    mask1 = torch.zeros(248, 1)
    mask1[:20] = 1
    with torch.inference_mode():
        x = clip.token_embedding(tokens) + clip.positional_embedding * mask1 + residual * (1 - mask1)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        text = x[torch.arange(len(texts)), tokens.argmax(dim=-1)] @ clip.text_projection
        return pixels, tokens, (F.normalize(clip.encode_image(pixels), dim=-1), F.normalize(text, dim=-1))


def test_longclip_checkpoint_embeds_as_longclip(files, models):
    image = _image((256, 224))
    pixels, tokens, theirs = _longclip_reference(files["longclip"], image, TEXTS)
    model, preprocess, tokenizer = fixclip.load(files["longclip"])
    assert model.context_length == 248 and torch.equal(tokenizer(TEXTS), tokens)
    assert torch.equal(preprocess(image)[None], pixels)
    _assert_same_embeddings(_embed(model, pixels, tokens), theirs)
    # The same weights in the 248-token formats embed the same way.
    _assert_same_embeddings(_embed(model, pixels, tokens), _embed(models[2], pixels, tokens))


def test_paper_profile_base_model_takes_a_hub_config_and_an_openai_archive(files, openai_reference, tmp_path):
    """train.base_model of configs/paper-30m.yaml: config = a hub open_clip_config.json, weights = OpenAI's .pt."""
    config = tmp_path / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": VIT_B16, "preprocess_cfg": PREPROCESS}))
    clip = load_clip(config, files["openai_archive"])
    pixels, tokens = torch.randn(2, 3, 224, 224), open_clip.tokenize(TEXTS)
    _assert_same_embeddings(_embed(clip.eval(), pixels, tokens), _embed(openai_reference, pixels, tokens))
    assert open_clip.get_model_preprocess_cfg(clip)["mean"] == PREPROCESS["mean"]
    with pytest.raises(CheckpointError, match="quick_gelu must be true"):
        load_clip(VIT_B16 | {"quick_gelu": False}, files["openai_archive"])
    assert _error(lambda: load_clip("ViT-B-16", files["openai_archive"])).startswith("ViT-B-16: quick_gelu must be")


def test_our_exports_load_through_fixclip_load(tmp_path):
    """Folders as our exports write them (their own verification is tested in tests/fixclip/export); they hold
    the backbone without the regional prompts."""
    model = trained_like_model()
    model.prompts_at_inference = False
    pixels, tokens = torch.randn(2, 3, 64, 64), model.tokenizer()(TEXTS)
    for folder, export in ((tmp_path / "open_clip", openclip_folder), (tmp_path / "transformers", hf_folder)):
        folder.mkdir()
        export.write_folder(model, BASE_CONFIG, folder, {})
        loaded, _, tokenizer = fixclip.load(folder)
        assert loaded.context_length == 248 and torch.equal(tokenizer(TEXTS), tokens)
        _assert_same_embeddings(_embed(loaded, pixels, tokens), _embed(model, pixels, tokens))


# ---- bad input: one line naming the file (and the tensor) -----------------------------------------------------

def _error(call, error=CheckpointError) -> str:
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def _touch(path):
    path.touch()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _touch, (self.marker,)


def test_missing_and_unknown_files_are_refused(tmp_path):
    missing = tmp_path / "ViT-B-16.pt"
    assert _error(lambda: fixclip.load(missing), CheckpointNotFound) == f"{missing}: no such file or folder"
    assert isinstance(CheckpointNotFound("x"), FileNotFoundError)
    junk = tmp_path / "weights.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert _error(lambda: fixclip.load(junk)).startswith(f"{junk}: no known checkpoint format")
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(damaged, "w") as out:
        out.writestr("damaged/constants.pkl", pickle.dumps(()))
        out.writestr("damaged/data.pkl", pickle.dumps({"weight": 1}, protocol=2)[:-3])
    assert _error(lambda: fixclip.load(damaged)).startswith(f"{damaged}: damaged TorchScript archive")
    other = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, other)
    assert "no tensor visual.conv1.weight, so not an OpenAI ViT CLIP" in _error(lambda: fixclip.load(other))
    (tmp_path / "siglip").mkdir()
    (tmp_path / "siglip" / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    assert "model_type 'siglip'; only transformers' CLIPModel" in _error(lambda: fixclip.load(tmp_path / "siglip"))
    (tmp_path / "empty").mkdir()
    assert _error(lambda: fixclip.load(tmp_path / "empty")).startswith(f"{tmp_path / 'empty'}: no model here")
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "open_clip_config.json").write_text(json.dumps({"model_cfg": VIT_B16}))
    assert "no weights file (open_clip_model.safetensors" in _error(lambda: fixclip.load(tmp_path / "hub"))


def test_code_in_a_pickle_is_never_run(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"visual.proj": _Payload(marker)}, evil)
    assert _error(lambda: fixclip.load(evil)).startswith(f"{evil}: refused to unpickle")
    archive = tmp_path / "evil_archive.pt"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("evil_archive/constants.pkl", pickle.dumps(()))
        out.writestr("evil_archive/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
    message = _error(lambda: fixclip.load(archive))
    assert message.startswith(f"{archive}: the archive pickles ") and "_touch" in message
    assert not marker.exists()


def test_config_that_does_not_fit_the_weights_names_the_tensor(files, tmp_path):
    weights = files["open_clip"] / "open_clip_model.safetensors"
    for name, change, expected in (
            ("narrow", {"vision_cfg": VIT_B16_248["vision_cfg"] | {"width": 512}},
             r"tensor visual\.\S+ has shape \(768.*, .*open_clip_config\.json gives \(512"),
            ("deep", {"text_cfg": VIT_B16_248["text_cfg"] | {"layers": 3}},
             r"no tensor transformer\.resblocks\.2\.\S+ that .*open_clip_config\.json needs \(and \d+ more\)")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "open_clip_model.safetensors").symlink_to(weights)
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": VIT_B16_248 | change}))
        message = _error(lambda: fixclip.load(folder))
        assert message.startswith(str(folder / "open_clip_model.safetensors")), message
        assert re.search(expected, message), message

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(files["transformers"] / "model.safetensors")
    config = json.loads((files["transformers"] / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"projection_dim": 256}))
    message = _error(lambda: fixclip.load(folder))
    assert message == (f"{folder / 'model.safetensors'}: tensor visual_projection.weight has shape (512, 768), "
                       f"{folder / 'config.json'} gives (256, 768)")


def test_longclip_checkpoint_with_a_77_token_config_is_refused(files):
    message = _error(lambda: load_clip(VIT_B16, files["longclip"]))
    assert message == (f"{files['longclip']}: a Long-CLIP checkpoint with 248 text positions, but the config sets "
                       f"text_cfg.context_length 77")
