"""Read the CLIP checkpoints people download into open_clip models; nothing in a file is ever executed.

``load_checkpoint(path)`` detects the format from the path:
- an OpenAI TorchScript archive (``ViT-B-16.pt``) or a plain OpenAI state dict: tensors only (the archive's code is
  never run), open_clip's OpenAI layout, QuickGELU;
- an open_clip hub folder: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) with
  ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``;
- a transformers ``CLIPModel`` folder: ``config.json`` (model_type clip) with ``model.safetensors`` or
  ``pytorch_model.bin``, preprocessing from ``preprocessor_config.json``;
- a Long-CLIP checkpoint (``longclip-B.pt``): an OpenAI-layout state dict with 248 text positions in two tables.
``load_clip(config, weights)`` builds a given open_clip config and fills it from any of these files (what
``train.base_model`` and evaluation's base model use).
Pickles are read with ``weights_only=True``; what cannot be read raises ``CheckpointError`` naming file and reason.
"""
import json
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from open_clip.model import get_model_preprocess_cfg, set_model_preprocess_cfg
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .base_model import ModelRef, build_clip, resolve_model_config
from core.cli import UserError

OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS = "open_clip_config.json", ("open_clip_model.safetensors",
                                                               "open_clip_pytorch_model.bin")
HF_CONFIG, HF_PREPROCESSOR, HF_WEIGHTS = "config.json", "preprocessor_config.json", ("model.safetensors",
                                                                                     "pytorch_model.bin")
# Scalars OpenAI's archives keep next to the weights; open_clip's conversion drops them (open_clip/model.py,
# build_model_from_openai_state_dict).
OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")
# Long-CLIP adds the text positions row by row from two tables: rows < 20 from ``positional_embedding``, the rest
# from ``positional_embedding_res`` (beichenzbc/Long-CLIP, model/model_longclip.py: the masks mask1 / mask2 in
# CLIP.__init__, lines 306-309, used in encode_text, line 359). The masks are plain attributes, not buffers, so the
# released state dicts (train/train.py line 277 saves ``state_dict()``) hold the two 248-row tables and no mask.
LONGCLIP_KEEP = 20
# Storage classes a TorchScript pickle names for its tensors' element types.
_STORAGE_DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
                   "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read as asked; the message names the file and the reason."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """The path does not exist."""


@dataclass(frozen=True)
class Checkpoint:
    """An open_clip model (float32, its preprocessing attached as open_clip attaches it), its config and format."""

    model: nn.Module
    config: dict
    kind: str

    @property
    def preprocess(self) -> dict:
        """open_clip ``PreprocessCfg`` fields: size, mean, std, interpolation, resize_mode, ..."""
        return get_model_preprocess_cfg(self.model)

    @property
    def context_length(self) -> int:
        return self.model.context_length


def load_checkpoint(path: str | Path) -> Checkpoint:
    """The open_clip model in ``path`` (formats in the module docstring), in eval mode."""
    checkpoint = _read_checkpoint(_existing(path))
    checkpoint.model.eval()
    return checkpoint


def _read_checkpoint(path: Path) -> Checkpoint:
    if path.is_dir():
        if (path / OPEN_CLIP_CONFIG).is_file():
            return _open_clip_folder(path)
        if (path / HF_CONFIG).is_file():
            return _transformers_folder(path)
        raise CheckpointError(f"{path}: no model here (looked for fixclip.json or model.json: our folders, read by "
                              f"fixclip.load; {OPEN_CLIP_CONFIG}: open_clip; {HF_CONFIG}: transformers)")
    state = read_state_dict(path)
    if "positional_embedding_res" in state:
        state, kind = _fold_longclip(state, path), "Long-CLIP checkpoint"
    elif "text_model.embeddings.token_embedding.weight" in state:
        raise CheckpointError(f"{path}: a transformers CLIPModel state dict; load its folder (with {HF_CONFIG})")
    else:
        kind = "OpenAI TorchScript archive" if _is_torchscript(path) else "OpenAI state dict"
    config = _openai_config(state, path)
    return Checkpoint(_build(config, _without_metadata(state), path, "the OpenAI layout", {}), config, kind)


