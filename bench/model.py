"""Train-step cost of FixClip against a plain open_clip step on the same backbone and batch.

Rows (samples/s, median of runs x steps timed steps after warm-up, the rows taking turns step by step):
  open_clip      open_clip CLIP + open_clip.ClipLoss + AdamW, the step of open_clip_train (decay on >= 2-D weights
                 except norms/biases/logit_scale, torch's default AdamW kernel, logit_scale clamped to log(100))
  modules off    FixClip(FixClipConfig.plain()) + FixClipLoss + our training optimizer (fixclip.train.optim.adamw)
                 on the same 77-token texts (every row full: padding trimming has nothing to cut); tiny arch only
                                                                                -> ratio vs open_clip (goal >= 1.0)
  full FIX-CLIP  FixClip + FixClipLoss + our optimizer: 248-token long text, short text, masked image branch,
                 regional prompts, HFA                       -> cost vs modules off (tiny) or open_clip (goal <= 2.3)
--arch tiny is the embedded default's 4 + 4-layer CLIP with the default FixClipConfig; an open_clip name (ViT-B-16,
ViT-L-14) builds that architecture with random weights at its own image size and FIX-CLIP as configs/paper-30m.yaml
sets it. At real sizes, where a CPU batch is small, the optimizer's batch-independent cost would dilute the ratio, so
the goal is on forward + loss + backward (what grows with the batch on a GPU); the whole-step ratio is printed too.
Each row's forward + backward FLOPs are counted once with torch's FlopCounterMode (attention through the math SDPA
kernel, whose matmuls the counter sees; the fused CPU kernel has no FLOP formula in torch).
Ends with one JSON result line (bench/report.py). Prints figures only; speed is not asserted.
Run:  python bench/model.py [--arch tiny,ViT-B-16] [--batch 32 --runs 7 --steps 5 --threads 1]
"""
import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import open_clip
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, when run as a script
from bench.report import emit  # noqa: E402
from fixclip.base_model import TINY_CLIP_CONFIG, build_clip  # noqa: E402
from fixclip.config import FixClipConfig  # noqa: E402
from fixclip.loss import FixClipLoss  # noqa: E402
from fixclip.model import FixClip  # noqa: E402
from fixclip.text_stretch import long_tokenizer  # noqa: E402
from fixclip.train import optim as train_optim  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = "tiny"
REAL_BATCH = {"ViT-B-16": 4, "ViT-L-14": 2}  # CPU batch per row at real sizes (one row's model + AdamW fits in RAM)
WORDS = "red green blue yellow circle square triangle star left right top bottom small large".split()


def adamw(model: torch.nn.Module) -> torch.optim.AdamW:
    """open_clip_train's parameter groups: no weight decay on < 2-D params, norms, biases and logit_scale."""
    def exclude(name, p):
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return torch.optim.AdamW([
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2},
    ], lr=5e-4, betas=(0.9, 0.98), eps=1e-6)


def our_adamw(model: torch.nn.Module) -> torch.optim.AdamW:
    """The optimizer `python -m fixclip.train` builds (with the open_clip_train step's hyper-parameters)."""
    return train_optim.adamw(model, lr=5e-4, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)


def captions(n: int, words: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (words,), generator=gen)) for _ in range(n)]


def timed_step(loss_of, model, optim) -> tuple[float, float]:
    """One train step; seconds in forward + loss + backward, and in the optimizer step + logit-scale clamp."""
    start = time.perf_counter()
    loss = loss_of()
    optim.zero_grad(set_to_none=True)
    loss.backward()
    middle = time.perf_counter()
    optim.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return middle - start, time.perf_counter() - middle


def open_clip_step(model, loss_fn, optim, images, tokens) -> tuple[float, float]:
    return timed_step(lambda: loss_fn(*model(images, tokens)), model, optim)


def fixclip_step(model, loss_fn, optim, images, long_tokens, short_tokens) -> tuple[float, float]:
    return timed_step(lambda: loss_fn(model(images, long_tokens, short_tokens))["loss"], model, optim)


