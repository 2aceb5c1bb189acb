"""Caption stage images/s vs vLLM offline inference and vs a bare `openai` client, same model, images, prompts and
sampling, in one run.

    .venv/bin/python bench/caption.py [--images 128] [--repeats 6] [--concurrency N] [--max-num-seqs N]
    .venv/bin/python bench/caption.py --sweep [--engine in_process] [--sweep-concurrency 8,32,128]
                                      [--sweep-max-num-seqs 8,16,32]      (or: python -m bench --only caption --sweep)

Side A: `pipeline.caption.run.run` (tar reading, our async client, filters, parquet writing) against one vLLM
server that `VllmFleet` starts with the caption params' server options. Side E: the same stage loop
(`caption_shards`: read, request, filter, write) with `caption.engine: in_process`, on one engine worker started
once as side A's server is. Side B: the same requests through vLLM's
offline `LLM.chat` (i.e. `LLM.generate` after the same chat template), in a subprocess of the vLLM environment, with
the same engine options and per-image prompt and seed. Side C: the same requests, prebuilt, sent to the same server
by a bare `openai.AsyncOpenAI` loop with the same number in flight (a subprocess of the vLLM environment, which has
the `openai` package). B - C is what serving over HTTP costs (vLLM's front end); C - A is what our client adds.
Engines stay loaded; after a warm-up pass each, the timed passes rotate their order so that noise from other work
on the machine hits every side alike, and while one side is timed the others' processes are paused (SIGSTOP: idle
vLLM engines poll and would take CPU from it). Medians and ratios are printed (goals: E/B >= 0.95, A/C >= 0.95; A/B is
shown), plus how many captions the sides agree on.
"""
import argparse
import io
import json
import os
import signal
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


def bare_client_side(spec_path: Path) -> None:
    """Runs in the vLLM environment: one `openai` chat request per image against the server, `concurrency` in
    flight, one timed pass per `run` line on stdin."""
    import asyncio

    import openai

    spec = json.loads(spec_path.read_text())

    async def one_pass() -> dict[str, str]:
        client = openai.AsyncOpenAI(base_url=f"{spec['url']}/v1", api_key="unused", max_retries=0, timeout=600)
        in_flight = asyncio.Semaphore(spec["concurrency"])

        async def request(r: dict) -> tuple[str, str]:
            async with in_flight:
                response = await client.chat.completions.create(
                    model=spec["served_model_name"], seed=r["seed"], **spec["sampling"],
                    messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": r["image_url"]}},
                                                          {"type": "text", "text": r["prompt"]}]}])
            return r["key"], (response.choices[0].message.content or "").strip()

        async with client:
            return dict(await asyncio.gather(*map(request, spec["requests"])))

    captions = asyncio.run(one_pass())
    print("BENCH_READY", flush=True)
    for _ in iter(sys.stdin.readline, ""):
        started = time.perf_counter()
        captions = asyncio.run(one_pass())
        print(f"BENCH_SECONDS {time.perf_counter() - started}", flush=True)
    print("BENCH_CAPTIONS " + json.dumps(captions), flush=True)


def offline_side(spec_path: Path) -> None:
    """Runs in the vLLM environment: load the engine with the stage's engine flags, then time one LLM.chat pass per
    `run` line on stdin."""
    from vllm import LLM, SamplingParams

    sys.path.insert(0, str(REPO / "pipeline/caption"))
    from engine_worker import engine_kwargs  # the servers' and engine workers' flags, parsed as they parse them

    spec = json.loads(spec_path.read_text())
    llm = LLM(**engine_kwargs(spec["flags"]))
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


