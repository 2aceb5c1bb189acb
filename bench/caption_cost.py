"""Caption cost per image from first principles: tokens from the model's own processor and chat template, FLOPs and
decode bytes from its config, and the GPU-time bound they imply (docs/scale.md, "caption").

A captioner folder needs its config, processor configs and chat template; no weights (parameters are counted on torch's
meta device). Without tokenizer files (assets/captioner_configs) the image tokens are still the processor's own count
(a stand-in tokenizer holds only the special tokens) and the text tokens are estimated: special tokens count one each,
the rest is counted with CLIP's BPE (open_clip's tokenizer).

FLOPs per image (2 per multiply-add; dense layers 2 x parameters x tokens):
- vision: every tile (LLaVA-NeXT, OneVision) or the whole image (Qwen2-VL) through the vision layers the features are
  taken from, with attention 4 n^2 d per layer, + the patch embedding and the projector/merger;
- prefill: the language model's layers over the P prompt tokens, causal attention 2 P^2 d_attn per layer (flash
  attention skips the masked half), logits for the last position;
- decode: T - 1 steps (the first output token comes from prefill), each through every layer and the LM head, with
  attention 4 c d_attn per layer over the c tokens in context.
Bytes per decode step: each sequence reads its KV cache (2 x layers x kv_heads x head_dim x 2 bytes per token in
context); the weights (2 bytes each) are read once per step for the whole batch of B sequences. B is what fits:
min(max_num_seqs, the KV budget / the KV of one request).
"""
import json
import math
import re
import tempfile
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from PIL import Image

from bench.gpus import Gpu

BYTES = 2  # bf16 weights and KV cache (the paper profile's caption.server.dtype)
VLLM_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default when caption.server.gpu_memory_utilization is null
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")

# Web photo sizes before download (assumption): an aspect-ratio mix of photos around 1,000 px on the long side. With a
# resizing download (the paper profile: 384 px, keep_ratio_largest) only the aspect ratios reach the captioner.
WEB_SIZES = (  # (width, height, share)
    (1024, 768, 0.30),  # 4:3
    (1200, 800, 0.20),  # 3:2
    (1280, 720, 0.10),  # 16:9
    (800, 800, 0.15),  # 1:1
    (768, 1024, 0.15),  # 3:4
    (800, 1200, 0.10),  # 2:3
)


def downloaded_size(width: int, height: int, image_size: int, resize_mode: str,
                    only_if_bigger: bool = False) -> tuple[int, int]:
    """The size img2dataset writes (its resizer: keep_ratio sets the shorter side, keep_ratio_largest the longer one;
    border and center_crop write a square; no keeps the image)."""
    if resize_mode == "no":
        return width, height
    if resize_mode in ("border", "center_crop"):
        return image_size, image_size
    side = min(width, height) if resize_mode == "keep_ratio" else max(width, height)
    if only_if_bigger and side <= image_size:
        return width, height
    scale = image_size / side
    return max(1, round(width * scale)), max(1, round(height * scale))


def shrunk_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size the caption client sends (pipeline.caption.client.shrunk: caption.max_image_side)."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class Request:
    """One caption request of one image: its tokens and FLOPs."""

    image_tokens: int
    text_tokens: int
    output_tokens: int
    vision_flops: float
    prefill_flops: float
    decode_flops: float
    kv_read_bytes: float  # KV cache read over all decode steps (this sequence's share of the memory traffic)
    decode_steps: int

    @property
    def prompt_tokens(self) -> int:
        return self.image_tokens + self.text_tokens

    @property
    def flops(self) -> float:
        return self.vision_flops + self.prefill_flops + self.decode_flops


