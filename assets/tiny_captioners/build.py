"""Tiny random-weight captioners in the exact Hugging Face layouts of the MLLM families a user swaps to.

    .venv/bin/python assets/tiny_captioners/build.py OUT_DIR        # writes OUT_DIR/llava_next, OUT_DIR/qwen2_vl

- `llava_next`: Llama3-LLaVA-NeXT (`LlavaNextForConditionalGeneration`, the paper's captioner family) with the real
  processor geometry: 336 px tiles of 14 px patches and the hub's any-resolution grid pinpoints, so a 64 px image
  becomes 1,176 image tokens (one base tile + a 1x2 grid, unpadded, with row newlines), as the real model sees it;
  Llama-3 chat template (`<|start_header_id|>` ... `<|eot_id|>`).
- `qwen2_vl`: Qwen2-VL (`Qwen2VLForConditionalGeneration`) with its image and video processors (dynamic resolution:
  a 64 px image is resized to 56 px and becomes 4 tokens) and the ChatML template.

Each folder holds config.json, model.safetensors, the tokenizer files, the processor configs and the chat template,
as `save_pretrained` writes them. Weights are random (seeded), the towers narrow (~1-3 MB per model), so nothing is
committed: tests build the folders in a temporary dir (~10 s). What vLLM needs of such a model (docs/pipeline.md,
"Captioning with an MLLM"): head_dim >= 32 for CPU attention, tokenizer length == vocab size, the CLIP tower's
weights under `vision_tower.vision_model.*`, chat-template newlines written as {{ '\\n' }}.
The byte-level BPE is trained on the default prompts and a small word list, so random ids decode to words.
"""
import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from pipeline.toyworld.captions import PROMPTS  # noqa: E402

SEED = 0
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
WORDS = (
    "a an the this that image picture photo scene shows there is are with on in of at near and or but also its "
    "red green blue yellow purple orange pink black white grey brown dark light bright small large big tiny "
    "circle square triangle star shape object objects background top bottom left right middle center corner row "
    "column cell grid filled outline solid striped next to above below beside between each every one two three "
    "four five six seven eight nine several many some detail details describe description long complete"
).split()
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)  # head_dim 32

# Llama3-LLaVA-NeXT (llava-hf/llama3-llava-next-8b-hf): 336 px CLIP tiles, the hub's grid pinpoints.
LLAVA_NEXT_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>", "<image>"]
LLAVA_NEXT_TILE, LLAVA_NEXT_PATCH = 336, 14
LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.index0 == 0 %}{{ '<|begin_of_text|>' }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}{{ '\\n\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{{ '\\n' }}"
    "{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}"
    "{% endif %}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>' }}{{ '\\n\\n' }}{% endif %}"
)

# Qwen2-VL (Qwen/Qwen2-VL-2B-Instruct): ChatML, 14 px patches merged 2x2, images resized to multiples of 28 px.
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system' }}{{ '\\n' }}{{ 'You are a helpful assistant.<|im_end|>' }}{{ '\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] }}{{ '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Picture ' + image_count.value | string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' }}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant' }}{{ '\\n' }}{% endif %}"
)


def train_bpe(special_tokens: list[str]) -> Tokenizer:
    """Byte-level BPE over the prompts and WORDS (each with its leading space), trained until no pair is left."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [" " + " ".join(WORDS)] * 3 + [" " + prompt for prompt in PROMPTS] * 3
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer=trainer)
    return bpe


def save_weights_as_hub(out_dir: Path) -> None:
    """Rewrite model.safetensors with contiguous tensors; a CLIP tower's keys under `vision_tower.vision_model.*`,
    where vLLM's LLaVA loaders (and the hub's llava-hf checkpoints) have them."""
    path = out_dir / "model.safetensors"
    renamed = {re.sub(r"^((?:model\.)?vision_tower\.)(?!vision_model\.)", r"\1vision_model.", key): t.contiguous()
               for key, t in load_file(path).items()}
    save_file(renamed, path, metadata={"format": "pt"})


def finish(model, processor, tokenizer, out_dir: Path) -> dict:
    """save_pretrained the model, processor and tokenizer into a fresh out_dir; return a summary."""
    assert model.config.get_text_config().vocab_size == len(tokenizer)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.eval().save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    save_weights_as_hub(out_dir)
    return {"out": str(out_dir), "architecture": type(model).__name__, "vocab": len(tokenizer),
            "bytes": sum(f.stat().st_size for f in out_dir.iterdir()),
            "params": sum(p.numel() for p in model.parameters())}


def build_llava_next(out_dir: Path, seed: int = SEED) -> dict:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(LLAVA_NEXT_SPECIAL), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>", extra_special_tokens={"image_token": "<image>"}, model_max_length=8192,
    )
    tokenizer.chat_template = LLAVA_NEXT_TEMPLATE
    vision = CLIPVisionConfig(image_size=LLAVA_NEXT_TILE, patch_size=LLAVA_NEXT_PATCH, hidden_size=64,
                              intermediate_size=128, num_hidden_layers=3, num_attention_heads=2, projection_dim=64)
    text = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, rope_theta=500000.0,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **TEXT)
    config = LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": LLAVA_NEXT_TILE}, crop_size={"height": LLAVA_NEXT_TILE, "width": LLAVA_NEXT_TILE},
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_pad=True,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=LLAVA_NEXT_PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_NEXT_TEMPLATE,
    )
    return finish(model, processor, tokenizer, out_dir)


def build_qwen2_vl(out_dir: Path, seed: int = SEED) -> dict:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(QWEN_SPECIAL), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
        model_max_length=32768,
    )
    tokenizer.chat_template = QWEN_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=32768, tie_word_embeddings=False,
                bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
                **TEXT)
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2
    vision = dict(depth=2, embed_dim=64, hidden_size=TEXT["hidden_size"], num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280),
        video_processor=Qwen2VLVideoProcessor(), tokenizer=tokenizer, chat_template=QWEN_TEMPLATE,
    )
    return finish(model, processor, tokenizer, out_dir)


BUILDERS = {"llava_next": build_llava_next, "qwen2_vl": build_qwen2_vl}


def build_all(out_root: Path, seed: int = SEED) -> dict[str, dict]:
    """Every tiny captioner under out_root/<name>."""
    return {name: build(Path(out_root) / name, seed) for name, build in BUILDERS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write <name>/ model folders into")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    print(json.dumps(build_all(args.out, args.seed), indent=1))


if __name__ == "__main__":
    main()
