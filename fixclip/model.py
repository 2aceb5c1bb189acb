"""``FixClip``: an open_clip CLIP wrapped with the FIX-CLIP modules, each switchable through ``FixClipConfig``.

The wrapped model's submodules are used as they are; the forward passes here only iterate its transformer blocks
themselves, to insert the mask embedding and regional prompts and to collect per-layer CLS / EOT tokens.
"""
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

from .base_model import ModelRef
from .checkpoint_formats import load_clip
from .config import FixClipConfig
from .hfa import GroupAlignmentHead
from .loss import FixClipLoss
from .masking import MaskEmbedding, random_patch_mask
from .regional_prompts import RegionalPrompts, regional_attention_mask
from .text_stretch import StretchedPositions, long_tokenizer
from .trainable import Method, Trainable

_TRIMMABLE_POOLS = ("argmax", "eos", "first")


class FixClip(Trainable):
    """FIX-CLIP on top of an open_clip ``CLIP`` (or ``CustomTextCLIP`` with an open_clip text transformer).

    ``encode_image`` / ``encode_text`` behave like open_clip's; ``forward(images, long_tokens, short_tokens)``
    returns the features ``fixclip.loss.FixClipLoss`` needs.
    """

    def __init__(self, clip: nn.Module, cfg: FixClipConfig = FixClipConfig()):
        super().__init__()
        self.clip = clip
        self.cfg = cfg
        self.method_cfg = cfg  # its params section (Long-CLIP and Holistic CLIP replace it with their own)
        visual, tower = clip.visual, self._text_tower
        if not isinstance(visual, VisionTransformer):
            raise ValueError("FixClip needs open_clip's VisionTransformer image tower")
        if getattr(clip, "logit_bias", None) is not None:
            raise ValueError("FixClip trains with InfoNCE; models with a logit_bias (SigLIP) are not supported")
        vision_layers = len(visual.transformer.resblocks)
        text_layers = len(tower.transformer.resblocks)
        self.num_patches = visual.grid_size[0] * visual.grid_size[1]
        base_context = tower.positional_embedding.shape[0]
        cfg.check_fits(vision_layers, text_layers, tuple(visual.grid_size), base_context)
        if (cfg.regional_prompts or cfg.dual_branch) and not isinstance(visual.patch_dropout, nn.Identity):
            raise ValueError("fixclip: regional prompts and masking need the 1 + N token layout; "
                             "set the base model's patch_dropout to 0")

        self.context_length = cfg.context_length(base_context)
        self.text_positions: Optional[StretchedPositions] = None
        if cfg.stretch:
            self.text_positions = StretchedPositions(tower.positional_embedding, cfg.stretch_keep, cfg.stretch_ratio)
            del tower.positional_embedding  # replaced by text_positions; a stale 77-row table must not be used
        causal = tower.attn_mask is not None
        self.register_buffer("text_attn_mask", self._causal_mask(self.context_length) if causal else None,
                             persistent=False)
        self.trim_text = cfg.trim_text_padding and causal and self._text_pool[0] in _TRIMMABLE_POOLS

        self.mask_embedding = MaskEmbedding(visual.transformer.width) if cfg.dual_branch and cfg.mask_ratio > 0 else None
        self.mask_generator = torch.Generator().manual_seed(cfg.mask_seed)

        self.prompts: Optional[RegionalPrompts] = None
        if cfg.regional_prompts:
            self.prompts = RegionalPrompts(vision_layers - cfg.prompt_start_layer + 1, cfg.num_prompts,
                                           visual.transformer.width, carried=cfg.prompt_layers == "carried")
            self.register_buffer("prompt_attn_mask", regional_attention_mask(
                tuple(visual.grid_size), tuple(cfg.prompt_grid), cfg.prompt_regions), persistent=False)
        # The class token reads the prompts in training, so inference keeps them (the paper's image encoder);
        # False scores the backbone alone, which is what an open_clip or transformers export can hold.
        self.prompts_at_inference = True

        self.hfa_image: Optional[GroupAlignmentHead] = None
        self.hfa_text: Optional[GroupAlignmentHead] = None
        self.hfa_logit_scale: Optional[nn.Parameter] = None
        self.hfa_heads_only = False  # the heads' warm-up, set by start_step for the first steps
        if cfg.hfa:
            embed_dim = visual.output_dim
            self.hfa_image = GroupAlignmentHead(vision_layers, cfg.hfa_groups, cfg.hfa_first_group,
                                                visual.transformer.width, embed_dim, cfg.hfa_sigma)
            self.hfa_text = GroupAlignmentHead(text_layers, cfg.hfa_groups, cfg.hfa_first_group,
                                               tower.transformer.width, embed_dim, cfg.hfa_sigma)
            groups = cfg.hfa_groups - cfg.hfa_first_group + 1
            self.hfa_logit_scale = nn.Parameter(torch.full((groups,), math.log(cfg.hfa_logit_scale_init)))

    def new_parameters(self) -> List[nn.Parameter]:
        """The parameters this method adds from scratch (mask token, regional prompts, HFA heads and their logit
        scales): the optimizer does not decay them. The stretched text positions are not new: they are the base
        table, interpolated."""
        prompts = list(self.prompts.parameters()) if self.prompts is not None else []
        return prompts + self.lr_scaled_parameters()

    def lr_scaled_parameters(self) -> List[nn.Parameter]:
        """The new parameters that train at ``new_params_lr_scale`` times the learning rate: the mask token, the
        HFA heads and, with ``prompt_lr_scaled``, the regional prompts (docs/methods.md, set-up choices)."""
        prompts = self.prompts if self.cfg.prompt_lr_scaled else None
        modules = (self.mask_embedding, prompts, self.hfa_image, self.hfa_text)
        params = [p for m in modules if m is not None for p in m.parameters()]
        return params + ([self.hfa_logit_scale] if self.hfa_logit_scale is not None else [])

    def logit_scales(self) -> List[nn.Parameter]:
        """The main logit scale and the HFA groups' own."""
        return [self.logit_scale] + ([self.hfa_logit_scale] if self.hfa_logit_scale is not None else [])

    def seed_rank(self, rank: int) -> None:
        """The mask generator draws from ``mask_seed + rank``."""
        self.mask_generator.manual_seed(self.cfg.mask_seed + rank)

    def rng_state(self) -> dict:
        return {"mask": self.mask_generator.get_state()}

    def set_rng_state(self, state: dict) -> None:
        self.mask_generator.set_state(state["mask"])

    def start_step(self, step: int) -> None:
        """For the first ``hfa_warmup_steps`` steps the HFA heads learn alone."""
        self.hfa_heads_only = step < self.cfg.hfa_warmup_steps

    @classmethod
    def from_pretrained(cls, model: ModelRef, weights: Union[str, Path],
                        cfg: FixClipConfig = FixClipConfig()) -> "FixClip":
        """Wrap the open_clip model ``model`` (name, JSON config or dict) loaded from a local ``weights`` file."""
        return cls(load_clip(model, weights), cfg)

    # ---- open_clip-compatible surface -------------------------------------------------------------------------

    def tokenizer(self):
        """open_clip's tokenizer at this model's context length (248 with the stretch)."""
        return long_tokenizer(self.context_length)

    def encode_image(self, image: torch.Tensor, normalize: bool = False,
                     prompts: Optional[bool] = None) -> torch.Tensor:
        """Image features as training computes them for the long branch: the regional prompts are in the tower
        (the mask embedding and the HFA heads are not: they feed the training losses only). With ``prompts``
        False (default: ``prompts_at_inference``), the backbone alone: a plain open_clip image tower, what the
        exports hold."""
        prompts = self.prompts_at_inference if prompts is None else prompts
        features, _ = self._image_tower(self._image_embed(image), collect=False, prompts=prompts)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features, _ = self._text_tower_forward(text, collect=False)
        return F.normalize(features, dim=-1) if normalize else features

    # ---- training forward -------------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, long_tokens: torch.Tensor,
                short_tokens: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Features for ``FixClipLoss``: long caption <-> raw image always; short caption <-> masked image with
        ``dual_branch``; per-group HFA features of the branch named by ``hfa_branch`` with ``hfa``."""
        cfg = self.cfg
        hfa_on_short = cfg.hfa and cfg.hfa_branch == "short"
        batch = images.shape[0]
        embedded = self._image_embed(images)
        if cfg.dual_branch:
            if short_tokens is None:
                raise ValueError("dual_branch needs short_tokens")
            # Both image branches share the patch embedding and run as one batch of 2B.
            both, layer_cls = self._image_tower(torch.cat([embedded, self._masked(embedded)]), collect=cfg.hfa)
            image, short_image = both.split(batch)
            layer_cls = [t[batch:] if hfa_on_short else t[:batch] for t in layer_cls]
        else:
            image, layer_cls = self._image_tower(embedded, collect=cfg.hfa)
        text, layer_eot = self._text_tower_forward(long_tokens, collect=cfg.hfa and not hfa_on_short)

        out = {"image_features": F.normalize(image, dim=-1), "text_features": F.normalize(text, dim=-1),
               "logit_scale": self.clip.logit_scale.exp()}
        if cfg.dual_branch:
            short_text, short_eot = self._text_tower_forward(short_tokens, collect=hfa_on_short)
            layer_eot = short_eot if hfa_on_short else layer_eot
            out["short_image_features"] = F.normalize(short_image, dim=-1)
            out["short_text_features"] = F.normalize(short_text, dim=-1)
        if cfg.hfa:
            if self.hfa_heads_only:
                layer_cls, layer_eot = [t.detach() for t in layer_cls], [t.detach() for t in layer_eot]
            out["hfa_image"] = [F.normalize(z, dim=-1) for z in self.hfa_image(layer_cls)]
            out["hfa_text"] = [F.normalize(z, dim=-1) for z in self.hfa_text(layer_eot)]
            out["hfa_logit_scale"] = self.hfa_logit_scale.exp()
        return out

    # ---- image tower ------------------------------------------------------------------------------------------

    def _image_embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding + class token + positional embedding: [B, 1 + N, width] (before ln_pre)."""
        visual = self.clip.visual
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)

    def _masked(self, embedded: torch.Tensor) -> torch.Tensor:
        """The masked-branch input: a seeded random ``mask_ratio`` of patch tokens replaced by the mask embedding."""
        if self.mask_embedding is None:
            return embedded
        patch_mask = random_patch_mask(embedded.shape[0], self.num_patches, self.cfg.mask_ratio, self.mask_generator)
        return self.mask_embedding(embedded, patch_mask.to(embedded.device))

    def _image_tower(self, embedded: torch.Tensor, collect: bool,
                     prompts: bool = True) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run ln_pre, the blocks (with regional prompts from layer l on, if ``prompts``) and the pooling head.

        Returns the projected image features and, if ``collect``, the CLS token after every layer."""
        visual = self.clip.visual
        x = visual.ln_pre(visual.patch_dropout(embedded))
        keep = x.shape[1]
        first_prompt_layer = self.cfg.prompt_start_layer - 1
        layer_cls = []
        for i, block in enumerate(visual.transformer.resblocks):
            attn_mask = None
            if prompts and self.prompts is not None and i >= first_prompt_layer:
                x = self.prompts.insert(x, i - first_prompt_layer, keep)
                attn_mask = self.prompt_attn_mask
            x = block(x, attn_mask=attn_mask)
            if collect:
                layer_cls.append(x[:, 0])
        pooled, _ = visual._pool(x[:, :keep])  # prompts dropped: output shape as in open_clip
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled, layer_cls

    # ---- text tower -------------------------------------------------------------------------------------------

    @property
    def _text_tower(self) -> nn.Module:
        """The module holding the text transformer's parts: the CLIP itself, or CustomTextCLIP's ``text``."""
        text = getattr(self.clip, "text", None)
        if text is None:
            return self.clip
        if not isinstance(text, TextTransformer) or text.cls_emb is not None:
            raise ValueError("FixClip needs open_clip's TextTransformer text tower without a CLS embedding")
        return text

    @property
    def _text_pool(self) -> Tuple[str, Optional[int]]:
        tower = self._text_tower
        if isinstance(tower, CLIP):
            return tower.text_pool_type, getattr(tower, "text_eos_id", None)
        return tower.pool_type, tower.eos_id

    @staticmethod
    def _causal_mask(length: int) -> torch.Tensor:
        return torch.full((length, length), float("-inf")).triu_(1)

    def _pool_index(self, text: torch.Tensor) -> torch.Tensor:
        """Position of the pooled token of every sequence (open_clip's text_global_pool rule)."""
        pool_type, eos_id = self._text_pool
        if pool_type == "argmax":
            return text.argmax(dim=-1)
        if pool_type == "eos":
            return (text == eos_id).int().argmax(dim=-1)
        if pool_type == "first":
            return torch.zeros(text.shape[0], dtype=torch.long, device=text.device)
        if pool_type == "last":
            return torch.full((text.shape[0],), text.shape[1] - 1, dtype=torch.long, device=text.device)
        raise ValueError(f"FixClip does not support text pool_type {pool_type!r}")

    def text_position_table(self) -> torch.Tensor:
        """The whole [context_length, width] text positional table (stretched, if the stretch is on)."""
        return self._text_positions(self.context_length)

    def _text_positions(self, length: int) -> torch.Tensor:
        if self.text_positions is not None:
            return self.text_positions(length)
        return self._text_tower.positional_embedding[:length]

    def _text_states(self, text: torch.Tensor, collect: bool,
                     trim: bool) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """Token + position embedding, causal blocks, ln_final: the token states [B, L, D] (with ``trim``, cut after
        the last end-of-text token), where each text pools, and, if ``collect``, the pooled token after every
        layer."""
        if text.shape[1] > self.context_length:
            raise ValueError(f"token length {text.shape[1]} exceeds the context length {self.context_length}")
        tower = self._text_tower
        pooled_at = self._pool_index(text)
        if trim:
            text = text[:, :int(pooled_at.max()) + 1]
        length = text.shape[1]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(text).to(cast_dtype) + self._text_positions(length).to(cast_dtype)
        attn_mask = None if self.text_attn_mask is None else self.text_attn_mask[:length, :length]
        rows = torch.arange(text.shape[0], device=text.device)
        layer_eot = []
        for block in tower.transformer.resblocks:
            x = block(x, attn_mask=attn_mask)
            if collect:
                layer_eot.append(x[rows, pooled_at])
        return tower.ln_final(x), pooled_at, layer_eot

    def token_states(self, text: torch.Tensor) -> torch.Tensor:
        """The text tower's per-token states after its final LayerNorm, [B, L, D]: what a diffusion UNet
        cross-attends to (transformers' ``CLIPTextModel.last_hidden_state`` of an export)."""
        return self._text_states(text, collect=False, trim=False)[0]

    def _text_tower_forward(self, text: torch.Tensor, collect: bool) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The projected text features (pooled at the end-of-text token) and, if ``collect``, the pooled token after
        every layer."""
        states, pooled_at, layer_eot = self._text_states(text, collect, trim=self.trim_text)
        pooled = states[torch.arange(text.shape[0], device=text.device), pooled_at]
        projection = self._text_tower.text_projection
        if isinstance(projection, nn.Linear):
            pooled = projection(pooled)
        elif projection is not None:
            pooled = pooled @ projection
        return pooled, layer_eot


METHOD = Method(FixClip, FixClipLoss)  # train.method: fixclip (fixclip.methods)