def load_clip(config: ModelRef, weights: str | Path) -> nn.Module:
    """The open_clip model of ``config`` (dict, built-in name, flat or hub-style ``open_clip_config.json``) with the
    tensors of the file ``weights`` (open_clip / OpenAI state dict, OpenAI archive or Long-CLIP checkpoint)."""
    weights = _existing(weights)
    if isinstance(config, (str, Path)) and str(config).endswith(".json"):
        _existing(config)
    model_config, preprocess = resolve_model_config(config), _hub_preprocess(config)
    if weights.is_dir():
        raise CheckpointError(f"{weights}: a folder; give its weights file (or load the folder on its own)")
    state = read_state_dict(weights)
    trained_with_quick_gelu = _is_torchscript(weights) or any(key in state for key in OPENAI_METADATA)
    if "positional_embedding_res" in state:
        state, trained_with_quick_gelu = _fold_longclip(state, weights), True
        context = model_config["text_cfg"].get("context_length", 77)
        if context != len(state["positional_embedding"]):
            raise CheckpointError(f"{weights}: a Long-CLIP checkpoint with {len(state['positional_embedding'])} "
                                  f"text positions, but {_name(config)} sets text_cfg.context_length {context}")
    if trained_with_quick_gelu and not model_config.get("quick_gelu", False):
        raise CheckpointError(f"{_name(config)}: quick_gelu must be true for {weights} (OpenAI-trained weights use "
                              f"QuickGELU)")
    return _build(model_config, _without_metadata(state), weights, _name(config), preprocess)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, a ``torch.save`` file (``weights_only=True``; a nested
    "state_dict" / "model" entry and DDP's "module." prefix are unwrapped) or a TorchScript archive (tensors only)."""
    path = _existing(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except SafetensorError as error:
            raise CheckpointError(f"{path}: unreadable safetensors file ({error})") from error
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic == b"PK\x03\x04" and _is_torchscript(path):
        return _torchscript_tensors(path)
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):  # neither torch.save's zip nor a pickle
        raise CheckpointError(f"{path}: no known checkpoint format (not safetensors, a TorchScript archive or a "
                              f"torch.save file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = next((line for line in str(error).splitlines() if "GLOBAL" in line), "not tensors only")
        raise CheckpointError(f"{path}: refused to unpickle (weights_only=True): {reason}") from error
    except Exception as error:  # torch's readers raise several types on a damaged file
        raise CheckpointError(f"{path}: unreadable torch.save file ({type(error).__name__}: {error})") from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


# ---- formats ----------------------------------------------------------------------------------------------------

def _open_clip_folder(folder: Path) -> Checkpoint:
    config_file = folder / OPEN_CLIP_CONFIG
    saved = json.loads(config_file.read_text())
    if "model_cfg" not in saved:
        raise CheckpointError(f"{config_file}: no model_cfg (an open_clip hub config holds model_cfg and "
                              f"preprocess_cfg)")
    weights = _weights_file(folder, OPEN_CLIP_WEIGHTS)
    return Checkpoint(load_clip(config_file, weights), saved["model_cfg"], "open_clip hub folder")


def _transformers_folder(folder: Path) -> Checkpoint:
    config_file = folder / HF_CONFIG
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "clip":
        raise CheckpointError(f"{config_file}: model_type {model_type!r}; only transformers' CLIPModel ('clip') "
                              f"is read")
    from transformers import CLIPConfig, CLIPModel  # imported only for this format (slow to import)

    hf_config = CLIPConfig.from_pretrained(folder)
    config = _open_clip_config_of(hf_config, config_file)
    weights = _weights_file(folder, HF_WEIGHTS)
    # Older transformers versions also saved the position_ids buffers; they are arange(), not weights.
    state = {k: v for k, v in read_state_dict(weights).items() if not k.endswith("embeddings.position_ids")}
    with torch.device("meta"):
        expected = CLIPModel(hf_config).state_dict()
    _check_fits(state, {k: v.shape for k, v in expected.items()}, weights, str(config_file))
    model = build_clip(config)
    model.load_state_dict(_open_clip_state_of(state, config), strict=True)
    set_model_preprocess_cfg(model, _preprocess(_transformers_preprocess(folder), model))
    return Checkpoint(model, config, "transformers CLIPModel folder")


def _fold_longclip(state: dict, path: Path) -> dict:
    """The one 248-row table Long-CLIP's encode_text adds: rows < 20 of positional_embedding, the rest of
    positional_embedding_res (see LONGCLIP_KEEP)."""
    state = dict(state)
    kept, stretched = state["positional_embedding"], state.pop("positional_embedding_res")
    if kept.shape != stretched.shape:
        raise CheckpointError(f"{path}: positional_embedding {tuple(kept.shape)} and positional_embedding_res "
                              f"{tuple(stretched.shape)} differ in shape")
    state["positional_embedding"] = torch.cat([kept[:LONGCLIP_KEEP], stretched[LONGCLIP_KEEP:]])
    return state


def _openai_config(state: dict, path: Path) -> dict:
    """The open_clip config of an OpenAI-layout ViT state dict, derived as open_clip's
    ``build_model_from_openai_state_dict`` derives it (open_clip/model.py): 64-channel heads, MLP ratio 4,
    QuickGELU (OpenAI's models were trained with it)."""
    needed = ("visual.conv1.weight", "visual.positional_embedding", "text_projection", "positional_embedding",
              "token_embedding.weight", "ln_final.weight")
    missing = [key for key in needed if key not in state]
    if missing:
        raise CheckpointError(f"{path}: no tensor {missing[0]}, so not an OpenAI ViT CLIP (nor Long-CLIP); an "
                              f"open_clip state dict needs its config (train.base_model.config)")
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["ln_final.weight"].shape[0]

    def layers(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    return {"embed_dim": state["text_projection"].shape[1], "quick_gelu": True,
            "vision_cfg": {"image_size": patch * grid, "patch_size": patch, "width": vision_width,
                           "layers": layers("visual.transformer.resblocks."), "head_width": 64},
            "text_cfg": {"context_length": state["positional_embedding"].shape[0],
                         "vocab_size": state["token_embedding.weight"].shape[0], "width": text_width,
                         "heads": text_width // 64, "layers": layers("transformer.resblocks.")}}


# transformers CLIPModel names -> open_clip names: the inverse of fixclip/export/hf_folder.py (hf_state_dict,
# _encoder_layers). Projections are Linear weights there (P.T) and matrices used as x @ P in open_clip.
_HF_RENAMED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
_HF_TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
_HF_LAYER_PARTS = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_HF_TOWERS = (("text_model.encoder.layers", "transformer.resblocks", "text_cfg"),
              ("vision_model.encoder.layers", "visual.transformer.resblocks", "vision_cfg"))


def _open_clip_state_of(hf_state: dict, config: dict) -> dict:
    out = {"logit_scale": hf_state["logit_scale"]}
    out |= {ours: hf_state[theirs] for theirs, ours in _HF_RENAMED.items()}
    out |= {ours: hf_state[theirs].T.contiguous() for theirs, ours in _HF_TRANSPOSED.items()}
    for theirs, ours, tower in _HF_TOWERS:
        for i in range(config[tower]["layers"]):
            t, o = f"{theirs}.{i}", f"{ours}.{i}"
            for p in ("weight", "bias"):
                out[f"{o}.attn.in_proj_{p}"] = torch.cat([hf_state[f"{t}.self_attn.{q}_proj.{p}"] for q in "qkv"])
                for hf_part, part in _HF_LAYER_PARTS.items():
                    out[f"{o}.{part}.{p}"] = hf_state[f"{t}.{hf_part}.{p}"]
    return out


def _open_clip_config_of(hf, config_file: Path) -> dict:
    """open_clip config of a transformers CLIPConfig, refusing what open_clip's CLIP computes differently."""
    text, vision = hf.text_config, hf.vision_config
    acts = {text.hidden_act, vision.hidden_act}
    if len(acts) != 1 or not acts <= {"gelu", "quick_gelu"}:
        raise CheckpointError(f"{config_file}: hidden_act {sorted(acts)}; open_clip's CLIP has gelu or quick_gelu, "
                              f"the same in both towers")
    if {text.layer_norm_eps, vision.layer_norm_eps} != {1e-5}:
        raise CheckpointError(f"{config_file}: layer_norm_eps {text.layer_norm_eps} / {vision.layer_norm_eps}; "
                              f"open_clip's CLIP uses 1e-5")
    # transformers pools at the first eos_token_id, or at the largest id when it is the legacy 2 (modeling_clip.py,
    # CLIPTextTransformer.forward); open_clip pools at the largest id, which its tokenizer's end-of-text token is.
    if text.eos_token_id not in (2, SimpleTokenizer().eot_token_id):
        raise CheckpointError(f"{config_file}: text_config.eos_token_id {text.eos_token_id} is not CLIP's "
                              f"end-of-text token; open_clip pools at the largest token id")
    return {"embed_dim": hf.projection_dim, "quick_gelu": acts == {"quick_gelu"},
            "vision_cfg": {"image_size": vision.image_size, "patch_size": vision.patch_size,
                           "width": vision.hidden_size, "layers": vision.num_hidden_layers,
                           "head_width": vision.hidden_size // vision.num_attention_heads,
                           "mlp_ratio": vision.intermediate_size / vision.hidden_size},
            "text_cfg": {"context_length": text.max_position_embeddings, "vocab_size": text.vocab_size,
                         "width": text.hidden_size, "heads": text.num_attention_heads,
                         "layers": text.num_hidden_layers, "mlp_ratio": text.intermediate_size / text.hidden_size}}


def _transformers_preprocess(folder: Path) -> dict:
    """The folder's CLIPImageProcessor as open_clip preprocess fields (open_clip's defaults without one)."""
    if not (folder / HF_PREPROCESSOR).is_file():
        return {}
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(folder)
    path = folder / HF_PREPROCESSOR
    interpolation = {2: "bilinear", 3: "bicubic"}.get(int(processor.resample))
    edge, crop = processor.size.get("shortest_edge"), processor.crop_size
    steps = (processor.do_resize, processor.do_center_crop, processor.do_rescale, processor.do_normalize)
    if interpolation is None or not all(steps) or not edge == crop["height"] == crop["width"]:
        raise CheckpointError(f"{path}: open_clip's eval transform resizes the shorter side (bilinear or bicubic) "
                              f"and centre-crops to one size, then normalises; this processor does otherwise")
    return {"size": edge, "mean": list(processor.image_mean), "std": list(processor.image_std),
            "interpolation": interpolation, "resize_mode": "shortest"}


# ---- TorchScript archives ---------------------------------------------------------------------------------------

def _is_torchscript(path: Path) -> bool:
    """torch.jit.save writes constants.pkl next to data.pkl (torch.save does not); torch.load checks the same."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


class _ArchivedModule:
    """A TorchScript module as its pickle stores it: a dict of attributes (tensors, submodules, flags)."""

    def __setstate__(self, state: dict):
        self.attributes = state


class _TensorsOnly(pickle.Unpickler):
    """Unpickles a TorchScript archive's data.pkl building tensors and attribute holders only: any other global
    (functions, classes, the archive's code) is refused, so nothing in the file runs."""

    def __init__(self, archive: zipfile.ZipFile, root: str, path: Path):
        super().__init__(archive.open(f"{root}data.pkl"))
        self.archive, self.root, self.path = archive, root, path

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):  # the scripted module classes: only their attributes are kept
            return _ArchivedModule
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):  # the (empty) backward hooks of a tensor
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise CheckpointError(f"{self.path}: the archive pickles {module}.{name}; only tensors and module "
                              f"attributes are read")

    def persistent_load(self, pid):
        """('storage', element type, key, device, numel) -> the storage's elements as a flat tensor."""
        _, dtype, key, _, numel = pid
        data = bytearray(self.archive.read(f"{self.root}data/{key}"))
        return torch.frombuffer(data, dtype=dtype) if numel else torch.empty(0, dtype=dtype)


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, requires_grad, hooks, metadata=None):
    """What torch._utils._rebuild_tensor_v2 builds, from our flat storage tensor."""
    return torch.as_strided(storage, size, stride, offset)


def _torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the archived module tree by its dotted name (parameters and buffers, as
    ``state_dict()`` of the loaded module would list them, plus any other tensor attributes)."""
    with zipfile.ZipFile(path) as archive:
        roots = [name[:-len("data.pkl")] for name in archive.namelist() if name.count("/") == 1
                 and name.endswith("/data.pkl")]
        if len(roots) != 1:
            raise CheckpointError(f"{path}: a TorchScript archive without one top-level data.pkl")
        try:
            module = _TensorsOnly(archive, roots[0], path).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path}: damaged TorchScript archive ({type(error).__name__}: {error})") from error
    if not isinstance(module, _ArchivedModule):
        raise CheckpointError(f"{path}: the archive's data.pkl holds no module")

    def walk(holder: _ArchivedModule, prefix: str):
        for name, value in holder.attributes.items():
            if isinstance(value, torch.Tensor):
                yield prefix + name, value
            elif isinstance(value, _ArchivedModule):
                yield from walk(value, f"{prefix}{name}.")

    return dict(walk(module, ""))


# ---- shared -----------------------------------------------------------------------------------------------------

def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFound(f"{path}: no such file or folder")
    return path


def _name(config: ModelRef) -> str:
    return "the config" if isinstance(config, dict) else str(config)


def _weights_file(folder: Path, names: tuple[str, ...]) -> Path:
    found = next((folder / name for name in names if (folder / name).is_file()), None)
    if found is None:
        raise CheckpointError(f"{folder}: no weights file ({' or '.join(names)})")
    return found


def _hub_preprocess(config: ModelRef) -> dict:
    """The preprocess_cfg of a hub-style open_clip_config.json ({} for any other config)."""
    if isinstance(config, (str, Path)) and str(config).endswith(".json"):
        return json.loads(Path(config).read_text()).get("preprocess_cfg", {})
    return {}


def _preprocess(saved: dict, model: nn.Module) -> dict:
    """open_clip's defaults overlaid with the saved fields; size is the model's, as open_clip's create_model sets
    it (open_clip/factory.py)."""
    cfg = merge_preprocess_dict(asdict(PreprocessCfg()), saved)
    cfg["size"] = model.visual.image_size
    return cfg


def _without_metadata(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in OPENAI_METADATA}


def _check_fits(state: dict, expected: dict, path: Path, config: str) -> None:
    """Raise CheckpointError naming the first tensor that is missing, unexpected or of another shape."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    for names, what in ((missing, "no tensor {} that {} needs"), (unexpected, "tensor {} that {} does not have")):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise CheckpointError(f"{path}: {what.format(names[0], config)}{more}")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise CheckpointError(f"{path}: tensor {key} has shape {tuple(state[key].shape)}, {config} gives "
                                  f"{tuple(shape)}")


def _build(config: dict, state: dict, path: Path, config_name: str, preprocess: dict) -> nn.Module:
    """Build ``config``, check that ``state`` fits it, load it and attach the preprocessing."""
    model = build_clip(config)
    _check_fits(state, {k: v.shape for k, v in model.state_dict().items()}, path, config_name)
    model.load_state_dict(state, strict=True)
    set_model_preprocess_cfg(model, _preprocess(preprocess, model))
    return model
