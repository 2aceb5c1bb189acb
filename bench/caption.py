"""Caption stage images/s vs vLLM offline inference, same model, images, prompts and sampling, in one run.

    .venv/bin/python bench/caption.py [--images 128] [--repeats 6] [--concurrency N]

Side A: `pipeline.caption.run.run` (tar reading, our async client, parquet writing) against one vLLM server that
`VllmFleet` starts with the caption params' server options. Side B: the same requests through vLLM's offline
`LLM.chat` (i.e. `LLM.generate` after the same chat template), in a subprocess of the vLLM environment, with the
same engine options and per-image prompt and seed. Both engines stay loaded; after a warm-up pass each, the timed
passes alternate (A B, B A, ...) so that noise from other work on the machine hits both sides alike. Medians and
their ratio are printed (goal >= 0.90), plus how many captions both sides agree on.
"""
import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
if __name__ == "__main__" and "--offline" not in sys.argv:
    sys.path.insert(0, str(REPO))


def offline_side(spec_path: Path) -> None:
    """Runs in the vLLM environment: load the engine, then time one LLM.chat pass per `run` line on stdin."""
    from vllm import LLM, SamplingParams

    spec = json.loads(spec_path.read_text())
    llm = LLM(model=spec["model"], **spec["engine"])
    requests = spec["requests"]
    conversations = [
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": r["image_url"]}},
                                      {"type": "text", "text": r["prompt"]}]}]
        for r in requests
    ]
    sampling = [SamplingParams(seed=r["seed"], **spec["sampling"]) for r in requests]
    outputs = llm.chat(conversations, sampling, use_tqdm=False)
    print("BENCH_READY", flush=True)
    for _ in iter(sys.stdin.readline, ""):
        started = time.perf_counter()
        outputs = llm.chat(conversations, sampling, use_tqdm=False)
        print(f"BENCH_SECONDS {time.perf_counter() - started}", flush=True)
    captions = {r["key"]: o.outputs[0].text.strip() for r, o in zip(requests, outputs)}
    print("BENCH_CAPTIONS " + json.dumps(captions), flush=True)


class OfflineEngine:
    """The offline side as a subprocess of the vLLM environment, driven one timed pass at a time."""

    def __init__(self, params, spec: dict, work: Path):
        spec_path = work / "offline_spec.json"
        spec_path.write_text(json.dumps(spec))
        env = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        self.log = open(work / "offline.log", "w")
        self.proc = subprocess.Popen(
            [str(Path(params.python).absolute()), str(Path(__file__).resolve()), "--offline", str(spec_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO, env=env,
        )
        self.expect("BENCH_READY")

    def expect(self, prefix: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()
        self.proc.wait()
        sys.exit(f"offline side exited ({self.proc.returncode}); see {self.log.name}")

    def timed_pass(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return float(self.expect("BENCH_SECONDS"))

    def finish(self) -> dict[str, str]:
        self.proc.stdin.close()
        captions = json.loads(self.expect("BENCH_CAPTIONS"))
        self.proc.wait(timeout=120)
        self.log.close()
        return captions


def toy_image(i: int):
    """A 64x64 grey scene with one coloured disc in one of the 3x3 cells."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), (200, 200, 200))
    x, y = (i % 3) * 21 + 2, (i // 3 % 3) * 21 + 2
    ImageDraw.Draw(image).ellipse((x, y, x + 17, y + 17), fill=COLOURS[i % len(COLOURS)])
    return image


def write_raw_shard(raw_dir: Path, n_images: int) -> list[tuple[str, bytes]]:
    raw_dir.mkdir(parents=True)
    images = []
    with tarfile.open(raw_dir / "00000.tar", "w") as tar:
        for i in range(n_images):
            buffer = io.BytesIO()
            toy_image(i).save(buffer, "JPEG", quality=95)
            key, data = f"{i:09d}", buffer.getvalue()
            member = tarfile.TarInfo(f"{key}.jpg")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
            images.append((key, data))
    return images


def stage_pass(params, raw_dir: Path, out: Path) -> float:
    from pipeline.caption.run import run

    started = time.perf_counter()
    run(params, raw_dir, out, out.with_suffix(".json"), out.parent / "logs")
    return time.perf_counter() - started


def offline_spec(params, images: list[tuple[str, bytes]]) -> dict:
    from pipeline.caption.client import data_url, prompt_id_for, request_seed

    opts = params.server
    engine = {
        "dtype": opts.dtype, "max_model_len": opts.max_model_len, "tensor_parallel_size": opts.tensor_parallel_size,
        "limit_mm_per_prompt": opts.limit_mm_per_prompt, "enforce_eager": opts.enforce_eager,
        "served_model_name": params.served_model_name,
    }
    for name in ("max_num_seqs", "kv_cache_memory_bytes", "gpu_memory_utilization"):
        if getattr(opts, name) is not None:
            engine[name] = getattr(opts, name)
    sampling = params.sampling
    requests = []
    for key, data in images:
        prompt_id = prompt_id_for(key, len(params.prompts))
        requests.append({"key": key, "image_url": data_url(data, "jpg"), "prompt": params.prompts[prompt_id],
                         "seed": request_seed(sampling.seed, key, prompt_id)})
    return {
        "model": str(Path(params.model).absolute()), "engine": engine, "requests": requests,
        "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--concurrency", type=int, help="requests in flight per server (default: caption params)")
    parser.add_argument("--offline", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.offline:
        offline_side(args.offline)
        return

    import pyarrow.parquet as pq

    from pipeline.params.caption import CaptionParams
    from pipeline.caption.fleet import VllmFleet

    params = CaptionParams(model=str(REPO / "assets/tiny_llava/model"), python=str(REPO / ".venv-vllm/bin/python"))
    if args.concurrency:
        params = params.model_copy(update={"concurrency": args.concurrency})

    with tempfile.TemporaryDirectory(prefix="caption_bench_") as tmp:
        work = Path(tmp)
        images = write_raw_shard(work / "raw", args.images)
        offline = OfflineEngine(params, offline_spec(params, images), work)
        stage_times, offline_times = [], []
        with VllmFleet(params, work / "logs") as urls:
            served = params.model_copy(update={"endpoints": urls})
            stage_pass(served, work / "raw", work / "warmup")
            for repeat in range(args.repeats):
                out = work / f"captions{repeat}"
                if repeat % 2:
                    offline_times.append(offline.timed_pass())
                    stage_times.append(stage_pass(served, work / "raw", out))
                else:
                    stage_times.append(stage_pass(served, work / "raw", out))
                    offline_times.append(offline.timed_pass())
        offline_captions = offline.finish()
        rows = pq.read_table(out / "00000.parquet").to_pylist()
        stage_captions = {row["key"]: row["caption"] for row in rows}
    stage_rate = args.images / statistics.median(stage_times)
    offline_rate = args.images / statistics.median(offline_times)
    same = sum(stage_captions[k] == offline_captions.get(k) for k in stage_captions)
    print(f"images: {args.images}, max_tokens: {params.sampling.max_tokens}, "
          f"concurrency: {params.concurrency}, max_num_seqs: {params.server.max_num_seqs}")
    print(f"caption stage (client + server): {stage_rate:8.2f} images/s  runs {[round(t, 2) for t in stage_times]}")
    print(f"vLLM offline LLM.chat:           {offline_rate:8.2f} images/s  runs {[round(t, 2) for t in offline_times]}")
    print(f"ratio stage/offline: {stage_rate / offline_rate:.3f} (goal >= 0.90)")
    print(f"identical captions: {same}/{len(stage_captions)}")


if __name__ == "__main__":
    main()
