"""Does a caption request fit the served context? Checked before any server starts, and again on the server's answer.

A request is the chat template around one image and a prompt, expanded into the model's image tokens, plus
`sampling.max_tokens`. An image's token count depends on the architecture (LLaVA: fixed; LLaVA-NeXT: tiles by aspect
ratio, ~1,200 for a small square image at 336 px tiles; Qwen2-VL: by pixel area), so it is counted with the model's
own Hugging Face processor, read offline from the local model folder, for a square image of the size the download
stage writes. vLLM would reject a prompt over `max_model_len` (HTTP 400) and silently cut `max_tokens` to what is
left, so both must fit: otherwise the stage stops before any work, naming `caption.server.max_model_len`.
"""
from dataclasses import dataclass
from pathlib import Path

from pipeline.params import ParamsError
from pipeline.params.caption import CaptionParams

MAX_MODEL_LEN_KEY = "caption.server.max_model_len"
# vLLM's own words for a request over the context (vllm/renderers/params.py, entrypoints/serve/utils/api_utils.py;
# the in-process engine's: vllm/v1/engine/input_processor.py, "longer than the maximum model length")
CONTEXT_ERRORS = ("maximum context length", "context length", "maximum model length")


class ContextLengthError(ParamsError):
    """A caption request does not fit `caption.server.max_model_len` (or the model has no chat template): the params
    do not fit the model; the stage prints the one line and exits 2."""


@dataclass(frozen=True)
class RequestSize:
    prompt_tokens: int  # the longest prompt with its image and chat template
    max_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.max_tokens


def chat_template(params: CaptionParams) -> str | None:
    """The template the servers use: `server.chat_template`'s file, else None (the model's own)."""
    path = params.server.chat_template
    return Path(path).read_text() if path else None


def count_request_tokens(params: CaptionParams, image_size: int) -> RequestSize:
    """Prompt tokens (chat template + one image_size x image_size image + prompt, the longest prompt) and max_tokens,
    counted with the model folder's processor as vLLM renders a request."""
    from PIL import Image
    from transformers import AutoProcessor

    model = Path(params.model).expanduser()
    processor = AutoProcessor.from_pretrained(model, local_files_only=True)
    template = chat_template(params) or getattr(processor, "chat_template", None)
    if template is None:
        raise ContextLengthError(f"caption.server.chat_template: caption.model {params.model} has no chat template; "
                                 "give one (a .jinja file)")
    image = Image.new("RGB", (image_size, image_size), (128, 128, 128))
    longest = 0
    for prompt in params.prompts:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                             tokenize=False)
        inputs = processor(text=[text], images=[image], add_special_tokens=False,
                           **params.server.mm_processor_kwargs)
        longest = max(longest, len(inputs["input_ids"][0]))
    return RequestSize(longest, params.sampling.max_tokens)


def check_context(params: CaptionParams, image_size: int | None) -> str:
    """Raise ContextLengthError if the longest request exceeds `server.max_model_len`; return a line saying what was
    checked (or why not: external endpoints, a model not on disk, images of no fixed size)."""
    if params.endpoints:
        return "caption: context check skipped (caption.endpoints: the servers' max_model_len is theirs)"
    if not Path(params.model).expanduser().is_dir():
        return f"caption: context check skipped (caption.model {params.model} is not a local folder)"
    if image_size is None and params.max_image_side is None:
        return "caption: context check skipped (download.resize_mode: no keeps every image's own size)"
    image_size = min(side for side in (image_size, params.max_image_side) if side is not None)
    size = count_request_tokens(params, image_size)
    limit = params.server.max_model_len
    if size.total > limit:
        raise ContextLengthError(
            f"{MAX_MODEL_LEN_KEY}: {limit} is too small for caption.model {params.model}: a {image_size}x{image_size} "
            f"image with the longest prompt is {size.prompt_tokens} tokens, + caption.sampling.max_tokens "
            f"{size.max_tokens} = {size.total}; raise {MAX_MODEL_LEN_KEY} to at least {size.total}"
        )
    return (f"caption: longest request {size.prompt_tokens} prompt + {size.max_tokens} max_tokens = {size.total} "
            f"tokens (a {image_size}x{image_size} image) <= {MAX_MODEL_LEN_KEY} {limit}")


def is_context_error(status: int, body: str) -> bool:
    """An HTTP 400 that says the request exceeds the server's context (vLLM's wording)."""
    return status == 400 and any(words in body for words in CONTEXT_ERRORS)
