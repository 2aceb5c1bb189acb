"""Session fixtures for the caption tests: one real vLLM server on the tiny LLaVA, img2dataset raw shards, and the
tiny LLaVA-NeXT and Qwen2-VL of assets/tiny_captioners (built in seconds, not committed).

Import the fixtures explicitly into a test module: `from tests.vllm_fixtures import vllm_server  # noqa: F401`.
"""
import importlib.util
import os
import uuid
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from pipeline.params.caption import CaptionParams, Filters, Sampling
from pipeline.caption.fleet import VllmFleet

REPO = Path(__file__).resolve().parents[1]
TINY_LLAVA = REPO / "assets" / "tiny_llava" / "model"
TINY_CAPTIONERS_BUILD = REPO / "assets" / "tiny_captioners" / "build.py"
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
RAW_SHARDS = 4
IMAGES_PER_SHARD = 8
# Inherited by every server this session starts (and by stage subprocesses, which keep the parent's value).
os.environ.setdefault("FIXCLIP_CAPTION_TEST_SESSION", f"{os.getpid()}-{uuid.uuid4().hex}")
SESSION_MARKER = f"FIXCLIP_CAPTION_TEST_SESSION={os.environ['FIXCLIP_CAPTION_TEST_SESSION']}"
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "pink", "black"]


def tiny_params(**overrides) -> CaptionParams:
    """Caption params for tests: the tiny LLaVA, absolute paths, short (kept) answers, quick retries."""
    values = {
        "engine": "server",  # the session's server (vllm_server) is shared; tests of in_process ask for it
        "model": str(TINY_LLAVA),
        "python": str(VLLM_PYTHON),
        "startup_timeout_s": 240,
        "endpoint_timeout_s": 5,
        "retries": 2,
        "backoff_s": 0.2,
        "request_timeout_s": 60,
        "sampling": Sampling(max_tokens=32),
        "filters": Filters(min_words=3, keep_truncated=True),  # short answers are cut at max_tokens: keep them
    }
    return CaptionParams(**(values | overrides))


def vllm_pids() -> dict[int, str]:
    """Live vLLM processes (server, engine core, workers) started by this test session.

    Servers inherit the environment, so the session's marker variable tells them apart from vLLM processes that
    other users of the machine run at the same time.
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if SESSION_MARKER.encode() not in environ or "State:\tZ" in status:
            continue
        if ".venv-vllm" in cmdline or "vllm.entrypoints" in cmdline or cmdline.startswith("VLLM"):
            found[int(entry.name)] = cmdline.strip()
    return found


def toy_image(i: int) -> Image.Image:
    image = Image.new("RGB", (64, 64), (200, 200, 200))
    draw = ImageDraw.Draw(image)
    cell = i % 9
    x, y = (cell % 3) * 21 + 2, (cell // 3) * 21 + 2
    draw.ellipse((x, y, x + 17, y + 17), fill=COLOURS[i % len(COLOURS)])
    return image


@pytest.fixture(scope="session")
def raw_shards(tmp_path_factory) -> Path:
    """Real img2dataset webdataset output: RAW_SHARDS shards of IMAGES_PER_SHARD images (+ one failed URL)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    root = tmp_path_factory.mktemp("caption_raw")
    images = root / "images"
    images.mkdir()
    urls = []
    for i in range(RAW_SHARDS * IMAGES_PER_SHARD):
        toy_image(i).save(images / f"{i:03d}.png")
        urls.append((images / f"{i:03d}.png").as_uri())
    urls.insert(5, (images / "missing.png").as_uri())
    (root / "urls.txt").write_text("\n".join(urls) + "\n")
    out = root / "raw"
    download(
        url_list=str(root / "urls.txt"), output_folder=str(out), output_format="webdataset", input_format="txt",
        image_size=64, resize_mode="center_crop", processes_count=1, thread_count=4,
        number_sample_per_shard=IMAGES_PER_SHARD + 1, timeout=5, enable_wandb=False,
    )
    return out


_shared_fleet: dict = {"fleet": None, "users": 0}


@pytest.fixture(scope="session")
def vllm_fleet(tmp_path_factory):
    """One started VllmFleet shared by the whole session; afterwards, no vLLM process may remain.

    Each test module that imports this fixture gets its own session fixture from pytest, so the fleet itself is
    shared here (counted) and stopped when the last user is torn down.
    """
    if _shared_fleet["fleet"] is None:
        fleet = VllmFleet(tiny_params(), tmp_path_factory.mktemp("vllm_logs"))
        fleet.__enter__()
        _shared_fleet["fleet"] = fleet
    _shared_fleet["users"] += 1
    yield _shared_fleet["fleet"]
    _shared_fleet["users"] -= 1
    if _shared_fleet["users"] == 0:
        _shared_fleet.pop("fleet").stop()
        _shared_fleet["fleet"] = None
        leftovers = vllm_pids()
        assert not leftovers, f"vLLM processes left after the session server stopped: {leftovers}"


@pytest.fixture(scope="session")
def vllm_server(vllm_fleet) -> str:
    """Base URL of the session's vLLM server."""
    return vllm_fleet.servers[0].endpoint


@pytest.fixture(scope="session")
def tiny_captioners(tmp_path_factory) -> dict[str, Path]:
    """name -> folder of each tiny captioner of assets/tiny_captioners/build.py (llava_next, qwen2_vl), random
    weights in the Hugging Face hub layout."""
    spec = importlib.util.spec_from_file_location("tiny_captioners_build", TINY_CAPTIONERS_BUILD)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    root = tmp_path_factory.mktemp("tiny_captioners")
    return {name: Path(summary["out"]) for name, summary in build.build_all(root).items()}
