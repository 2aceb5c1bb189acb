"""Train-step throughput of FixClip against a plain open_clip step on the same tiny backbone and batch.

Rows (samples/s, median of timed runs after warm-up, all measured in this one run):
  open_clip      open_clip CLIP + open_clip.ClipLoss + AdamW, the step of open_clip_train (decay on >= 2-D weights
                 except norms/biases/logit_scale, logit_scale clamped to log(100) after the step)
  modules off    FixClip(FixClipConfig.plain()) + FixClipLoss, same optimizer   -> ratio vs open_clip (goal >= 1.0)
  full FIX-CLIP  FixClip(FixClipConfig()) + FixClipLoss: 248-token long text, short text, masked image branch,
                 regional prompts, HFA                                          -> cost vs modules off (goal <= 2.3)
Prints figures only; speed is not asserted.  Run:  python bench/model.py [--batch 32 --runs 7 --steps 5]
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
from fixclip.base_model import TINY_CLIP_CONFIG, build_clip  # noqa: E402
from fixclip.config import FixClipConfig  # noqa: E402
from fixclip.loss import FixClipLoss  # noqa: E402
from fixclip.model import FixClip  # noqa: E402
from fixclip.text_stretch import long_tokenizer  # noqa: E402

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


def captions(n: int, words: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (words,), generator=gen)) for _ in range(n)]


def open_clip_step(model, loss_fn, optim, images, tokens):
    image, text, scale = model(images, tokens)
    loss = loss_fn(image, text, scale)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))


def fixclip_step(model, loss_fn, optim, images, long_tokens, short_tokens):
    loss = loss_fn(model(images, long_tokens, short_tokens))["loss"]
    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))


def samples_per_second(step, batch: int, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="train steps per timed run")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    base = build_clip(TINY_CLIP_CONFIG, seed=0)
    images = torch.randn(args.batch, 3, 64, 64)
    short_text = captions(args.batch, 8, seed=1)
    long_text = captions(args.batch, 120, seed=2)  # ~120 words: beyond 77 tokens, below 248
    short77 = open_clip.tokenize(short_text)
    long77, long248 = open_clip.tokenize(long_text), long_tokenizer(248)(long_text)

    plain_clip = copy.deepcopy(base).train()
    plain_optim, clip_loss = adamw(plain_clip), open_clip.ClipLoss()
    off = FixClip(copy.deepcopy(base), FixClipConfig.plain().with_(trim_text_padding=False)).train()
    off_optim, off_loss = adamw(off), FixClipLoss.from_config(off.cfg)
    full = FixClip(copy.deepcopy(base), FixClipConfig()).train()
    full_optim, full_loss = adamw(full), FixClipLoss.from_config(full.cfg)

    steps = {
        "open_clip": lambda: open_clip_step(plain_clip, clip_loss, plain_optim, images, long77),
        "modules off": lambda: fixclip_step(off, off_loss, off_optim, images, long77, None),
        "full FIX-CLIP": lambda: fixclip_step(full, full_loss, full_optim, images, long248, short77),
    }
    for step in steps.values():  # warm-up
        samples_per_second(step, args.batch, steps=3)
    # Interleave the rows run by run so drifting load on shared cores hits them alike; report medians.
    rates = {name: [] for name in steps}
    for _ in range(args.runs):
        for name, step in steps.items():
            rates[name].append(samples_per_second(step, args.batch, args.steps))
    rows = {name: statistics.median(r) for name, r in rates.items()}

    print(f"batch {args.batch}, {args.runs} runs x {args.steps} steps, {torch.get_num_threads()} threads, "
          f"tiny CLIP (64 px / 8 px patches, 4+4 layers); long captions {int(long248.argmax(-1).float().mean())} "
          f"tokens (77-token rows truncated)")
    for name, rate in rows.items():
        print(f"  {name:<14} {rate:8.1f} samples/s")
    print(f"modules off / open_clip throughput : {rows['modules off'] / rows['open_clip']:.2f}x  (goal >= 1.0x)")
    print(f"full FIX-CLIP / modules off cost   : {rows['modules off'] / rows['full FIX-CLIP']:.2f}x  (goal <= 2.3x)")


if __name__ == "__main__":
    main()
