"""Memory plan for real sizes: parameters, training state, activations per sample and the largest batch per GPU, for
FIX-CLIP with every module on (the paper profile's settings) at 248 tokens on ViT-B/16 and ViT-L/14.

Measured on CPU: the parameter count, and the bytes of every tensor autograd saves for the backward pass of one
training forward (long text <-> image, short text <-> masked image, regional prompts, HFA) under bf16 autocast, at
two batch sizes; activations per sample is the slope (storages shared between saved tensors count once). Derived:
training state = 16 bytes per parameter (fp32 weights, fp32 gradients, AdamW's two fp32 moments) and the largest
batch = (usable memory - training state - batch-independent activations) / activations per sample. Not a speed bench
(no anchor, not in `python -m bench`); the table is what docs/scale.md quotes. On GPUs the fused attention kernels
keep no attention matrix, so the CPU count (whose attention saves its probabilities) is an upper bound there.

    python bench/memory_plan.py [--gpu-gib 80 --usable 0.9 --batches 1 2]
"""
import argparse
import sys
from pathlib import Path

import open_clip
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository root, when run as a script
from fixclip.base_model import build_clip  # noqa: E402
from fixclip.config import FixClipConfig  # noqa: E402
from fixclip.loss import FixClipLoss  # noqa: E402
from fixclip.model import FixClip  # noqa: E402

STATE_BYTES_PER_PARAMETER = 16  # fp32 weight + fp32 gradient + AdamW's exp_avg and exp_avg_sq (fp32)
LONG_TEXT = " ".join(["a large red circle in the top left cell beside a small striped blue square ,"] * 12)


def saved_bytes(model: FixClip, loss_fn, batch: int) -> int:
    """Bytes of the distinct storages autograd saves for backward in one bf16-autocast training forward."""
    size = model.clip.visual.image_size
    images = torch.randn(batch, 3, *((size,) * 2 if isinstance(size, int) else size))
    long_tokens = model.tokenizer()([LONG_TEXT] * batch)
    short_tokens = open_clip.tokenize(["a red circle"] * batch)
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        loss_fn(model(images, long_tokens, short_tokens))["loss"]
    return sum(storages.values())


def plan(name: str, cfg: FixClipConfig, batches: tuple[int, int], usable_bytes: float) -> dict:
    model = FixClip(build_clip(name, seed=0), cfg).train()
    loss_fn = FixClipLoss.from_config(cfg)
    parameters = sum(p.numel() for p in model.parameters())
    small, large = (saved_bytes(model, loss_fn, b) for b in batches)
    per_sample = (large - small) / (batches[1] - batches[0])
    state = STATE_BYTES_PER_PARAMETER * parameters
    fixed = small - per_sample * batches[0]
    return {"model": name, "parameters_M": parameters / 1e6, "training_state_GiB": state / 2**30,
            "activations_per_sample_MiB": per_sample / 2**20, "fixed_activations_MiB": fixed / 2**20,
            "largest_batch": int((usable_bytes - state - fixed) // per_sample)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-gib", type=float, default=80.0)
    parser.add_argument("--usable", type=float, default=0.9, help="share of GPU memory the run may fill")
    parser.add_argument("--batches", type=int, nargs=2, default=[1, 2], help="the two batch sizes measured")
    parser.add_argument("--models", nargs="+", default=["ViT-B-16", "ViT-L-14"])
    args = parser.parse_args()
    torch.manual_seed(0)
    paper = yaml.safe_load((REPO / "configs/paper-30m.yaml").read_text())["train"]["fixclip"]
    cfg = FixClipConfig.model_validate(paper)
    usable = args.gpu_gib * 2**30 * args.usable
    print(f"| model | parameters (measured) | training state, fp32 + AdamW (derived) | activations per sample, bf16 "
          f"(measured on CPU) | batch-independent activations (measured) | largest batch per {args.gpu_gib:g} GiB "
          f"at {args.usable:.0%} (derived) |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        row = plan(name, cfg, tuple(args.batches), usable)
        print(f"| {row['model']} | {row['parameters_M']:.1f} M | {row['training_state_GiB']:.2f} GiB | "
              f"{row['activations_per_sample_MiB']:.0f} MiB | {row['fixed_activations_MiB']:.0f} MiB | "
              f"{row['largest_batch']} |", flush=True)


if __name__ == "__main__":
    main()
