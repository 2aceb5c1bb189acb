"""Train the tiny toy-world LLaVA captioner (architecture and tokenizer from build.py) and save it for vLLM.

    .venv-vllm/bin/python assets/tiny_llava/train.py          # writes assets/tiny_llava/model/

Data: fresh toy-world scenes every step (world seeds >= 10_000_000; seed 0 is the pipeline's training world and
1000003 the benchmark), 3-6 objects, rendered at 64 px and round-tripped through JPEG quality 95 (cv2, as
img2dataset re-encodes them), normalised like the saved CLIPImageProcessor. Each image gets one prompt of
`pipeline.toyworld.captions.PROMPTS` (uniform) and the description in that prompt's style (wording seeded per sample).

Recipe (deterministic from --seed; step counts, not wall time, decide every phase). The shipped model:

    .venv/bin/python assets/tiny_llava/train.py --vision-steps 2000 --vision-batch 32 --caption-steps 0
    .venv/bin/python assets/tiny_llava/train.py --resume-vision --caption-steps 3000 --caption-batch 16 \
        --vision-lr-scale 0.5 --aux-weight 1.0 --eval-every 500 --eval-per-prompt 2
    cp /tmp/tiny_llava_train/full.pt /tmp/tiny_llava_train/full_phase2.pt
    .venv/bin/python assets/tiny_llava/train.py --resume-vision --resume-full /tmp/tiny_llava_train/full_phase2.pt \
        --caption-steps 700 --caption-batch 16 --lr 6e-4 --warmup 50 --vision-lr-scale 0 --seed 1 --eval-every 700
    .venv-vllm/bin/python assets/tiny_llava/train.py --export-only     # save with vLLM's transformers

1. vision pre-training (2000 steps x 32 images, AdamW 2e-3, cosine): the CLIP tower alone (64 px, 8 px patches ->
   64 tokens, 96 wide, 4 layers) with per-cell heads (colour+empty, shape+empty, size+empty, fill+empty for each
   of the 9 cells, from the mean of the patch tokens whose centre lies in the cell; background from the mean of all
   tokens). The heads are discarded afterwards. Per-cell accuracy (objects and empty cells together) at the end:
   colour 0.999, shape 0.89, size 0.986, fill 0.999. Shape is the slow one: ~0.6 (chance-level on objects) for
   the first 600 steps, then a steady climb.
2. captioning (3000 steps x 16, AdamW 2e-3, cosine): the whole LLaVA (Llama 128 wide, 2 layers), loss on the
   answer tokens only, plus the per-cell loss (weight 1) so the tower keeps and sharpens its cell features (its
   shape accuracy rose to 0.98); the tower's learning rate is half the rest. The language side first learns the
   templates (token accuracy 0.78 at step 400, background right), then reads the image: greedy held-out scores at
   steps 1000/2000/3000: colour 0.31/0.88/0.97, shape 0.31/0.75/0.91.
3. polish (700 steps x 16, AdamW 6e-4, tower frozen).
The per-cell auxiliary loss and the 8 px patches are what made shape and size learnable at all (the 24 px,
one-patch-per-cell feasibility model stayed at chance); lower vision LR in phase 2 kept the tower from drifting.

Time: phase 1 20 min, phase 2 40 min, phase 3 5 min on 1 thread of a 2-core CPU shared with two other jobs
(~0.6 s per step of 32 images in phase 1, 0.65-1.2 s per step of 16 captions in phase 2). Same seed and steps
give the same weights on one machine (torch CPU kernels; fresh scenes drawn by index).

RESULTS (served by vLLM 0.32 CPU, world seed 0 scenes 0..499 as JPEG q95, temperature 0.7, top_p 0.95, prompts
cycling; `eval_served.py`), shipped model (after phase 3):
count 0.890, background 1.000, cell 0.981, colour 0.966, shape 0.904, size 0.941, fill 0.968, precision 0.978,
exact 0.540; 8.4 images/s with 16 concurrent requests (2 cores busy with other jobs), 88 completion tokens per
caption (max 121). After phase 2 only: count 0.874, cell 0.975, colour 0.955, shape 0.888, size 0.928,
fill 0.956, exact 0.49. 0.95M parameters, 3.8 MB.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build import (IMAGE_SIZE, NUM_IMAGE_TOKENS, PATCH_SIZE, REPO, build_model, build_tokenizer,  # noqa: E402
                   load_tokenizer, save)

from pipeline.toyworld.captions import (BACKGROUNDS, COLOURS, PROMPT_STYLES, PROMPTS, SHAPES, SIZES,  # noqa: E402
                                   TEXTURES, describe, score_captions)

try:
    import cv2
except ImportError:  # PIL's JPEG at the same quality is within a grey level or two
    cv2 = None

TRAIN_WORLD_BASE = 10_000_000
HELD_OUT_SEED = 0
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
GRID = 3
PATCHES = IMAGE_SIZE // PATCH_SIZE
# Patch rows/columns whose centre falls inside each cell (8 patches over 3 cells: 3 / 2 / 3).
CELL_PATCHES = [[p for p in range(PATCHES) if int((p + 0.5) * PATCH_SIZE * GRID // IMAGE_SIZE) == c]
                for c in range(GRID)]
COLOUR_IDS = {c: i for i, c in enumerate(COLOURS)}
SHAPE_IDS = {s: i for i, s in enumerate(SHAPES)}
SIZE_IDS = {s: i for i, s in enumerate(SIZES)}
FILL_IDS = {t: i for i, t in enumerate(TEXTURES)}
BG_IDS = {b: i for i, b in enumerate(BACKGROUNDS)}


def jpeg_round_trip(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB"))
    if cv2 is not None:
        ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), 95])
        assert ok
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    import io
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return np.asarray(Image.open(out).convert("RGB"))


def jpeg_bytes(image: Image.Image) -> bytes:
    rgb = np.asarray(image.convert("RGB"))
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), 95])
    return buf.tobytes()


def normalise(rgb: np.ndarray) -> np.ndarray:
    return ((rgb.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


def scene_targets(scene: dict) -> np.ndarray:
    """Per cell: colour, shape, size, fill (last class = empty); then the background in slot 9."""
    t = np.zeros((GRID * GRID + 1, 4), dtype=np.int64)
    t[:GRID * GRID] = [len(COLOURS), len(SHAPES), len(SIZES), len(TEXTURES)]
    for o in scene["objects"]:
        t[o["row"] * GRID + o["col"]] = [COLOUR_IDS[o["colour"]], SHAPE_IDS[o["shape"]], SIZE_IDS[o["size"]],
                                         FILL_IDS[o["texture"]]]
    t[GRID * GRID, 0] = BG_IDS[scene["background"]]
    return t


def sample(world: int, index: int):
    from pipeline.toyworld.scenes import make_record  # needs pandas: train in the main environment
    record = make_record(world, index, image_size=IMAGE_SIZE, grid=GRID, min_objects=3, max_objects=6,
                         textures=True)
    return normalise(jpeg_round_trip(record.image)), json.loads(record.scene_json)


class CellHeads(torch.nn.Module):
    """Per-cell classifiers on the vision tower's patch tokens (training aid only, not saved)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.heads = torch.nn.ModuleList(
            torch.nn.Linear(width, n + 1) for n in (len(COLOURS), len(SHAPES), len(SIZES), len(TEXTURES)))
        self.background = torch.nn.Linear(width, len(BACKGROUNDS))

    def forward(self, hidden: torch.Tensor):
        b, _, w = hidden.shape
        patches = self.norm(hidden[:, 1:]).reshape(b, PATCHES, PATCHES, w)
        cells = torch.stack([patches[:, CELL_PATCHES[r]][:, :, CELL_PATCHES[c]].mean((1, 2))
                             for r in range(GRID) for c in range(GRID)], 1)
        return [head(cells) for head in self.heads], self.background(self.norm(hidden).mean(1))

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor):
        logits, bg = self(hidden)
        losses = [F.cross_entropy(lg.flatten(0, 1), targets[:, :GRID * GRID, k].flatten())
                  for k, lg in enumerate(logits)]
        losses.append(F.cross_entropy(bg, targets[:, GRID * GRID, 0]))
        with torch.no_grad():
            acc = [(lg.argmax(-1) == targets[:, :GRID * GRID, k]).float().mean().item() for k, lg in enumerate(logits)]
        return sum(losses), acc