def step_flops(step) -> int:
    """Forward + loss + backward FLOPs of one step (the optimizer's elementwise work is not counted)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def arch_setup(arch: str, batch: int):
    """(base CLIP, FixClipConfig, image batch, description) for the tiny default or a named open_clip architecture."""
    if arch == TINY:
        base, cfg = build_clip(TINY_CLIP_CONFIG, seed=0), FixClipConfig()
        about = "tiny CLIP (64 px / 8 px patches, 4+4 layers), default FixClipConfig"
    else:
        base = build_clip(arch, seed=0)
        paper = yaml.safe_load((REPO / "configs/paper-30m.yaml").read_text())["train"]["fixclip"]
        cfg = FixClipConfig.model_validate(paper)
        about = f"{arch}, random weights, FixClipConfig of configs/paper-30m.yaml"
    size = base.visual.image_size
    size = size if isinstance(size, int) else size[0]
    return base, cfg, torch.randn(batch, 3, size, size), f"{about}, {size} px"


def setup(arch: str, batch: int) -> tuple[dict, dict, str, int]:
    """The rows of one architecture: (name -> one train step, name -> its model, description, long caption tokens)."""
    base, cfg, images, about = arch_setup(arch, batch)
    short_text = captions(batch, 8, seed=1)
    long_text = captions(batch, 120, seed=2)  # ~120 words: beyond 77 tokens, below 248
    short77 = open_clip.tokenize(short_text)
    long77, long248 = open_clip.tokenize(long_text), long_tokenizer(248)(long_text)
    if not bool(long77[:, -1].all()):
        raise SystemExit("long captions must fill all 77 tokens, or padding trimming makes 'modules off' less work")

    plain_clip = copy.deepcopy(base).train()
    plain_optim, clip_loss = adamw(plain_clip), open_clip.ClipLoss()
    full = FixClip(base, cfg).train()
    full_optim, full_loss = our_adamw(full), FixClipLoss.from_config(full.cfg)
    steps_of = {"open_clip": lambda: open_clip_step(plain_clip, clip_loss, plain_optim, images, long77)}
    if arch == TINY:
        off = FixClip(copy.deepcopy(plain_clip), FixClipConfig.plain()).train()
        off_optim, off_loss = our_adamw(off), FixClipLoss.from_config(off.cfg)
        steps_of["modules off"] = lambda: fixclip_step(off, off_loss, off_optim, images, long77, None)
    steps_of["full FIX-CLIP"] = lambda: fixclip_step(full, full_loss, full_optim, images, long248, short77)
    models = {"open_clip": plain_clip, "full FIX-CLIP": full} | ({"modules off": off} if arch == TINY else {})
    return steps_of, models, about, int(long248.argmax(-1).float().mean())


def flops_per_sample(arch: str, batch: int) -> dict[str, tuple[float, int]]:
    """name -> (forward + loss + backward FLOPs per sample, parameters) of the open_clip and FIX-CLIP steps."""
    steps_of, models, _, _ = setup(arch, batch)
    return {name: (step_flops(step) / batch, sum(p.numel() for p in models[name].parameters()))
            for name, step in steps_of.items()}


def measure(arch: str, batch: int, runs: int, steps: int) -> list[dict]:
    """Time (and count the FLOPs of) the rows for one architecture; print them and return the result rows."""
    steps_of, _, about, long_tokens = setup(arch, batch)
    flops = {name: step_flops(step) for name, step in steps_of.items()}  # also the first warm-up step
    for step in steps_of.values():  # warm-up
        for _ in range(2 if arch == TINY else 1):
            step()
    # Interleave the rows step by step so drifting load on shared cores hits them alike; report medians of steps.
    times = {name: [] for name in steps_of}
    for _ in range(runs * steps):
        for name, step in steps_of.items():
            times[name].append(step())
    model_ms = {name: 1e3 * statistics.median(m for m, _ in t) for name, t in times.items()}
    optim_ms = {name: 1e3 * statistics.median(o for _, o in t) for name, t in times.items()}
    rates = {name: batch / statistics.median(m + o for m, o in t) for name, t in times.items()}

    print(f"{about}: batch {batch}, {runs} runs x {steps} steps, {torch.get_num_threads()} threads; long captions "
          f"{long_tokens} tokens (77-token rows truncated)")
    for name, rate in rates.items():
        print(f"  {name:<14} {rate:8.2f} samples/s   (forward+loss+backward {model_ms[name]:8.1f} ms, "
              f"optimizer {optim_ms[name]:7.1f} ms per step; {flops[name] / batch / 1e9:7.2f} GFLOP per sample)")
    anchor = "modules off" if arch == TINY else "open_clip"
    model_cost = model_ms["full FIX-CLIP"] / model_ms[anchor]
    print(f"full FIX-CLIP / {anchor} cost: step {rates[anchor] / rates['full FIX-CLIP']:.2f}x, forward+loss+backward "
          f"{model_cost:.2f}x, FLOPs {flops['full FIX-CLIP'] / flops[anchor]:.2f}x  (goal <= 2.3x)")
    if arch == TINY:
        print(f"modules off / open_clip throughput: {rates['modules off'] / rates['open_clip']:.2f}x  (goal >= 1.0x; "
              f"forward+loss+backward alone {model_ms['open_clip'] / model_ms['modules off']:.2f}x)")
        return [
            {"name": "bare step, modules off", "ours": rates["modules off"], "anchor": rates["open_clip"],
             "anchor_name": "open_clip step", "unit": "samples/s", "goal": ">= 1.0"},
            {"name": "full FIX-CLIP vs modules off", "ours": rates["full FIX-CLIP"], "anchor": rates["modules off"],
             "anchor_name": "modules off", "unit": "samples/s", "goal": ">= 0.435"},
        ]
    # Rates per second of forward + loss + backward, so that ratio = 1 / cost and the goal reads as for tiny.
    return [
        {"name": f"full FIX-CLIP vs open_clip, {arch} (forward+backward)", "ours": 1e3 * batch / model_ms[
            "full FIX-CLIP"], "anchor": 1e3 * batch / model_ms["open_clip"], "anchor_name": f"open_clip {arch}",
         "unit": "samples/s", "goal": ">= 0.435"},
        {"name": f"FLOPs per sample, {arch}, full FIX-CLIP over open_clip", "ours": flops["full FIX-CLIP"] / batch
         / 1e9, "anchor": flops["open_clip"] / batch / 1e9, "anchor_name": f"open_clip {arch}", "unit": "GFLOP",
         "goal": "<= 2.3"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=TINY, help="comma-separated: tiny and/or open_clip names (ViT-B-16, ...)")
    parser.add_argument("--batch", type=int, default=32, help="batch of the tiny arch (real sizes: REAL_BATCH)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row and run")
    parser.add_argument("--runs", type=int, default=7, help="runs; each row's figure is over runs x steps steps")
    parser.add_argument("--real-runs", type=int, default=2, help="runs at real sizes (a ViT-L/14 step is seconds)")
    parser.add_argument("--threads", type=int, default=1, help="as bench/train.py: two threads on two shared cores "
                        "mostly measure OpenMP waiting for a descheduled thread")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for arch in args.arch.split(","):
        if arch == TINY:
            rows += measure(arch, args.batch, args.runs, args.steps)
        else:
            rows += measure(arch, REAL_BATCH.get(arch, 2), args.real_runs, 2)
    emit("model", rows)


if __name__ == "__main__":
    main()
