"""Train-step throughput of FixClip against a plain open_clip step on the same tiny backbone and batch.

Rows (samples/s, median of runs x steps timed steps after warm-up, the rows taking turns step by step):
  open_clip      open_clip CLIP + open_clip.ClipLoss + AdamW, the step of open_clip_train (decay on >= 2-D weights
                 except norms/biases/logit_scale, torch's default AdamW kernel, logit_scale clamped to log(100))
  modules off    FixClip(FixClipConfig.plain()) + FixClipLoss + our training optimizer (fixclip.train.optim.adamw)
                 on the same 77-token texts (every row full: padding trimming has nothing to cut)
                                                                                -> ratio vs open_clip (goal >= 1.0)
  full FIX-CLIP  FixClip(FixClipConfig()) + FixClipLoss + our optimizer: 248-token long text, short text, masked
                 image branch, regional prompts, HFA                            -> cost vs modules off (goal <= 2.3)
Each step is also split into forward + loss + backward and optimizer (+ clamp), so the model's share of the ratio
is printed apart from the optimizer's. Ends with one JSON result line (bench/report.py).
Prints figures only; speed is not asserted.  Run:  python bench/model.py [--batch 32 --runs 7 --steps 5 --threads 1]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, when run as a script
from bench.report import emit  # noqa: E402
from fixclip.base_model import TINY_CLIP_CONFIG, build_clip  # noqa: E402
from fixclip.config import FixClipConfig  # noqa: E402
from fixclip.loss import FixClipLoss  # noqa: E402
from fixclip.model import FixClip  # noqa: E402
from fixclip.text_stretch import long_tokenizer  # noqa: E402
from fixclip.train import optim as train_optim  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row and run")
    parser.add_argument("--runs", type=int, default=7, help="runs; each row's figure is over runs x steps steps")
    parser.add_argument("--threads", type=int, default=1, help="as bench/train.py: two threads on two shared cores "
                        "mostly measure OpenMP waiting for a descheduled thread")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    base = build_clip(TINY_CLIP_CONFIG, seed=0)
    images = torch.randn(args.batch, 3, 64, 64)
    short_text = captions(args.batch, 8, seed=1)
    long_text = captions(args.batch, 120, seed=2)  # ~120 words: beyond 77 tokens, below 248
    short77 = open_clip.tokenize(short_text)
    long77, long248 = open_clip.tokenize(long_text), long_tokenizer(248)(long_text)

    if not bool(long77[:, -1].all()):
        raise SystemExit("long captions must fill all 77 tokens, or padding trimming makes 'modules off' less work")

    plain_clip = copy.deepcopy(base).train()
    plain_optim, clip_loss = adamw(plain_clip), open_clip.ClipLoss()
    off = FixClip(copy.deepcopy(base), FixClipConfig.plain()).train()
    off_optim, off_loss = our_adamw(off), FixClipLoss.from_config(off.cfg)
    full = FixClip(copy.deepcopy(base), FixClipConfig()).train()
    full_optim, full_loss = our_adamw(full), FixClipLoss.from_config(full.cfg)

    steps = {
        "open_clip": lambda: open_clip_step(plain_clip, clip_loss, plain_optim, images, long77),
        "modules off": lambda: fixclip_step(off, off_loss, off_optim, images, long77, None),
        "full FIX-CLIP": lambda: fixclip_step(full, full_loss, full_optim, images, long248, short77),
    }
    for step in steps.values():  # warm-up
        for _ in range(3):
            step()
    # Interleave the rows step by step so drifting load on shared cores hits them alike; report medians of steps.
    times = {name: [] for name in steps}
    for _ in range(args.runs * args.steps):
        for name, step in steps.items():
            times[name].append(step())
    model_ms = {name: 1e3 * statistics.median(m for m, _ in t) for name, t in times.items()}
    optim_ms = {name: 1e3 * statistics.median(o for _, o in t) for name, t in times.items()}
    rows = {name: args.batch / statistics.median(m + o for m, o in t) for name, t in times.items()}

    print(f"batch {args.batch}, {args.runs} runs x {args.steps} steps, {torch.get_num_threads()} threads, "
          f"tiny CLIP (64 px / 8 px patches, 4+4 layers); long captions {int(long248.argmax(-1).float().mean())} "
          f"tokens (77-token rows truncated)")
    for name, rate in rows.items():
        print(f"  {name:<14} {rate:8.1f} samples/s   (forward+loss+backward {model_ms[name]:6.1f} ms, "
              f"optimizer {optim_ms[name]:5.1f} ms per step)")
    print(f"modules off / open_clip throughput : {rows['modules off'] / rows['open_clip']:.2f}x  (goal >= 1.0x; "
          f"forward+loss+backward alone {model_ms['open_clip'] / model_ms['modules off']:.2f}x)")
    print(f"full FIX-CLIP / modules off cost   : {rows['modules off'] / rows['full FIX-CLIP']:.2f}x  (goal <= 2.3x)")
    emit("model", [
        {"name": "bare step, modules off", "ours": rows["modules off"], "anchor": rows["open_clip"],
         "anchor_name": "open_clip step", "unit": "samples/s", "goal": ">= 1.0"},
        {"name": "full FIX-CLIP vs modules off", "ours": rows["full FIX-CLIP"],
         "anchor": rows["modules off"], "anchor_name": "modules off", "unit": "samples/s", "goal": ">= 0.435"},
    ])


if __name__ == "__main__":
    main()
