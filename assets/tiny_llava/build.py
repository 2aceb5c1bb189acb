"""Architecture, tokenizer and file layout of the tiny toy-world LLaVA captioner that the embedded default serves.

`train.py` (next to this file) builds the model with these functions, trains it and saves it; run on its own, this
script writes the same architecture with *random* weights (useful to test serving without training):

    .venv-vllm/bin/python assets/tiny_llava/build.py            # writes assets/tiny_llava/model/ (untrained)

Run with the vLLM environment (its transformers is the one vLLM reads the files with). Offline and deterministic.
What vLLM needs of such a model (measured: docs/pipeline.md, "Captioning with an MLLM"):
- head_dim >= 32 for CPU attention (vision 96 wide / 3 heads, text 128 wide / 4 heads);
- tokenizer length == text vocab size, or sampled ids decode to nothing;
- vision tower weights under `vision_tower.vision_model.*` (transformers 5 saves them under `vision_tower.*`);
- chat-template newlines written as {{ '\\n' }};
- tokenizer trained on " " + text, so an answer's first word is one token.
The tokenizer is a byte-level BPE trained to completion on toy captions (all styles of `pipeline.toyworld.captions`) and
the prompts: every word of that vocabulary is a single token, so a 6-object caption is ~100-160 tokens.
Images are 64x64 toy-world scenes on a 3x3 grid: 8 px patches -> 64 image tokens (8x8), so a small shape (~10 px)
covers a few patches instead of hiding inside one large patch.
"""
import argparse
import json
import random
import re
import shutil
import sys
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

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from pipeline.toyworld.captions import PROMPTS, STYLES, describe  # noqa: E402

SEED = 0
TOKENIZER_WORLD_SEED = 10_000_001  # scenes for the tokenizer's corpus (never the pipeline's or benchmark's world)
IMAGE_SIZE = 64
PATCH_SIZE = 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # CLS dropped ("default" feature select strategy)
VISION = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=3)
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
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


def tokenizer_corpus() -> list[str]:
    from pipeline.toyworld.scenes import sample_scene  # toyworld needs pandas (main environment)
    rng = random.Random(SEED)
    corpus = []
    for index in range(3000):
        scene = sample_scene(TOKENIZER_WORLD_SEED, index, 3, 1, 9, True)
        corpus.append(" " + describe(scene.to_json(), STYLES[index % len(STYLES)], seed=rng.randrange(2**31)))
    corpus += [f"USER: <image>\n{prompt}\nASSISTANT:" for prompt in PROMPTS] * 3
    corpus += [" 0 1 2 3 4 5 6 7 8 9 - ' \" ! ? , . : ; ( )"]
    return corpus


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained until no pair is left: every corpus word (with its leading space) is one token."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=SPECIAL_TOKENS, show_progress=False)
    bpe.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return wrap_tokenizer(bpe)


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """The tokenizer saved as a raw tokenizers file by build_tokenizer's caller (same ids in any environment)."""
    return wrap_tokenizer(Tokenizer.from_file(str(path)))


def wrap_tokenizer(bpe: Tokenizer) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = SEED) -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=VISION["hidden_size"],
                              **VISION)
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=TEXT["num_attention_heads"],
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **TEXT,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config)


def build_processor(tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    return LlavaProcessor(
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


def rename_vision_keys(weights_path: Path) -> None:
    """vLLM's LLaVA loader expects the CLIP tower's weights under `vision_tower.vision_model.*`."""
    tensors = load_file(weights_path)
    renamed = {}
    for key, tensor in tensors.items():
        key = re.sub(r"^((?:model\.)?vision_tower\.)(?!vision_model\.)", r"\1vision_model.", key)
        renamed[key] = tensor.contiguous()
    save_file(renamed, weights_path, metadata={"format": "pt"})


def save(model: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> dict:
    """Write config, weights (vision keys renamed), tokenizer with chat template and processor to out_dir."""
    assert model.config.text_config.vocab_size == len(tokenizer)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.eval().save_pretrained(out_dir)
    build_processor(tokenizer).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    rename_vision_keys(out_dir / "model.safetensors")
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    return {"out": str(out_dir), "vocab": len(tokenizer), "bytes": size,
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "model")
    out = parser.parse_args().out
    tokenizer = build_tokenizer()
    print(json.dumps(save(build_model(tokenizer), tokenizer, out)))


if __name__ == "__main__":
    main()
