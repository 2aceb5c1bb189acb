"""The diffusion comparison itself, for a GPU machine: a small UNet learns to draw toy-world scenes from a text
encoder's token states, and a perception model reads back what it drew (docs/export.md, "Diffusion past token 77").

    python -m fixclip.toy_diffusion --device cuda --steps 20000 [--encoder NAME=MODEL_FOLDER ...] [--out DIR]

For each encoder (default: the base CLIP and models/fixclip) a ``UNet2DConditionModel`` (diffusers) is trained from
scratch in pixel space at 32 px on the run's training images and their ground-truth descriptions (data/urls.parquet,
data/toyworld), cross-attending to the frozen encoder's ``token_states``; then it draws the held-out test scenes of
the toy benchmark (data/toy_benchmark/retrieval.jsonl) with DDIM. A perception model (a small CNN trained on the
training renders; its accuracy on the real test renders is reported per attribute) names each cell of each drawing;
the score is, per object, colour and shape right in its cell, split by whether the object's mention starts before or
after token 77 (as ``fixclip.cross_attention_probe``). Writes results.json and samples.png (rows: the real render,
then each encoder's drawing of the same description). Too slow for a CPU (docs/export.md, "The diffusion
comparison, on a GPU"): the CPU default is ``fixclip.cross_attention_probe``; the test suite runs this
script for a few steps (a smoke run).
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from torch import nn
from tqdm import tqdm

from .cross_attention_probe import CELLS, SHAPES, by_mention, colour_of, encode, mention_tokens, shape_of, target
from .model_folder import load_base, load_model_folder

SIDE = 32
CLASSES = 1 + 8 * len(SHAPES)


def images(paths: list[Path]) -> torch.Tensor:
    """[N, 3, 32, 32] in [-1, 1]."""
    rows = [np.asarray(Image.open(p).convert("RGB").resize((SIDE, SIDE), Image.BILINEAR)) for p in paths]
    return torch.from_numpy(np.stack(rows)).permute(0, 3, 1, 2).float() / 127.5 - 1


class Perception(nn.Module):
    """A small CNN naming each of the 9 cells of a 32 px toy render (empty, or colour and shape)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 64, 3, padding=1),
                                  nn.GELU(), nn.AdaptiveAvgPool2d(3), nn.Conv2d(64, 128, 1), nn.GELU(),
                                  nn.Conv2d(128, CLASSES, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(2).transpose(1, 2)  # [N, 9, classes], cells in raster order


def train_perception(pixels, targets, steps: int, device, seed: int) -> Perception:
    torch.manual_seed(seed)
    model = Perception().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="perception", unit="step"):
        batch = torch.randint(len(pixels), (128,), generator=generator)
        loss = F.cross_entropy(model(pixels[batch].to(device)).flatten(0, 1), targets[batch].to(device).flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def per_attribute(predicted: torch.Tensor, targets: torch.Tensor) -> dict:
    """Accuracy (%) on objects' colour and shape in their cells, and on empty cells."""
    objects, named = targets > 0, predicted > 0
    return {"colour": 100 * float(((colour_of(predicted) == colour_of(targets)) & named)[objects].float().mean()),
            "shape": 100 * float(((shape_of(predicted) == shape_of(targets)) & named)[objects].float().mean()),
            "empty": 100 * float((predicted == 0)[~objects].float().mean())}


def unet(width: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(sample_size=SIDE, in_channels=3, out_channels=3, layers_per_block=2,
                                block_out_channels=(64, 128, 128), attention_head_dim=8, cross_attention_dim=width,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


def train_unet(pixels, states, padding, steps: int, batch_size: int, device, seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    model = unet(states.shape[-1]).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    generator = torch.Generator().manual_seed(seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for _ in tqdm(range(steps), desc="unet", unit="step"):
        batch = torch.randint(len(pixels), (batch_size,), generator=generator)
        clean = pixels[batch].to(device)
        noise = torch.randn(clean.shape, generator=generator).to(device)
        t = torch.randint(0, 1000, (batch_size,), generator=generator).to(device)
        with autocast:
            predicted = model(scheduler.add_noise(clean, noise, t), t, encoder_hidden_states=states[batch].to(device),
                              encoder_attention_mask=(~padding[batch]).to(device)).sample
        loss = F.mse_loss(predicted.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.inference_mode()
def draw(model: UNet2DConditionModel, states, padding, sample_steps: int, device, seed: int) -> torch.Tensor:
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
    scheduler.set_timesteps(sample_steps)
    generator = torch.Generator().manual_seed(seed)
    drawn = []
    for start in range(0, len(states), 64):
        cond, mask = states[start:start + 64].to(device), (~padding[start:start + 64]).to(device)
        x = torch.randn((len(cond), 3, SIDE, SIDE), generator=generator).to(device)
        for t in scheduler.timesteps:
            noise = model(x, t, encoder_hidden_states=cond, encoder_attention_mask=mask).sample
            x = scheduler.step(noise, t, x).prev_sample
        drawn.append(x.clamp(-1, 1).cpu())
    return torch.cat(drawn)


def grid(rows: list[torch.Tensor], path: Path, scale: int = 3) -> None:
    """A PNG with one row per tensor of images in [-1, 1]."""
    tiles = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)
    array = ((tiles.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST).save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fixclip.toy_diffusion", description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", action="append", default=None,
                        help="NAME=MODEL_FOLDER (repeat); default: the base CLIP and models/fixclip")
    parser.add_argument("--out", type=Path, default=Path("build/toy_diffusion"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20000, help="UNet training steps per encoder")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--perception-steps", type=int, default=3000)
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps per drawing")
    parser.add_argument("--test-scenes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start, device = time.perf_counter(), torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    frame = pd.read_parquet("data/urls.parquet", columns=["uid", "long_description", "scene"])
    train_pixels = images([Path("data/toyworld") / f"{uid}.png" for uid in frame["uid"]])
    train_targets = torch.tensor([target(json.loads(s)) for s in frame["scene"]])
    test = [json.loads(line) for line in Path("data/toy_benchmark/retrieval.jsonl").read_text().splitlines()]
    test = test[:args.test_scenes]
    test_scenes = [json.loads(t["scene"]) for t in test]
    test_targets = torch.tensor([target(s) for s in test_scenes])
    real = images([Path("data/toy_benchmark") / t["image"] for t in test])

    perception = train_perception(train_pixels, train_targets, args.perception_steps, device, args.seed)
    with torch.inference_mode():
        results = {"perception_on_real_test_renders": per_attribute(
            perception(real.to(device)).argmax(-1).cpu(), test_targets), "encoders": {}}
    named = dict(e.split("=", 1) for e in args.encoder) if args.encoder else {
        "base CLIP (77 tokens)": "assets/base_clip", "FIX-CLIP": "models/fixclip"}
    rows = [real[:8]]
    for name, folder in named.items():
        model = (load_base(Path(folder) / "model.json", Path(folder) / "weights.pt")
                 if not (Path(folder) / "fixclip.json").is_file() else load_model_folder(folder)).eval()
        states, padding = encode(model, frame["long_description"].tolist())
        test_states, test_padding = encode(model, [t["long_caption"] for t in test])
        starts = torch.tensor([mention_tokens(t["long_caption"], s, model.tokenizer())
                               for t, s in zip(test, test_scenes)])
        drawer = train_unet(train_pixels, states, padding, args.steps, args.batch_size, device, args.seed)
        drawn = draw(drawer, test_states, test_padding, args.sample_steps, device, args.seed)
        with torch.inference_mode():
            read = perception(drawn.to(device)).argmax(-1).cpu()
        results["encoders"][name] = {"folder": folder,
                                     **by_mention(read == test_targets, test_targets, starts, "colour_shape")}
        rows.append(drawn[:8])
    grid(rows, args.out / "samples.png")
    results.update(steps=args.steps, batch_size=args.batch_size, device=str(device),
                   seconds=round(time.perf_counter() - start, 1), cells=CELLS)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
