"""Exports of a trained model for other libraries, each checked against our own embeddings before it is written.

What an export holds: the open_clip backbone with the stretched text positional table folded in (context 248). The
mask embedding and the HFA heads feed the training losses only. The regional prompts are part of FIX-CLIP's image
encoder (``fixclip.load`` keeps them), but neither open_clip's nor transformers' image tower can hold extra tokens
under an attention mask: the exports hold the image tower without them and are checked against
``FixClip.encode_image`` with ``prompts_at_inference`` off. The export stage states this, with the measured scores
of both forms, in each folder's config (``fixclip_export``) and in metrics/export.json (docs/export.md).

- ``openclip_folder``: an open_clip ``local-dir:`` folder (``open_clip_config.json`` + safetensors weights);
- ``hf_folder``: a transformers ``CLIPModel`` folder with its tokenizer and image processor.
"""
