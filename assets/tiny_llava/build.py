"""Build the tiny random-weight LLaVA captioner that the embedded default serves with vLLM.

Run with the vLLM environment (its transformers is the one vLLM reads the files with):

    .venv-vllm/bin/python assets/tiny_llava/build.py            # writes assets/tiny_llava/model/

Offline and deterministic (seeded). Weights are random until the trained toy captioner replaces them; the
tokenizer is a byte-level BPE trained on toy-world-like descriptions, so sampled text is made of words.
What vLLM needs of such a model (measured, see ../shared/PLATFORM.md):
- head_dim >= 32 for CPU attention (width 64, 2 heads);
- tokenizer length == text vocab size, or sampled ids decode to nothing;
- vision tower weights under `vision_tower.vision_model.*` (transformers 5 saves them under `vision_tower.*`);
- chat-template newlines written as {{ '\\n' }};
- BPE trained on " " + text, so an answer's first word is one token. Its alphabet is only the corpus's characters
  (not all 256 bytes), so nearly every token is a word or a word piece and random weights still emit words.
Images are 64x64 toy-world scenes on a 3x3 grid: one 64 px image, 16 px patches -> 16 image tokens.
"""
import argparse
import itertools
import json
import random
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

SEED = 0
IMAGE_SIZE = 64
PATCH_SIZE = 16
WIDTH = 64
HEADS = 2
BPE_VOCAB = 384
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}<image>{{ '\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}"
    "{% else %}ASSISTANT:{{ message['content'] if message['content'] is string else '' }}</s>{{ '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "diamond", "cross"]
SIZES = ["small", "large"]
FILLS = ["solid", "striped", "dotted", "outlined"]
ROWS = ["top", "middle", "bottom"]
COLUMNS = ["left", "centre", "right"]
BACKGROUNDS = ["grey", "beige", "light blue"]
PROMPTS = [
    "Describe this image in detail.",
    "Write a long, complete description of every object in the picture.",
    "List each shape with its colour, size, fill and grid cell.",
    "What does this scene contain? Be thorough.",
]


def cell_name(row: str, column: str) -> str:
    return "centre" if (row, column) == ("middle", "centre") else f"{row} {column}"


def toy_description(rng: random.Random) -> str:
    """One long toy-world description: background, count, then every object with its cell."""
    cells = rng.sample(list(itertools.product(ROWS, COLUMNS)), rng.randint(2, 5))
    parts = [f"The image shows {len(cells)} shapes on a {rng.choice(BACKGROUNDS)} background."]
    for row, column in cells:
        parts.append(
            f"In the {cell_name(row, column)} cell there is a {rng.choice(SIZES)} {rng.choice(COLOURS)} "
            f"{rng.choice(SHAPES)} with a {rng.choice(FILLS)} fill."
        )
    return " ".join(parts)


def build_tokenizer(rng: random.Random) -> PreTrainedTokenizerFast:
    corpus = [" " + toy_description(rng) for _ in range(2000)]
    corpus += [f"USER: \n{prompt}\nASSISTANT: {toy_description(rng)}" for prompt in PROMPTS]
    corpus += [" 0 1 2 3 4 5 6 7 8 9 - ' \" ! ; ( )"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=1024,
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    vocab = len(tokenizer)
    vision = CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=WIDTH,
    )
    text = LlamaConfig(
        vocab_size=vocab,
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(SEED)
    return LlavaForConditionalGeneration(config).eval()


def rename_vision_keys(weights_path: Path) -> None:
    """vLLM's LLaVA loader expects the CLIP tower's weights under `vision_tower.vision_model.*`."""
    tensors = load_file(weights_path)
    renamed = {}
    for key, tensor in tensors.items():
        key = re.sub(r"^((?:model\.)?vision_tower\.)(?!vision_model\.)", r"\1vision_model.", key)
        renamed[key] = tensor.contiguous()
    save_file(renamed, weights_path, metadata={"format": "pt"})


def build(out_dir: Path) -> None:
    rng = random.Random(SEED)
    tokenizer = build_tokenizer(rng)
    model = build_model(tokenizer)
    assert model.config.text_config.vocab_size == len(tokenizer)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        ),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    rename_vision_keys(out_dir / "model.safetensors")
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    print(json.dumps({"out": str(out_dir), "vocab": len(tokenizer), "bytes": size,
                      "params": sum(p.numel() for p in model.parameters())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "model")
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