class Batches:
    """Fresh training samples: sample i of the run comes from world TRAIN_WORLD_BASE + seed, index i."""

    def __init__(self, tokenizer, seed: int):
        self.tokenizer = tokenizer
        self.world = TRAIN_WORLD_BASE + seed
        self.next_index = 0
        self.rng = np.random.default_rng(seed)
        self.image_id = tokenizer.convert_tokens_to_ids("<image>")
        self.prompt_ids = [self.encode_prompt(p) for p in PROMPTS]

    def encode_prompt(self, prompt: str) -> list[int]:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids.count(self.image_id) == 1, text
        i = ids.index(self.image_id)
        return ids[:i] + [self.image_id] * NUM_IMAGE_TOKENS + ids[i + 1:]

    def images(self, n: int):
        pix, targets, scenes = [], [], []
        for _ in range(n):
            p, scene = sample(self.world, self.next_index)
            self.next_index += 1
            pix.append(p)
            targets.append(scene_targets(scene))
            scenes.append(scene)
        return torch.from_numpy(np.stack(pix)), torch.from_numpy(np.stack(targets)), scenes

    def captions(self, n: int):
        pixels, targets, scenes = self.images(n)
        seqs, labels = [], []
        for scene in scenes:
            k = int(self.rng.integers(len(PROMPTS)))
            text = describe(scene, PROMPT_STYLES[k], seed=int(self.rng.integers(2**31)))
            answer = self.tokenizer(" " + text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            prompt = self.prompt_ids[k]
            seqs.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(map(len, seqs))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        return pixels, targets, ids, lab, mask


def vision_hidden(model, pixels):
    return model.model.vision_tower(pixel_values=pixels).last_hidden_state


def caption_loss(model, pixels, ids, labels, mask, hidden=None):
    """Same computation as LlavaForConditionalGeneration.forward (vision_feature_layer -1, CLS dropped)."""
    if hidden is None:
        hidden = vision_hidden(model, pixels)
    feats = model.model.multi_modal_projector(hidden[:, 1:])
    embeds = model.model.get_input_embeddings()(ids)
    image_mask = ids == model.config.image_token_index
    embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]).to(embeds.dtype))
    out = model.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    shift = labels[:, 1:]
    keep = shift != -100
    logits = model.lm_head(out[:, :-1][keep])
    loss = F.cross_entropy(logits, shift[keep])
    acc = (logits.argmax(-1) == shift[keep]).float().mean().item()
    return loss, acc


