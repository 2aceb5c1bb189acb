"""Build the tiny, seeded, random-weight base CLIP the embedded default starts from (until a trained one exists).

Writes model.json (open_clip model config) and weights.pt (state_dict, fp16 to stay small; loads with
weights_only=True). Run from the repository root:  python assets/base_clip/build.py
"""
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, when run as a script without an installed package
from fixclip.base_model import TINY_CLIP_CONFIG, build_clip, save_weights  # noqa: E402

SEED = 0


def main() -> None:
    clip = build_clip(TINY_CLIP_CONFIG, seed=SEED)
    (HERE / "model.json").write_text(json.dumps(TINY_CLIP_CONFIG, indent=2) + "\n")
    save_weights(clip, HERE / "weights.pt", dtype=torch.float16)
    size = (HERE / "weights.pt").stat().st_size
    print(f"wrote {HERE / 'model.json'} and {HERE / 'weights.pt'} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
