"""FIX-CLIP model library on top of open_clip (composition: open_clip's modules are called, never copied).

Paper equation / component -> code
-----------------------------------
Long-CLIP knowledge-preserving stretch, P'(p) = P(p) for p < 20,
  P'(p) = (1 - a) P(i) + a P(i+1) with t = 20 + (p - 20)/4 (77 -> 248)   text_stretch.stretch_positions
Positions 0..19 frozen                                                  text_stretch.StretchedPositions (buffer)
248-token tokenizer                                                     text_stretch.long_tokenizer
Dual branch: masked image x_m = replace 75% patch tokens with e_mask    masking.random_patch_mask, MaskEmbedding,
                                                                        model.FixClip._masked
Regional prompts P_l..P_L and the unidirectional attention mask         regional_prompts.regional_attention_mask,
                                                                        RegionalPrompts, model.FixClip._image_tower
GTA: g_k = sum_j a_j h_{(k-1)S+j}, a_j = N(j; S, 1) / sum               hfa.gaussian_group_weights, GroupAlignmentHead
GMF: z_k = LayerNorm(Linear_k(g_k)), per group and tower                hfa.GroupAlignmentHead.projections
Symmetric InfoNCE with label smoothing                                  loss.info_nce
L = sum_{i=K..G} w_i L_mi + L_short + L_long (L_mi at its own scale)    loss.FixClipLoss, model.FixClip.hfa_logit_scale
Module switches and hyper-parameters (M, l, G, K, w_i, ratio, ...)      config.FixClipConfig
Long-CLIP: short text <-> image features on the batch's top-k components longclip (train.method: longclip)
Holistic CLIP: K class tokens <-> K captions, multi-to-multi loss        holistic (train.method: holistic)
The methods by train.method: params section, model, loss                methods
What the training loop asks of a method (hooks with defaults)           trainable
Training (loop, data stream, checkpoints, DDP, export)                  train/
Evaluation (retrieval, zero-shot, benchmark adapters)                   eval/
The model (open_clip-compatible encode_image / encode_text)             model.FixClip
Use without DVC: fixclip.load(folder) -> model, preprocess, tokenizer   inference.load; CLI: python -m fixclip
Exports for open_clip and transformers, verified against our embeddings export/
Base CLIP from a config + local weights file (no hub)                   checkpoint_formats.load_clip; base_model
Downloaded checkpoints: OpenAI, open_clip hub, transformers, Long-CLIP  checkpoint_formats.load_checkpoint
"""
import importlib

# Resolved on first use, so that validating params (fixclip.config) does not import torch and open_clip.
_EXPORTS = {"FixClip": "model", "FixClipConfig": "config", "FixClipLoss": "loss", "info_nce": "loss",
            "load": "inference"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
