"""Measure the captioner as vLLM serves it: caption held-out toy scenes through the OpenAI chat API and score them.

    .venv/bin/python assets/tiny_llava/eval_served.py [--model assets/tiny_llava/model] [--n 500]

Starts the real server (the vLLM environment, the caption stage's CPU flags) on a free port, sends world seed 0,
scenes 0..n-1 as JPEG quality 95 data URLs (as img2dataset stores them), prompt i % len(PROMPTS) for scene i,
temperature 0.7, top_p 0.95, `--concurrency` requests in flight; scores with `pipeline.toyworld.captions.score_captions`
and prints one JSON line (scores per attribute and per prompt, images/s, mean completion tokens). Stops the server.
"""
import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from pipeline.toyworld.captions import PROMPTS, score_captions  # noqa: E402
from pipeline.toyworld.scenes import make_record  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg_data_url(image) -> str:
    rgb = np.asarray(image.convert("RGB"))
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), 95])
    assert ok
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def start_server(model: Path, port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    cmd = [str(REPO / ".venv-vllm/bin/python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--max-model-len", "512",
           "--max-num-seqs", "16", "--kv-cache-memory-bytes", "268435456", "--limit-mm-per-prompt",
           '{"image": 1}', "--served-model-name", "tiny-llava"]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError("server not healthy")


async def caption_all(port: int, items: list, concurrency: int, max_tokens: int) -> list:
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    results = {}

    async def worker(session):
        while not queue.empty():
            i, url, prompt = queue.get_nowait()
            body = {"model": "tiny-llava", "temperature": 0.7, "top_p": 0.95, "max_tokens": max_tokens, "seed": i,
                    "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                              {"type": "text", "text": prompt}]}]}
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
                payload = await r.json()
            choice = payload["choices"][0]
            results[i] = ((choice["message"].get("content") or "").strip(), choice.get("finish_reason"),
                          payload["usage"]["completion_tokens"], payload["usage"]["prompt_tokens"])

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return [results[i] for i, _, _ in items]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "assets/tiny_llava/model")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--log", type=Path, default=Path("/tmp/tiny_llava_vllm.log"))
    ap.add_argument("--dump", type=Path, default=None, help="write captions and scenes as JSON lines here")
    args = ap.parse_args()

    records = [make_record(0, i, image_size=64, grid=3, min_objects=3, max_objects=6, textures=True)
               for i in range(args.n)]
    items = [(i, jpeg_data_url(r.image), PROMPTS[i % len(PROMPTS)]) for i, r in enumerate(records)]
    port = free_port()
    proc = start_server(args.model.resolve(), port, args.log)
    try:
        t = time.time()
        wait_healthy(port, proc)
        startup = time.time() - t
        asyncio.run(caption_all(port, items[:32], args.concurrency, args.max_tokens))  # warm-up
        t = time.time()
        out = asyncio.run(caption_all(port, items, args.concurrency, args.max_tokens))
        elapsed = time.time() - t
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    pairs = [(text, r.scene_json) for (text, *_), r in zip(out, records)]
    result = {"all": score_captions(pairs)}
    for k, prompt in enumerate(PROMPTS):
        result[f"prompt{k}"] = score_captions(pairs[k::len(PROMPTS)])
    result["images_per_s"] = args.n / elapsed
    result["mean_completion_tokens"] = float(np.mean([o[2] for o in out]))
    result["max_completion_tokens"] = int(max(o[2] for o in out))
    result["prompt_tokens"] = sorted({o[3] for o in out})
    result["finish_reasons"] = {f: sum(o[1] == f for o in out) for f in {o[1] for o in out}}
    result["startup_s"] = startup
    if args.dump:
        args.dump.write_text("".join(json.dumps({"caption": text, "scene": scene}) + "\n" for text, scene in pairs))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