class Sidecar:
    """A side run as a subprocess of the vLLM environment (`--offline` or `--bare-client`), driven one timed pass at
    a time."""

    def __init__(self, params, spec: dict, work: Path, mode: str):
        spec_path = work / f"{mode.strip('-')}_spec.json"
        spec_path.write_text(json.dumps(spec))
        env = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        self.log = open(work / f"{mode.strip('-')}.log", "w")
        self.proc = subprocess.Popen(
            [str(Path(params.python).absolute()), str(Path(__file__).resolve()), mode, str(spec_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO, env=env,
            start_new_session=True,  # its own process group, paused while another side is timed
        )
        self.expect("BENCH_READY")

    def expect(self, prefix: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()
        self.proc.wait()
        sys.exit(f"side {self.proc.args[2]} exited ({self.proc.returncode}); see {self.log.name}")

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


def only_running(groups: dict[str, int], running: set[str]) -> None:
    """SIGCONT the named sides' process groups and SIGSTOP the others: an idle vLLM engine keeps polling, and on a
    small machine the three idle ones took up to half the CPU from the side being timed (measured: the in_process
    stage ran at 40 images/s with them running, 71 alone)."""
    for name, group in groups.items():
        os.killpg(group, signal.SIGCONT if name in running else signal.SIGSTOP)


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


def engine_pass(params, engines: list, raw_dir: Path, out: Path) -> float:
    """The stage's caption loop on started engines or servers (run() would start and stop in-process engines each
    pass)."""
    import asyncio

    from pipeline.caption.run import caption_shards
    from pipeline.caption.shard_io import RunRecord, image_keys

    out.mkdir(parents=True)
    todo = {path.stem: path for path in sorted(raw_dir.glob("*.tar"))}
    keys = {shard: image_keys(path, params.image_extensions) for shard, path in todo.items()}
    started = time.perf_counter()
    asyncio.run(caption_shards(params, engines, todo, keys, out, RunRecord(out)))
    return time.perf_counter() - started


def offline_spec(params, images: list[tuple[str, bytes]]) -> dict:
    from pipeline.caption.client import data_url, prompt_id_for, request_seed

    from pipeline.caption.fleet import engine_flags

    sampling = params.sampling
    requests = []
    for key, data in images:
        prompt_id = prompt_id_for(key, len(params.prompts))
        requests.append({"key": key, "image_url": data_url(data, "jpg"), "prompt": params.prompts[prompt_id],
                         "seed": request_seed(sampling.seed, key, prompt_id)})
    return {
        "flags": engine_flags(params, str(Path(params.model).absolute())), "requests": requests,
        "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens},
    }


def sweep(params, raw_dir: Path, work: Path, images: int, engine: str, concurrencies: list[int],
          seqs: list[int], repeats: int) -> list[dict]:
    """images/s of the stage's caption loop over max_num_seqs (one engine start each) x concurrency (requests in
    flight per engine); median of `repeats` passes after a warm-up pass."""
    from pipeline.caption.fleet import VllmFleet

    rates = {}
    for seqs_per_step in seqs:
        server = params.server.model_copy(update={"max_num_seqs": seqs_per_step})
        tuned = params.model_copy(update={"engine": engine, "server": server})
        with VllmFleet(tuned, work / f"sweep_logs_{seqs_per_step}") as endpoints:
            for concurrency in concurrencies:
                run_params = tuned.model_copy(update={"concurrency": concurrency})
                outs = [work / f"sweep_{seqs_per_step}_{concurrency}_{r}" for r in range(repeats + 1)]
                times = [engine_pass(run_params, endpoints, raw_dir, out) for out in outs][1:]
                rates[(seqs_per_step, concurrency)] = images / statistics.median(times)
    best = max(rates.values())
    print(f"images/s, engine {engine}, {images} images, max_tokens {params.sampling.max_tokens}: rows max_num_seqs, "
          f"columns concurrency (requests in flight per engine); * marks the best")
    print("max_num_seqs " + "".join(f"{c:>10}" for c in concurrencies))
    for seqs_per_step in seqs:
        cells = [rates[(seqs_per_step, c)] for c in concurrencies]
        print(f"{seqs_per_step:>12} " + "".join(f"{r:>9.2f}{'*' if r == best else ' '}" for r in cells))
    return [{"name": f"sweep {engine}, max_num_seqs {n}, concurrency {c}", "ours": rate, "anchor": best,
             "anchor_name": "best of the sweep", "unit": "images/s", "goal": ""} for (n, c), rate in rates.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--concurrency", type=int, help="requests in flight per server (default: caption params)")
    parser.add_argument("--max-num-seqs", type=int, help="the engines' max_num_seqs (default: caption params)")
    parser.add_argument("--sweep", action="store_true", help="images/s over concurrency x max_num_seqs instead")
    parser.add_argument("--engine", choices=["server", "in_process"], default="in_process", help="engine of --sweep")
    parser.add_argument("--sweep-concurrency", default="8,32,128", help="comma-separated")
    parser.add_argument("--sweep-max-num-seqs", default="8,16,32", help="comma-separated")
    parser.add_argument("--offline", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bare-client", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.offline or args.bare_client:
        offline_side(args.offline) if args.offline else bare_client_side(args.bare_client)
        return

    import pyarrow.parquet as pq

    from bench.report import emit
    from pipeline.params import load_params
    from pipeline.caption.fleet import VllmFleet

    caption = load_params(REPO / "params.yaml").caption  # the model and engine options a run would use

    def local(path: str) -> str:
        return str(REPO / path) if (REPO / path).exists() else path  # a hub id stays as it is

    params = caption.model_copy(update={"model": local(caption.model), "python": local(caption.python),
                                        "engine": "server", "endpoints": [], "distributor": "local"})
    if args.concurrency:
        params = params.model_copy(update={"concurrency": args.concurrency})
    if args.max_num_seqs:
        params = params.model_copy(update={"server": params.server.model_copy(update={"max_num_seqs":
                                                                                       args.max_num_seqs})})

    with tempfile.TemporaryDirectory(prefix="caption_bench_") as tmp:
        work = Path(tmp)
        images = write_raw_shard(work / "raw", args.images)
        if args.sweep:
            numbers = [[int(n) for n in text.split(",")] for text in (args.sweep_concurrency, args.sweep_max_num_seqs)]
            emit("caption", sweep(params, work / "raw", work, args.images, args.engine, *numbers, args.repeats))
            return
        spec = offline_spec(params, images)
        offline = Sidecar(params, spec, work, "--offline")
        times = {"stage": [], "engine": [], "offline": [], "bare": []}
        in_process = params.model_copy(update={"engine": "in_process"})
        server_fleet, engine_fleet = VllmFleet(params, work / "logs"), VllmFleet(in_process, work / "engine_logs")
        with server_fleet as urls, engine_fleet as engines:
            served = params.model_copy(update={"endpoints": urls})
            stage_pass(served, work / "raw", work / "warmup")
            engine_pass(in_process, engines, work / "raw", work / "engine_warmup")
            bare = Sidecar(params, spec | {"url": urls[0], "concurrency": params.concurrency,
                                           "served_model_name": params.served_model_name}, work, "--bare-client")
            passes = {"stage": lambda out: stage_pass(served, work / "raw", out),
                      "engine": lambda out: engine_pass(in_process, engines, work / "raw", out.with_name(
                          f"{out.name}_engine")),
                      "offline": lambda out: offline.timed_pass(), "bare": lambda out: bare.timed_pass()}
            groups = {"server": server_fleet.servers[0].process.pid, "engine": engine_fleet.servers[0].process.pid,
                      "offline": offline.proc.pid, "bare": bare.proc.pid}
            needs = {"stage": {"server"}, "engine": {"engine"}, "offline": {"offline"}, "bare": {"server", "bare"}}
            order = list(passes)
            try:
                for repeat in range(args.repeats):
                    out = work / f"captions{repeat}"
                    for side in order[repeat % 4:] + order[:repeat % 4]:
                        only_running(groups, needs[side])
                        times[side].append(passes[side](out))
            finally:
                only_running(groups, set(groups))
            bare_captions = bare.finish()
        offline_captions = offline.finish()
        rows = pq.read_table(out / "00000.parquet").to_pylist()
        stage_captions = {row["key"]: row["caption"] for row in rows}
        engine_rows = pq.read_table(out.with_name(f"{out.name}_engine") / "00000.parquet").to_pylist()
        engine_captions = {row["key"]: row["caption"] for row in engine_rows}
        statuses = {side: sorted(row["status"] for row in side_rows)
                    for side, side_rows in (("stage", rows), ("engine", engine_rows))}
    rate = {side: args.images / statistics.median(t) for side, t in times.items()}
    print(f"images: {args.images}, max_tokens: {params.sampling.max_tokens}, "
          f"concurrency: {params.concurrency}, max_num_seqs: {params.server.max_num_seqs}")
    for side, label in [("stage", "caption stage (client + server)"), ("engine", "caption stage, in_process engine"),
                        ("bare", "bare openai client + server"), ("offline", "vLLM offline LLM.chat")]:
        print(f"{label:<32} {rate[side]:8.2f} images/s  runs {[round(t, 2) for t in times[side]]}")

    def per_round(ours: str, anchor: str) -> str:
        """The spread of the ratio over the rounds: on a small machine it shows how much of a miss is noise."""
        ratios = sorted(a / o for o, a in zip(times[ours], times[anchor]))
        return f"per round {ratios[0]:.2f}-{ratios[-1]:.2f}"

    print(f"ratio in_process stage/offline: {rate['engine'] / rate['offline']:.3f} ({per_round('engine', 'offline')}"
          f"; goal >= 0.95); server stage/offline: {rate['stage'] / rate['offline']:.3f}")
    print(f"ratio stage/bare client: {rate['stage'] / rate['bare']:.3f} ({per_round('stage', 'bare')}; goal >= 0.95); "
          f"bare client/offline: {rate['bare'] / rate['offline']:.3f} (what serving over HTTP costs)")

    def agreeing(other: dict[str, str]) -> str:
        return f"{sum(text == other.get(key) for key, text in stage_captions.items())}/{len(stage_captions)}"

    print(f"identical captions: stage vs offline {agreeing(offline_captions)}, "
          f"stage vs bare client {agreeing(bare_captions)}, stage vs in_process {agreeing(engine_captions)}; "
          f"same statuses in both engine modes: {statuses['stage'] == statuses['engine']}")
    emit("caption", [
        {"name": "caption stage, in_process engine vs offline engine", "ours": rate["engine"],
         "anchor": rate["offline"], "anchor_name": "vLLM offline LLM.chat", "unit": "images/s", "goal": ">= 0.95",
         **({} if len(engine_captions) == len(stage_captions) else {"ok": False})},
        {"name": "caption stage, server engine vs offline engine", "ours": rate["stage"], "anchor": rate["offline"],
         "anchor_name": "vLLM offline LLM.chat", "unit": "images/s", "goal": ""},
        {"name": "caption client vs bare openai client", "ours": rate["stage"], "anchor": rate["bare"],
         "anchor_name": "openai.AsyncOpenAI loop, same server", "unit": "images/s", "goal": ">= 0.95"},
    ])


if __name__ == "__main__":
    main()