class Captioner:
    """A captioner folder: its config, its processor and chat template, and parameter counts per part."""

    def __init__(self, folder: Path, chat_template: str | None = None):
        from transformers import AutoConfig

        self.folder = Path(folder)
        self.name = self.folder.name
        self.config = AutoConfig.from_pretrained(self.folder, local_files_only=True)
        self.family = self.config.model_type
        if self.family not in ("llava_next", "llava_onevision", "qwen2_vl"):
            raise ValueError(f"{self.folder}: model_type {self.family!r}: the cost model knows llava_next, "
                             "llava_onevision and qwen2_vl")
        self.exact_text = any((self.folder / name).is_file() for name in TOKENIZER_FILES)
        self.processor = self._processor()
        self.template = chat_template or self.processor.chat_template
        if self.template is None:
            raise ValueError(f"{self.folder}: no chat template")
        self.image_token_id = self.processor.image_token_id
        self._count_parameters()
        text = self.config.get_text_config()
        self.layers = text.num_hidden_layers
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.attn_width = text.num_attention_heads * self.head_dim
        self.kv_bytes_per_token = 2 * self.layers * text.num_key_value_heads * self.head_dim * BYTES
        self._text_tokens: dict[str, int] = {}

    def _processor(self):
        """The folder's processor (AutoProcessor); without a tokenizer, the same processor over a stand-in tokenizer
        that holds the folder's special tokens (tokenizer_config.json: added_tokens_decoder)."""
        from transformers import AutoProcessor

        if self.exact_text:
            return AutoProcessor.from_pretrained(self.folder, local_files_only=True)
        with tempfile.TemporaryDirectory(prefix="captioner-") as tmp:
            for file in self.folder.iterdir():
                if file.is_file() and file.name != "tokenizer_config.json":
                    (Path(tmp) / file.name).write_bytes(file.read_bytes())
            self._stand_in_tokenizer().save_pretrained(tmp)
            return AutoProcessor.from_pretrained(tmp, local_files_only=True)

    @cached_property
    def special_tokens(self) -> list[str]:
        config = json.loads((self.folder / "tokenizer_config.json").read_text())
        return [entry["content"] for entry in config.get("added_tokens_decoder", {}).values()]

    def _stand_in_tokenizer(self):
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        bpe = Tokenizer(models.WordLevel({"[stand-in]": 0}, unk_token="[stand-in]"))
        bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[stand-in]")
        tokenizer.add_special_tokens({"additional_special_tokens": self.special_tokens})
        return tokenizer

    def _count_parameters(self) -> None:
        """Parameter counts of the parts the FLOPs need, from the model built on torch's meta device."""
        import torch
        from transformers import AutoModelForImageTextToText

        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(self.config)

        def count(module) -> int:
            return sum(p.numel() for p in module.parameters())

        self.total_params = count(model)
        language = model.model.language_model
        self.lm_layer_params = count(language) - language.get_input_embeddings().weight.numel()
        self.head_params = model.get_output_embeddings().weight.numel()
        if self.family == "qwen2_vl":
            visual = model.model.visual
            blocks, patch, projector = visual.blocks, visual.patch_embed, visual.merger
            self.vision_width = self.config.vision_config.embed_dim
            self.vision_layers_used = len(blocks)
        else:
            tower = model.model.vision_tower
            tower = getattr(tower, "vision_model", tower)  # transformers 5 flattens CLIPVisionModel
            blocks, patch, projector = tower.encoder.layers, tower.embeddings.patch_embedding, \
                model.model.multi_modal_projector
            self.vision_width = self.config.vision_config.hidden_size
            layer = self.config.vision_feature_layer
            layer = max(layer) if isinstance(layer, list) else layer
            self.vision_layers_used = len(blocks) + 1 + layer if layer < 0 else layer
            self.tile_tokens = tower.embeddings.num_positions  # patches (+ CLIP's class token)
            self.tile_patches = (self.config.vision_config.image_size // self.config.vision_config.patch_size) ** 2
            self.feature_tokens = self.tile_tokens - (self.config.vision_feature_select_strategy == "default")
        self.vision_layer_params = count(blocks) // len(blocks)
        self.patch_params = count(patch)
        self.projector_params = count(projector)

    def _render(self, prompt: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, chat_template=self.template, add_generation_prompt=True,
                                                  tokenize=False)

    def text_tokens(self, prompt: str) -> int:
        """Tokens of the chat template and prompt around the image: the tokenizer's count, or the estimate."""
        if prompt not in self._text_tokens:
            if self.exact_text:
                ids = self._inputs(prompt, (64, 64), {})["input_ids"][0]
                self._text_tokens[prompt] = len(ids) - sum(int(i) == self.image_token_id for i in ids)
            else:
                self._text_tokens[prompt] = self._estimate(self._render(prompt))
        return self._text_tokens[prompt]

    def _estimate(self, text: str) -> int:
        from open_clip.tokenizer import SimpleTokenizer

        image_token = self.processor.image_token
        pattern = "(" + "|".join(re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)) + ")"
        count, bpe = 0, SimpleTokenizer()
        for piece in re.split(pattern, text):
            if piece == image_token or not piece:
                continue
            count += 1 if piece in self.special_tokens else len(bpe.encode(piece))
        return count

    def _inputs(self, prompt: str, size: tuple[int, int], mm_kwargs: dict) -> dict:
        image = Image.new("RGB", size, (128, 128, 128))
        return self.processor(text=[self._render(prompt)], images=[image], add_special_tokens=False, return_tensors="pt",
                              **mm_kwargs)

    def image_work(self, size: tuple[int, int], mm_kwargs: dict) -> tuple[int, float]:
        """(image tokens, vision FLOPs) of one image of size (width, height), counted by the processor."""
        inputs = self._inputs("", size, mm_kwargs)
        tokens = sum(int(i) == self.image_token_id for i in inputs["input_ids"][0])
        d = self.vision_width
        if self.family == "qwen2_vl":
            n = int(inputs["image_grid_thw"][0].prod())  # patches; one full-attention sequence
            flops = (self.vision_layers_used * (2 * self.vision_layer_params * n + 4 * n * n * d)
                     + 2 * self.patch_params * n + 2 * self.projector_params * n // 4)
        else:
            tiles, n = inputs["pixel_values"].shape[1], self.tile_tokens
            flops = tiles * (self.vision_layers_used * (2 * self.vision_layer_params * n + 4 * n * n * d)
                             + 2 * self.patch_params * self.tile_patches
                             + 2 * self.projector_params * self.feature_tokens)
        return tokens, float(flops)

    def request(self, image_tokens: int, text_tokens: int, vision_flops: float, output_tokens: int) -> Request:
        """FLOPs and decode KV traffic of one request."""
        p, t = image_tokens + text_tokens, output_tokens
        prefill = 2 * self.lm_layer_params * p + 2 * self.layers * p * p * self.attn_width + 2 * self.head_params
        steps = max(t - 1, 0)
        contexts = steps * p + steps * (steps + 1) / 2  # sum of the context lengths over the decode steps
        decode = 2 * (self.lm_layer_params + self.head_params) * steps + 4 * self.layers * self.attn_width * contexts
        return Request(image_tokens, text_tokens, t, vision_flops, float(prefill), float(decode),
                       self.kv_bytes_per_token * contexts, steps)

    @property
    def weight_bytes(self) -> int:
        return self.total_params * BYTES

    @property
    def step_weight_bytes(self) -> int:
        """Weights one decode step reads: the language model's layers and its LM head."""
        return (self.lm_layer_params + self.head_params) * BYTES


@dataclass(frozen=True)
class Setting:
    """What one row of the knob table varies: the captioner and how images reach it, and the request."""

    label: str
    model: Path
    image_size: int
    resize_mode: str
    only_if_bigger: bool = False
    max_image_side: int | None = None
    mm_kwargs: dict | None = None
    grid: list | None = None  # LLaVA-NeXT's image_grid_pinpoints, overriding the release's
    max_tokens: int = 256
    max_num_seqs: int = 256
    gpu_memory_utilization: float | None = None
    kv_cache_memory_bytes: int | None = None

    def but(self, label: str, **changes) -> "Setting":
        return replace(self, label=label, **changes)


@dataclass(frozen=True)
class Cost:
    """One setting's mean request and what it costs on one GPU."""

    setting: Setting
    captioner: Captioner
    gpu: Gpu
    request: Request  # means over the sizes and prompts
    batch: int
    decode_bytes: float

    @property
    def flop_seconds(self) -> float:
        return self.gpu.seconds(self.request.flops, 0)[0]

    @property
    def byte_seconds(self) -> float:
        return self.gpu.seconds(0, self.decode_bytes)[1]

    @property
    def bound_seconds(self) -> float:
        """Neither the FLOPs nor the bytes go faster than peak (prefill and decode share engine steps)."""
        return max(self.flop_seconds, self.byte_seconds)

    def gpu_hours(self, images: float, utilisation: float) -> float:
        return images * self.bound_seconds / utilisation / 3600


def kv_batch(captioner: Captioner, setting: Setting, gpu: Gpu, tokens_per_request: float) -> int:
    """Sequences that run at once: vLLM's max_num_seqs, or fewer when their KV cache does not fit what the weights
    leave of gpu_memory_utilization (or of kv_cache_memory_bytes). Activations and CUDA graphs are not subtracted."""
    if setting.kv_cache_memory_bytes is not None:
        budget = setting.kv_cache_memory_bytes
    else:
        share = setting.gpu_memory_utilization or VLLM_GPU_MEMORY_UTILIZATION
        budget = gpu.memory * share - captioner.weight_bytes
    fits = math.floor(budget / (captioner.kv_bytes_per_token * tokens_per_request))
    if fits < 1:
        raise ValueError(f"{captioner.name}: one request's KV cache does not fit {gpu.name}'s memory")
    return min(setting.max_num_seqs, fits)


def cost(setting: Setting, captioner: Captioner, sizes: list[tuple[int, int, float]], prompts: list[str],
         caption_tokens: int, gpu: Gpu, downloaded: bool = False) -> Cost:
    """Mean request of a setting over image sizes (width, height, share: web sizes that the setting's download
    resizes, or with `downloaded` the sizes the caption stage reads) and prompts (drawn uniformly), and its cost on
    `gpu`."""
    processor = captioner.processor.image_processor
    release_grid = getattr(processor, "image_grid_pinpoints", None)
    if setting.grid is not None:
        if release_grid is None:
            raise ValueError(f"{captioner.name}: no image_grid_pinpoints to override")
        processor.image_grid_pinpoints = setting.grid
    try:
        images: dict[tuple[int, int], tuple[int, float]] = {}
        weighted = []
        for width, height, share in sizes:
            size = (width, height) if downloaded else downloaded_size(width, height, setting.image_size,
                                                                      setting.resize_mode, setting.only_if_bigger)
            size = shrunk_size(*size, setting.max_image_side)
            if size not in images:
                images[size] = captioner.image_work(size, setting.mm_kwargs or {})
            weighted.append((images[size], share))
    finally:
        if setting.grid is not None:
            processor.image_grid_pinpoints = release_grid
    output = min(setting.max_tokens, caption_tokens)
    total_share = sum(share for _, share in weighted)
    requests = [(captioner.request(tokens, captioner.text_tokens(prompt), flops, output), share / len(prompts))
                for (tokens, flops), share in weighted for prompt in prompts]
    mean = {name: sum(getattr(r, name) * w for r, w in requests) / total_share
            for name in ("image_tokens", "text_tokens", "vision_flops", "prefill_flops", "decode_flops",
                         "kv_read_bytes")}
    request = Request(mean["image_tokens"], mean["text_tokens"], output, mean["vision_flops"], mean["prefill_flops"],
                      mean["decode_flops"], mean["kv_read_bytes"], max(output - 1, 0))
    batch = kv_batch(captioner, setting, gpu, request.prompt_tokens + output)
    decode_bytes = request.kv_read_bytes + request.decode_steps * captioner.step_weight_bytes / batch
    return Cost(setting, captioner, gpu, request, batch, decode_bytes)


def image_sizes(path: Path, limit: int) -> list[tuple[int, int, float]]:
    """(width, height, share) of up to `limit` images in a folder of images or of webdataset tars (the download
    stage's data/raw), read from their headers; equal shares."""
    import tarfile
    import io

    extensions = {".jpg", ".jpeg", ".png", ".webp"}
    found: dict[tuple[int, int], int] = {}

    def add(stream) -> None:
        try:
            with Image.open(stream) as image:
                found[image.size] = found.get(image.size, 0) + 1
        except (OSError, Image.DecompressionBombError):
            pass

    seen = 0
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if seen >= limit:
            break
        if file.suffix == ".tar":
            with tarfile.open(file) as tar:
                for member in tar:
                    if seen >= limit:
                        break
                    if Path(member.name).suffix.lower() in extensions:
                        add(io.BytesIO(tar.extractfile(member).read()))
                        seen += 1
        elif file.suffix.lower() in extensions:
            add(file)
            seen += 1
    if not found:
        raise ValueError(f"{path}: no readable images (jpg, png, webp, or webdataset .tar)")
    return [(w, h, n / sum(found.values())) for (w, h), n in sorted(found.items())]
