"""The inference model of a ``FixClip`` as a plain open_clip model with a 248-row text positional table."""
from torch import nn

from ..base_model import build_clip, resolve_model_config
from ..model import FixClip


class ExportError(ValueError):
    """The export failed: what was written would embed differently from our model."""


class NotExpressible(ExportError):
    """The format cannot express the model (found before anything is written), e.g. a multi-branch image tower."""


def check_plain_inference(model: FixClip) -> None:
    """Exports hold an open_clip backbone: a model whose ``encode_image`` / ``encode_text`` adds more (e.g. a
    multi-branch image tower) cannot be exported faithfully."""
    for name in ("encode_image", "encode_text"):
        if getattr(type(model), name) is not getattr(FixClip, name):
            raise NotExpressible(f"{type(model).__name__}.{name} is not the open_clip backbone's, so no open_clip or "
                              "transformers model can reproduce its embeddings")


def folded_config(model: FixClip, base_config) -> dict:
    """The base open_clip config with the text context set to the model's (248 after the stretch)."""
    config = resolve_model_config(base_config)
    config["text_cfg"]["context_length"] = model.context_length
    return config


def folded_clip(model: FixClip, base_config) -> tuple[nn.Module, dict]:
    """(open_clip model, its config): the wrapped CLIP's weights, the stretched table as its positional embedding."""
    check_plain_inference(model)
    config = folded_config(model, base_config)
    clip = build_clip(config)
    state = dict(model.clip.state_dict())
    prefix = "text." if hasattr(model.clip, "text") else ""  # CustomTextCLIP keeps its text tower under .text
    state[f"{prefix}positional_embedding"] = model.text_position_table().detach()
    clip.load_state_dict(state, strict=True)
    return clip.eval(), config
