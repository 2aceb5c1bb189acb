"""The cost model (bench.cost, bench.caption_cost): its token counts are vLLM's own prompt_tokens for the same requests
on real servers of the tiny captioners, knobs included; its table adds up; the committed configs are the releases'
sizes."""
import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from bench import cost as cost_cli
from bench.caption_cost import WEB_SIZES, Captioner, Setting, cost, downloaded_size, image_sizes
from bench.gpus import GPUS
from pipeline.caption.fleet import VllmFleet
from pipeline.params.caption import ServerOptions
from pipeline.toyworld.captions import PROMPTS
from tests.vllm_fixtures import tiny_captioners, tiny_params  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "assets" / "captioner_configs"
# (width, height): square, landscape and portrait; 400 px squares take LLaVA-NeXT's 2x2 grid, the others 1x2 or 2x1.
SIZES = [(64, 64), (96, 48), (48, 96), (200, 150), (400, 400)]
ONE_TILE = [[336, 336]]


def png_url(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def prompt_tokens(endpoint: str, name: str, size: tuple[int, int], prompt: str) -> int:
    """vLLM's usage.prompt_tokens for one caption request (as the stage sends it) of a size x size image."""
    body = {"model": name, "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url(size)}},
                                                      {"type": "text", "text": prompt}]}]}
    request = urllib.request.Request(f"{endpoint}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)["usage"]["prompt_tokens"]
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{name}, {size}: HTTP {error.code}: {error.read().decode()[:500]}") from None


def ours(captioner: Captioner, size, prompt: str, mm_kwargs: dict | None = None, grid=None) -> int:
    processor = captioner.processor.image_processor
    release = getattr(processor, "image_grid_pinpoints", None)
    if grid is not None:
        processor.image_grid_pinpoints = grid
    try:
        return captioner.image_work(size, mm_kwargs or {})[0] + captioner.text_tokens(prompt)
    finally:
        if grid is not None:
            processor.image_grid_pinpoints = release


def with_one_tile(config):
    if isinstance(config, dict):
        return {k: ONE_TILE if k == "image_grid_pinpoints" else with_one_tile(v) for k, v in config.items()}
    return config


def one_tile_copy(folder: Path, out: Path) -> Path:
    """The model folder with image_grid_pinpoints set to one tile in its config and its image processor's config
    (transformers 5 nests the latter in processor_config.json)."""
    out.mkdir()
    for file in folder.iterdir():
        data = file.read_bytes()
        if file.name in ("config.json", "preprocessor_config.json", "processor_config.json"):
            data = json.dumps(with_one_tile(json.loads(data))).encode()
        (out / file.name).write_bytes(data)
    return out


def served(model: Path, name: str, tmp_path: Path, **server) -> VllmFleet:
    return VllmFleet(tiny_params(model=str(model), served_model_name=name,
                                 server=ServerOptions(max_model_len=4096, **server)), tmp_path / name)


@pytest.mark.slow
def test_llava_next_token_counts_are_vllms(tiny_captioners, tmp_path):  # noqa: F811
    """Image sizes that take the 1x2, 2x1 and 2x2 grids, two prompts: our count == vLLM's prompt_tokens; and the grid
    knob (one tile, in a copy of the folder: vLLM 0.32 takes no list in mm_processor_kwargs) as vLLM counts it."""
    captioner = Captioner(tiny_captioners["llava_next"])
    assert captioner.exact_text
    prompts = [PROMPTS[0], PROMPTS[1]]
    with served(captioner.folder, "tiny-llava-next", tmp_path) as endpoints:
        endpoint = endpoints[0]
        theirs = {(size, p): prompt_tokens(endpoint, "tiny-llava-next", size, p) for size in SIZES for p in prompts}
    assert theirs == {(size, p): ours(captioner, size, p) for size in SIZES for p in prompts}
    assert len(set(theirs.values())) >= 4, "the sizes take different grids"
    with served(one_tile_copy(captioner.folder, tmp_path / "one-tile"), "tiny-llava-next-one-tile",
                tmp_path) as endpoints:
        one_tile = {size: prompt_tokens(endpoints[0], "tiny-llava-next-one-tile", size, prompts[0]) for size in SIZES}
    assert one_tile == {size: ours(captioner, size, prompts[0], grid=ONE_TILE) for size in SIZES}
    assert all(one_tile[size] < theirs[(size, prompts[0])] for size in [(96, 48), (400, 400)])


@pytest.mark.slow
def test_qwen2_vl_token_counts_are_vllms(tiny_captioners, tmp_path):  # noqa: F811
    """Qwen2-VL counts by pixel area: our count == vLLM's, with the release's pixel budget and a smaller one
    (caption.server.mm_processor_kwargs: max_pixels)."""
    captioner = Captioner(tiny_captioners["qwen2_vl"])
    sizes = SIZES + [(640, 480)]
    budget = {"max_pixels": 28 * 28 * 16}
    with served(captioner.folder, "tiny-qwen2-vl", tmp_path) as endpoints:
        theirs = {(size, p): prompt_tokens(endpoints[0], "tiny-qwen2-vl", size, p) for size in sizes
                  for p in PROMPTS[:2]}
    with served(captioner.folder, "tiny-qwen2-vl-budget", tmp_path, mm_processor_kwargs=budget) as endpoints:
        small = {size: prompt_tokens(endpoints[0], "tiny-qwen2-vl-budget", size, PROMPTS[0]) for size in sizes}
    assert theirs == {(size, p): ours(captioner, size, p) for size in sizes for p in PROMPTS[:2]}
    assert small == {size: ours(captioner, size, PROMPTS[0], budget) for size in sizes}
    assert small[(640, 480)] < theirs[((640, 480), PROMPTS[0])]


def test_release_configs_have_the_releases_sizes():
    """Parameters counted on the meta device: the sizes the releases are known by (7.57B, 2.21B, 8.29B, 0.89B)."""
    sizes = {folder.name: Captioner(folder).total_params for folder in sorted(CONFIGS.iterdir()) if folder.is_dir()}
    assert {name: round(n / 1e9, 2) for name, n in sizes.items()} == {
        "llava-onevision-qwen2-0.5b-ov-hf": 0.89, "llava-v1.6-mistral-7b-hf": 7.57, "qwen2-vl-2b-instruct": 2.21,
        "qwen2-vl-7b-instruct": 8.29}


def test_llava_next_release_grid_counts():
    """The release's processor: a 4:3 image at 384 px takes the 1x2 grid (576 base + 24 rows of 32 + 24 newlines),
    a square one the 2x2 grid (576 + 48 x 48 + 48)."""
    captioner = Captioner(CONFIGS / "llava-v1.6-mistral-7b-hf")
    assert not captioner.exact_text
    assert captioner.image_work((384, 288), {})[0] == 576 + 24 * 32 + 24
    assert captioner.image_work((384, 384), {})[0] == 576 + 48 * 48 + 48


def test_download_sizes():
    assert downloaded_size(1024, 768, 384, "keep_ratio_largest") == (384, 288)
    assert downloaded_size(1024, 768, 384, "keep_ratio") == (512, 384)
    assert downloaded_size(200, 100, 384, "keep_ratio_largest", only_if_bigger=True) == (200, 100)
    assert downloaded_size(1024, 768, 384, "center_crop") == (384, 384)
    assert downloaded_size(1024, 768, 384, "no") == (1024, 768)


def test_bound_follows_the_work(tmp_path):
    """The mean request is the share-weighted mean of its images; the bound is the larger of FLOPs / peak and bytes /
    bandwidth; the run's own images replace the web mix."""
    captioner = Captioner(CONFIGS / "qwen2-vl-2b-instruct")
    setting = Setting("t", captioner.folder, 384, "keep_ratio_largest")
    gpu = GPUS["h100"]
    mixed = cost(setting, captioner, list(WEB_SIZES), list(PROMPTS[:1]), 120, gpu)
    text = captioner.text_tokens(PROMPTS[0])
    image_tokens = {(w, h): captioner.image_work(downloaded_size(w, h, 384, "keep_ratio_largest"), {})[0]
                    for w, h, _ in WEB_SIZES}
    assert mixed.request.prompt_tokens == pytest.approx(
        sum(image_tokens[(w, h)] * share for w, h, share in WEB_SIZES) + text)
    assert mixed.bound_seconds == max(mixed.request.flops / gpu.flops, mixed.decode_bytes / gpu.bandwidth)
    for i, size in enumerate([(384, 288), (384, 288), (288, 384)]):
        Image.new("RGB", size).save(tmp_path / f"{i}.jpg")
    own = image_sizes(tmp_path, 10)
    assert own == [(288, 384, pytest.approx(1 / 3)), (384, 288, pytest.approx(2 / 3))]
    assert cost(setting, captioner, own, list(PROMPTS[:1]), 120, gpu, downloaded=True).request.image_tokens == \
        pytest.approx(image_tokens[(1024, 768)] * 2 / 3 + image_tokens[(768, 1024)] / 3)
    assert cost(setting.but("t", max_tokens=60), captioner, own, list(PROMPTS[:1]), 120, gpu,
                downloaded=True).request.decode_flops < mixed.request.decode_flops


@pytest.mark.expensive
def test_cost_command_prints_each_knob_for_the_paper_profile(capsys):
    """The paper profile's table: one row per knob, GPU-hours = N x bound / utilisation, cheaper knobs below 1.00x."""
    cost_cli.main(["--stage", "caption", "--utilisation", "0.5", "--images-total", "3e7"])
    out = capsys.readouterr().out
    rows = {line.split("  ")[0]: line.split() for line in out.splitlines()}
    for label in ("profile as is", "caption.max_image_side: 224", "grid: one tile [[336,336]]",
                  "caption.sampling.max_tokens: 96", "model: qwen2-vl-2b-instruct",
                  "model: llava-onevision-qwen2-0.5b-ov-hf"):
        assert label in rows, out
    profile = rows["profile as is"]
    bound_ms, hours = float(profile[-5].rstrip("m")), float(profile[-2].replace(",", ""))
    assert hours == pytest.approx(3e7 * bound_ms / 1e3 / 0.5 / 3600, rel=0.01)
    assert profile[-1] == "1.00x"
    assert float(rows["grid: one tile [[336,336]]"][-1].rstrip("x")) < 1
    assert float(rows["model: qwen2-vl-2b-instruct"][-1].rstrip("x")) < 0.5


def test_cost_command_user_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cost_cli.main(["--stage", "download"])
    assert exit_info.value.code == 2
    assert "--stage: 'download'" in capsys.readouterr().err
