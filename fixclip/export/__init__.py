"""Exports of a trained model for other libraries, each checked against our own embeddings before it is written.

What an export holds: the inference model, i.e. the open_clip backbone with the stretched text positional table
folded in (context 248). The FIX-CLIP modules act only in training: the mask embedding feeds the masked branch, the
HFA heads feed the hierarchical losses, and regional prompts shape the CLS token while training but are left out of
``FixClip.encode_image`` (see ``fixclip.model``), so none of them is part of an export.

- ``openclip_folder``: an open_clip ``local-dir:`` folder (``open_clip_config.json`` + safetensors weights);
- ``hf_folder``: a transformers ``CLIPModel`` folder with its tokenizer and image processor.
"""