@torch.no_grad()
def greedy_eval(model, batches: Batches, n_per_prompt: int, max_new_tokens: int = 200):
    """Greedy captions (HF generate) of held-out world 0, scenes 0.. in order, prompts cycling."""
    model.eval()
    pairs, index = [], 0
    by_prompt = {k: [] for k in range(len(PROMPTS))}
    for i in range(n_per_prompt * len(PROMPTS)):
        by_prompt[i % len(PROMPTS)].append(i)
    for k, indices in by_prompt.items():
        data = [sample(HELD_OUT_SEED, i) for i in indices]
        pixels = torch.from_numpy(np.stack([d[0] for d in data]))
        ids = torch.tensor([batches.prompt_ids[k]] * len(data))
        out = model.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=batches.tokenizer.eos_token_id, pad_token_id=batches.tokenizer.pad_token_id)
        texts = batches.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        pairs += [(t.strip(), d[1]) for t, d in zip(texts, data)]
        index += len(data)
    model.train()
    return score_captions(pairs), pairs


def lr_at(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * 0.95 + 0.05


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vision-steps", type=int, default=3000)
    ap.add_argument("--vision-batch", type=int, default=64)
    ap.add_argument("--vision-lr", type=float, default=2e-3)
    ap.add_argument("--caption-steps", type=int, default=3000)
    ap.add_argument("--caption-batch", type=int, default=24)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--vision-lr-scale", type=float, default=0.25)
    ap.add_argument("--aux-weight", type=float, default=0.5)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--eval-per-prompt", type=int, default=4)
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/tiny_llava_train"))
    ap.add_argument("--resume-vision", action="store_true", help="load the phase-1 tower from --checkpoint")
    ap.add_argument("--resume-full", type=Path, default=None,
                    help="phase 3: start captioning from this full state dict (with --resume-vision)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--export-only", action="store_true",
                    help="save --checkpoint's full.pt with this environment's transformers (use the vLLM one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.checkpoint.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    tokenizer_file = args.checkpoint / "tokenizer.json"
    if args.export_only or args.resume_vision and tokenizer_file.exists():
        tokenizer = load_tokenizer(tokenizer_file)  # the exact token ids training used
    else:
        tokenizer = build_tokenizer()
        tokenizer.backend_tokenizer.save(str(tokenizer_file))
    model = build_model(tokenizer, seed=args.seed).train()
    if args.export_only:
        model.load_state_dict(torch.load(args.checkpoint / "full.pt"))
        print(json.dumps(save(model, tokenizer, args.out)))
        return
    heads = CellHeads(model.config.vision_config.hidden_size)
    batches = Batches(tokenizer, args.seed)
    print(json.dumps({"vocab": len(tokenizer), "params": sum(p.numel() for p in model.parameters()),
                      "prompt_tokens": [len(p) for p in batches.prompt_ids]}), flush=True)

    # Phase 1: the vision tower alone on per-cell classification.
    vision_ckpt = args.checkpoint / "vision.pt"
    if args.resume_vision and vision_ckpt.exists():
        state = torch.load(vision_ckpt)
        model.model.vision_tower.load_state_dict(state["tower"])
        heads.load_state_dict(state["heads"])
        batches.next_index = state["next_index"]
        print(f"resumed vision tower from {vision_ckpt}", flush=True)
    else:
        params = list(model.model.vision_tower.parameters()) + list(heads.parameters())
        opt = torch.optim.AdamW(params, lr=args.vision_lr, weight_decay=0.01)
        accs = []
        for step in range(args.vision_steps):
            for g in opt.param_groups:
                g["lr"] = args.vision_lr * lr_at(step, args.vision_steps, 200)
            pixels, targets, _ = batches.images(args.vision_batch)
            loss, acc = heads.loss(vision_hidden(model, pixels), targets)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            accs.append(acc)
            if (step + 1) % 100 == 0:
                a = np.mean(accs[-100:], 0)
                print(f"vision {step + 1} loss {loss.item():.3f} cell acc colour {a[0]:.3f} shape {a[1]:.3f} "
                      f"size {a[2]:.3f} fill {a[3]:.3f} t {time.time() - t0:.0f}s", flush=True)
            if (step + 1) % 250 == 0:
                torch.save({"tower": model.model.vision_tower.state_dict(), "heads": heads.state_dict(),
                            "next_index": batches.next_index}, vision_ckpt)
        torch.save({"tower": model.model.vision_tower.state_dict(), "heads": heads.state_dict(),
                    "next_index": batches.next_index}, vision_ckpt)

    # Phase 2: captioning, answer-only loss, plus the per-cell loss on the tower.
    if args.resume_full:
        model.load_state_dict(torch.load(args.resume_full))
        print(f"resumed the whole model from {args.resume_full}", flush=True)
    vision_params = list(model.model.vision_tower.parameters()) + list(heads.parameters())
    vision_ids = {id(p) for p in vision_params}
    other = [p for p in model.parameters() if id(p) not in vision_ids]
    frozen = args.vision_lr_scale == 0
    groups = [{"params": other, "scale": 1.0}]
    if frozen:  # the tower stays as phase 1 left it: no backward through it, no per-cell loss
        for p in vision_params:
            p.requires_grad_(False)
    else:
        groups.append({"params": vision_params, "scale": args.vision_lr_scale})
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01)
    hist = []
    for step in range(args.caption_steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * g["scale"] * lr_at(step, args.caption_steps, args.warmup)
        pixels, targets, ids, labels, mask = batches.captions(args.caption_batch)
        with torch.set_grad_enabled(not frozen):
            hidden = vision_hidden(model, pixels)
            aux_loss, cell_acc = heads.loss(hidden, targets)
        lm_loss, tok_acc = caption_loss(model, pixels, ids, labels, mask, hidden)
        loss = lm_loss + (0 if frozen else args.aux_weight * aux_loss)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(heads.parameters()), 1.0)
        opt.step()
        hist.append([lm_loss.item(), tok_acc] + cell_acc)
        if (step + 1) % 50 == 0:
            h = np.mean(hist[-50:], 0)
            print(f"caption {step + 1} lm {h[0]:.4f} tok acc {h[1]:.4f} cell acc {np.round(h[2:], 3).tolist()} "
                  f"len {ids.shape[1]} t {time.time() - t0:.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.caption_steps:
            scores, pairs = greedy_eval(model, batches, args.eval_per_prompt)
            print("eval", json.dumps({k: round(v, 3) for k, v in scores.items()}), flush=True)
            print("sample:", pairs[0][0], flush=True)
            torch.save(model.state_dict(), args.checkpoint / "full.pt")
            print(json.dumps(save(model, tokenizer, args.out)), flush=True)
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
