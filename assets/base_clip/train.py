"""Train the tiny base CLIP (context 77) that the pipeline's default fine-tunes: "a pretrained CLIP" for the toy world.

It plays the part of a web-trained CLIP: it sees what short captions talk about (colour, shape, size, fill, place),
it knows short texts (partial alt texts, and complete descriptions of one- and two-object scenes), and it has never
read a long description (77 tokens; text positions past the longest short text never receive a gradient, much as
OpenAI CLIP's late positions are under-trained), so it is poor at long text.

Run from the repository root (offline, CPU, one thread):  .venv/bin/python assets/base_clip/train.py
Writes, next to this file: model.json (the open_clip config, unchanged architecture), weights.pt (state_dict, fp16
floats; loads with torch.load(weights_only=True) / open_clip.load_checkpoint) and scores.json (toy scores of the
written fp16 weights). Uses open_clip and pipeline.toyworld.scenes only (not the fixclip package).

Why two phases. Trained contrastively from scratch on alt texts (the recipe before 2026-12-02), this 4-layer tower
never learned shape in 1700 steps of 128: zero-shot shape 15-18% against 16.7% chance, colour 100%; a 6 + 6-layer
retrain with twin scenes did no better (17.3%). A web-trained CLIP's image tower has seen far more images than we
can afford here, so we give ours its perception the way LiT does (Zhai et al., "LiT: Zero-Shot Transfer with
Locked-image text Tuning", CVPR 2022): a supervised image tower, then a text tower tuned against it, locked.
- phase 1, the image tower alone (SceneHeads): a linear head on each 3 x 3 cell's mean patch token names the
  object's colour, shape, size and fill (or "empty"; cross-entropy), and a linear head on the image embedding names
  the scene's colour-shape kinds, colours and shapes (multi-label binary cross-entropy); P1_STEPS steps of
  P1_BATCH. The heads are thrown away.
- phase 2, LiT: the image tower is locked (its embeddings are computed once), the text tower and the logit scale
  learn open_clip.ClipLoss against it, P2_STEPS steps of P2_BATCH.

Recipe (seeded, one CPU thread, torch.use_deterministic_algorithms; a second run to confirm identical weights has not
been made since the two-phase recipe):
- model: open_clip.model.CLIP(**model.json): 64 px images, 8 px patches, ViT width 64 x 4 layers, text width 32 x 4
  layers, embed 64, context 77, the standard 49408-token BPE vocab (open_clip.get_tokenizer default); open_clip init.
- data: a pool of POOL_MULTI scenes with 3-6 objects (world seed 20_000_000) and POOL_FEW scenes with 1-2 objects
  (world seed 20_000_001), rendered once as pipeline.toyworld.scenes.make_record does. Half the pool (even indices) is
  rendered at 64 px directly, the other half at 96 px and downscaled to 64 px with cv2 INTER_AREA, as img2dataset
  does to a world rendered larger than download.image_size (the default renders at 64 px, so img2dataset only re-encodes); every image then goes
  through the JPEG quality 95 round trip of img2dataset (cv2). Preprocessing = open_clip.image_transform(64,
  is_train=False) (identity resize/crop at 64 px, OpenAI mean/std), applied directly to the uint8 tensors.
- text (phase 2): a fresh text per image and epoch, drawn with an rng seeded by (SEED, epoch, index): for a 1-2
  object scene, with probability COMPLETE_RATE its complete description (pipeline.toyworld.scenes.long_description,
  under 77 tokens); otherwise an alt text (pipeline.toyworld.scenes.alt_text), with probability PREFIX_RATE wrapped
  in a web-style prefix/suffix from WEB_WRAPS ("a photo of a ...", "clip art: ...", ...). The text tower runs on
  the batch's tokens trimmed after its last end-of-text token, which is exact under the causal mask.
- optimiser (both phases): AdamW (betas 0.9/0.98, eps 1e-6, weight decay WD on matrices only; embeddings, gains,
  biases and the logit scale undecayed), WARMUP linear warm-up steps then cosine to 0; the logit scale starts at
  ln(1/0.07) and is clamped at ln(100).

Evaluation (held-out world seed 1000003, scores of the saved fp16 weights, open_clip.image_transform(64, False)):
(a) short-text retrieval, scenes 0..499 (3-6 objects) with their alt texts, R@1 both ways (identical texts
deduplicated: a hit is a top text / top image whose alt text string equals the query's own);
(b) short scenes: 500 one- or two-object scenes (indices from 2_000_000) against their complete descriptions;
(c) long-text retrieval of the multi-object images against their long descriptions (truncated to 77 tokens);
(d) zero-shot top-1 on single-object scenes 500..979 over the 48 "<colour> <shape>" classes, templates
"a photo of a {c}.", "a {c}.", "a drawing of a {c}." (mean of normalised template embeddings), and by colour alone
(8 classes) and shape alone (6), each ensembled over the other attribute's values as the evaluate stage does.
Reported for benchmark images rendered at 64 px and at 96 px (the pipeline's default, resized to 64 by the
transform); chance levels alongside. The evaluate stage's toy benchmark gives the pipeline's numbers.

Run that wrote the committed weights (torch 2.14.1, open_clip 3.3.0, one thread on a 2-core CPU shared with a test
run): render 0.7 min (40,000 images), phase 1 6.4 min (6000 steps of 32 = 4.8 passes; held-out single objects by the
bag head: shape 0.18 at step 500, 0.62 at 2000, 0.91 at 3000, 0.98 at 6000; colour 1.00 from step 1500), phase 2
11.8 min (3000 steps of 256 = 19 passes; final batch loss ~2.1 vs ln 256 = 5.5 at chance), 19.6 min in all;
weights.pt 3.75 MB. Scores (scores.json), R@1 / top-1, chance in brackets:

                                           64 px benchmark   96 px benchmark
  short alt text, image -> text (452 uniq)  0.234 (0.002)     0.254 (0.002)
  short alt text, text -> image             0.197 (0.002)     0.206 (0.002)
  short scenes, image -> text (complete)    0.566 (0.002)     0.578 (0.002)
  short scenes, text -> image               0.596 (0.002)     0.612 (0.002)
  long text, image -> text (77 tokens)      0.400 (0.002)     0.388 (0.002)
  long text, text -> image                  0.320 (0.002)     0.340 (0.002)
  zero-shot, 48 classes, 3 templates        0.929 (0.021)     0.967 (0.021)
  zero-shot, colour (8 classes)             0.998 (0.125)     0.998 (0.125)
  zero-shot, shape (6 classes)              0.933 (0.167)     0.971 (0.167)
  (48 classes with the bare class name 0.923 / 0.969; with an unseen template "a rendering of a {c}." 0.931 / 0.967)
Alt texts are partial, so many of the 500 scenes fit a given one; long descriptions of 3-6 objects here differ
within 77 tokens, unlike the evaluate stage's twins, which are equal in their first 77 tokens.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for pipeline.toyworld.scenes when run as a script
from pipeline.toyworld.scenes import (BACKGROUNDS, COLOURS, SHAPES, SIZES, TEXTURES, alt_text,  # noqa: E402
                                      long_description, make_record, sample_scene,
                                      scene_record)

SEED = 0
TRAIN_WORLD_MULTI, TRAIN_WORLD_FEW = 20_000_000, 20_000_001  # >= 20_000_000: never the pipeline's worlds
HELD_OUT_WORLD = 1_000_003
POOL_MULTI, POOL_FEW = 32_000, 8_000
P1_STEPS, P1_BATCH, P1_LR = 6000, 32, 2e-3  # phase 1: the image tower, supervised by the scene
P2_STEPS, P2_BATCH, P2_LR = 3000, 256, 1e-3  # phase 2: the text tower against the locked image tower (LiT)
WD, WARMUP = 0.1, 100
PREFIX_RATE, COMPLETE_RATE = 0.25, 0.5
WEB_WRAPS = ("a photo of a {}.", "a picture of a {}.", "an image of a {}", "a drawing of a {}.", "illustration of a {}",
             "clip art: {}", "{}.", "a {}.")
JPEG_QUALITY = 95
WORLD = dict(grid=3, textures=True)
TEMPLATES = ("a photo of a {c}.", "a {c}.", "a drawing of a {c}.")
CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 4, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4, "mlp_ratio": 4.0},
}


# ----------------------------------------------------------------------------------------------------------- data
def jpeg_round_trip(rgb: np.ndarray) -> np.ndarray:
    """img2dataset's re-encoding: cv2 (BGR) JPEG at quality 95, decoded back to RGB."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def object_range(few: bool) -> tuple[int, int]:
    return (1, 2) if few else (3, 6)


def render_train_image(scene, seed: int, index: int) -> np.ndarray:
    """Scene `index` of world `seed` as img2dataset would store it (pipeline.toyworld.scenes.scene_record renders it
    as make_record does)."""
    if index % 2 == 0:
        rgb = np.asarray(scene_record(scene, seed, index, image_size=64).image)
    else:  # the pipeline default: rendered at 96 px, img2dataset "border" resize to 64 px (cv2 INTER_AREA)
        rgb = np.asarray(scene_record(scene, seed, index, image_size=96).image)
        rgb = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA)
    return jpeg_round_trip(np.ascontiguousarray(rgb))


def build_pool(n_multi: int, n_few: int):
    """uint8 images [N, 64, 64, 3] and their scenes: 3-6-object scenes first, then 1-2-object ones."""
    entries = [(TRAIN_WORLD_MULTI, i, False) for i in range(n_multi)]
    entries += [(TRAIN_WORLD_FEW, i, True) for i in range(n_few)]
    images = np.empty((len(entries), 64, 64, 3), dtype=np.uint8)
    scenes = []
    t0 = time.time()
    for k, (seed, index, few) in enumerate(entries):
        lo, hi = object_range(few)
        scenes.append(sample_scene(seed, index, WORLD["grid"], lo, hi, WORLD["textures"]))
        images[k] = render_train_image(scenes[-1], seed, index)
        if (k + 1) % 10_000 == 0:
            print(f"  rendered {k + 1}/{len(entries)} ({time.time() - t0:.0f} s)", flush=True)
    return images, scenes


class TextSampler:
    """Fresh text per (epoch, index): a 1-2-object scene's complete description or an alt text, sometimes wrapped
    web-style; tokenised once per distinct string."""

    def __init__(self, scenes, tokenizer):
        self.scenes, self.tokenizer, self.cache = scenes, tokenizer, {}

    def text(self, epoch: int, index: int) -> str:
        rng = np.random.default_rng([SEED, 2, epoch, index])
        scene = self.scenes[index]
        if len(scene.objects) <= 2 and rng.random() < COMPLETE_RATE:
            return long_description(scene)
        text = alt_text(scene, rng)
        if rng.random() < PREFIX_RATE:
            text = WEB_WRAPS[int(rng.integers(len(WEB_WRAPS)))].format(text)
        return text

    def tokens(self, epoch: int, indices: np.ndarray) -> torch.Tensor:
        rows = []
        for i in indices:
            t = self.text(epoch, int(i))
            if t not in self.cache:
                self.cache[t] = self.tokenizer([t])[0]
            rows.append(self.cache[t])
        return torch.stack(rows)


MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)


def to_input(images_uint8: np.ndarray) -> torch.Tensor:
    """What image_transform(64, is_train=False) gives for 64 px images: ToTensor then OpenAI normalisation."""
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div_(255)
    return (x - MEAN) / STD


def encode_text_trimmed(model, text: torch.Tensor) -> torch.Tensor:
    """model.encode_text on tokens cut after the batch's last end-of-text token (exact under the causal mask)."""
    eot = text.argmax(dim=-1)
    n = int(eot.max()) + 1
    text = text[:, :n]
    x = model.token_embedding(text) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), eot] @ model.text_projection


# ------------------------------------------------------------------------------------------------ scene targets
CELLS = 9  # the 3 x 3 grid of WORLD
ATTRIBUTES = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES), "texture": list(TEXTURES)}
PER_CELL = sum(len(v) + 1 for v in ATTRIBUTES.values())  # each attribute's values, plus "empty cell"
KINDS = [f"{c} {s}" for c in COLOURS for s in SHAPES]
BAG = len(KINDS) + len(COLOURS) + len(SHAPES)  # which colour-shape kinds, colours and shapes the scene holds


def scene_targets(scene) -> np.ndarray:
    """[CELLS * len(ATTRIBUTES) + BAG]: per cell (raster order) each attribute's value + 1 (0 = empty cell), then the
    scene's bag of kinds, colours and shapes as 0/1."""
    cells = np.zeros((CELLS, len(ATTRIBUTES)), dtype=np.int64)
    bag = np.zeros(BAG, dtype=np.int64)
    colours, shapes = list(COLOURS), list(SHAPES)
    for obj in scene.objects:
        cells[obj.row * WORLD["grid"] + obj.col] = [values.index(getattr(obj, name)) + 1
                                                    for name, values in ATTRIBUTES.items()]
        bag[[KINDS.index(f"{obj.colour} {obj.shape}"), len(KINDS) + colours.index(obj.colour),
             len(KINDS) + len(colours) + shapes.index(obj.shape)]] = 1
    return np.concatenate([cells.reshape(-1), bag])


class SceneHeads(torch.nn.Module):
    """Phase 1's supervision, thrown away afterwards: a per-cell head on the patch tokens of each cell (each patch
    counted in the cell that holds its centre) names the object there, and a bag head on the image embedding
    names the kinds, colours and shapes in the scene. The cell head teaches the tower to see; the bag head makes
    its embedding carry what it saw (a global 64-d embedding does not learn per-cell answers on its own: tried,
    0.000 held-out object accuracy after 2500 steps)."""

    def __init__(self, width: int, embed_dim: int, image_size: int, patch_size: int):
        super().__init__()
        self.cell = torch.nn.Linear(width, PER_CELL)
        self.bag = torch.nn.Linear(embed_dim, BAG)
        per_side = image_size // patch_size
        cell_of = ((torch.arange(per_side) + 0.5) * patch_size * WORLD["grid"] // image_size).long()
        patch_cell = (cell_of[:, None] * WORLD["grid"] + cell_of[None, :]).reshape(-1)  # raster order of patches
        assign = F.one_hot(patch_cell, CELLS).float()
        self.register_buffer("assign", assign / assign.sum(dim=0), persistent=False)  # [patches, cells], means

    def forward(self, pooled: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cell(torch.einsum("bpd,pc->bcd", tokens, self.assign)), self.bag(pooled)


def scene_loss(cell_logits: torch.Tensor, bag_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the cells' attributes, plus the bag's binary cross-entropy."""
    cell_targets = targets[:, :CELLS * len(ATTRIBUTES)].reshape(-1, CELLS, len(ATTRIBUTES))
    losses, start = [], 0
    for k, values in enumerate(ATTRIBUTES.values()):
        n = len(values) + 1
        losses.append(F.cross_entropy(cell_logits[..., start:start + n].reshape(-1, n),
                                      cell_targets[..., k].reshape(-1)))
        start += n
    bag = F.binary_cross_entropy_with_logits(bag_logits, targets[:, CELLS * len(ATTRIBUTES):].float())
    return torch.stack(losses).mean() + bag


@torch.no_grad()
def single_object_accuracy(model, heads, images: np.ndarray, targets: np.ndarray) -> dict:
    """On single-object scenes, the bag head's top colour, shape and kind: what zero-shot will ask of the embedding."""
    logits = torch.cat([heads(*model.visual(to_input(images[i:i + 250])))[1] for i in range(0, len(images), 250)])
    truth = torch.from_numpy(targets[:, CELLS * len(ATTRIBUTES):])
    k, c = len(KINDS), len(COLOURS)
    spans = {"kind": (0, k), "colour": (k, k + c), "shape": (k + c, BAG)}
    return {name: round((logits[:, a:b].argmax(1) == truth[:, a:b].argmax(1)).float().mean().item(), 4)
            for name, (a, b) in spans.items()}


# ---------------------------------------------------------------------------------------------------------- train
def adamw(named_parameters, lr: float) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in named_parameters:
        is_matrix = p.ndim >= 2 and "embedding" not in name and "ln" not in name
        (decay if is_matrix else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


def set_lr(opt, peak: float, step: int, steps: int) -> float:
    lr = peak * (step + 1) / WARMUP if step < WARMUP else \
        0.5 * peak * (1 + math.cos(math.pi * (step - WARMUP) / max(1, steps - WARMUP)))
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


class Batches:
    """Seeded epochs over the pool: (epoch, sorted indices) for each step."""

    def __init__(self, n: int, batch: int, stream: int):
        self.n, self.batch, self.rng = n, batch, np.random.default_rng([SEED, stream])
        self.per_epoch, self.epoch, self.order = n // batch, -1, None

    def __call__(self, step: int) -> tuple[int, np.ndarray]:
        k = step % self.per_epoch
        if k == 0:
            self.epoch += 1
            self.order = self.rng.permutation(self.n)
        return self.epoch, np.sort(self.order[k * self.batch:(k + 1) * self.batch])


def train_image_tower(model, images, targets, held_out, steps: int, batch: int, log_every: int = 500) -> dict:
    """Phase 1: the image tower and the scene heads, on what is in each cell and in the scene."""
    v = CONFIG["vision_cfg"]
    heads = SceneHeads(v["width"], CONFIG["embed_dim"], v["image_size"], v["patch_size"])
    params = list(model.visual.named_parameters()) + [("heads." + n, p) for n, p in heads.named_parameters()]
    opt = adamw(params, P1_LR)
    batches = Batches(len(images), batch, stream=1)
    model.visual.output_tokens = True
    t0, history = time.time(), []
    model.train()
    for step in range(steps):
        _, idx = batches(step)
        lr = set_lr(opt, P1_LR, step, steps)
        loss = scene_loss(*heads(*model.visual(to_input(images[idx]))), torch.from_numpy(targets[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % log_every == 0 or step == steps - 1:
            model.eval()
            acc = single_object_accuracy(model, heads, *held_out)
            model.train()
            el = time.time() - t0
            print(f"  phase 1 step {step + 1:5d}/{steps} loss {loss.item():.4f} lr {lr:.2e} held-out single objects: "
                  f"colour {acc['colour']:.3f} shape {acc['shape']:.3f} kind {acc['kind']:.3f} {el:.0f} s", flush=True)
            history.append({"step": step + 1, "loss": round(loss.item(), 4), "held_out_single_objects": acc,
                            "seconds": round(el, 1)})
    model.visual.output_tokens = False
    return {"seconds": time.time() - t0, "epochs_seen": round(steps * batch / len(images), 2), "history": history}


def train_text_tower(model, images, sampler, steps: int, batch: int, log_every: int = 250) -> dict:
    """Phase 2 (LiT): the image tower locked, its embeddings computed once; the text tower and the logit scale
    learn the contrastive loss against them."""
    model.eval()
    for p in model.visual.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        image_features = torch.cat([F.normalize(model.encode_image(to_input(images[i:i + 500])), dim=-1)
                                    for i in range(0, len(images), 500)])
    opt = adamw([(n, p) for n, p in model.named_parameters() if p.requires_grad], P2_LR)
    loss_fn = open_clip.ClipLoss()
    batches = Batches(len(images), batch, stream=3)
    t0, history = time.time(), []
    model.train()
    for step in range(steps):
        epoch, idx = batches(step)
        lr = set_lr(opt, P2_LR, step, steps)
        text_features = F.normalize(encode_text_trimmed(model, sampler.tokens(epoch, idx)), dim=-1)
        loss = loss_fn(image_features[idx], text_features, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % log_every == 0 or step == steps - 1:
            el = time.time() - t0
            print(f"  phase 2 step {step:5d}/{steps} epoch {epoch} loss {loss.item():.4f} lr {lr:.2e} "
                  f"scale {model.logit_scale.exp().item():.1f} {el:.0f} s", flush=True)
            history.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(el, 1)})
    for p in model.visual.parameters():
        p.requires_grad_(True)
    return {"seconds": time.time() - t0, "epochs_seen": round(steps * batch / len(images), 2), "history": history}


# ----------------------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def encode_images(model, pil_images, preprocess) -> torch.Tensor:
    x = torch.stack([preprocess(im) for im in pil_images])
    return torch.cat([F.normalize(model.encode_image(x[i:i + 250]), dim=-1) for i in range(0, len(x), 250)])


@torch.no_grad()
def encode_texts(model, tokenizer, texts) -> torch.Tensor:
    tok = tokenizer(list(texts))
    return torch.cat([F.normalize(model.encode_text(tok[i:i + 250]), dim=-1) for i in range(0, len(tok), 250)])


def retrieval(image_features, texts, text_features_of) -> dict:
    """R@1 both ways with identical texts deduplicated; a hit is a text/image whose string equals the query's own."""
    unique = sorted(set(texts))
    pos = {t: k for k, t in enumerate(unique)}
    own = torch.tensor([pos[t] for t in texts])
    sims = image_features @ text_features_of(unique).T  # [images, unique texts]
    i2t = (sims.argmax(dim=1) == own).float().mean().item()
    t2i = (own[sims.argmax(dim=0)] == torch.arange(len(unique))).float().mean().item()
    counts = torch.bincount(own, minlength=len(unique)).float()
    return {"image_to_text_r1": round(i2t, 4), "text_to_image_r1": round(t2i, 4),
            "chance_image_to_text": round(1 / len(unique), 4),
            "chance_text_to_image": round((counts / len(texts)).mean().item(), 4), "unique_texts": len(unique)}


@torch.no_grad()
def evaluate(model, tokenizer, image_size: int) -> dict:
    model.eval()
    preprocess = open_clip.image_transform(64, is_train=False)
    multi = [make_record(HELD_OUT_WORLD, i, image_size=image_size, min_objects=3, max_objects=6, **WORLD)
             for i in range(500)]
    single = [make_record(HELD_OUT_WORLD, i, image_size=image_size, min_objects=1, max_objects=1, **WORLD)
              for i in range(500, 980)]
    feats = encode_images(model, [r.image for r in multi], preprocess)
    enc = lambda texts: encode_texts(model, tokenizer, texts)  # noqa: E731
    short = retrieval(feats, [r.alt_text for r in multi], enc)
    long = retrieval(feats, [r.long_description for r in multi], enc)
    few = [make_record(HELD_OUT_WORLD, i, image_size=image_size, min_objects=1, max_objects=2, **WORLD)
           for i in range(2_000_000, 2_000_500)]
    short_scenes = retrieval(encode_images(model, [r.image for r in few], preprocess),
                             [r.long_description for r in few], enc)
    long["mean_tokens_untruncated"] = round(float(np.mean([len(tokenizer.encode(r.long_description)) + 2
                                                           for r in multi])), 1)

    classes = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    objects = [json.loads(r.scene_json)["objects"][0] for r in single]
    labels = torch.tensor([classes.index(f"{o['colour']} {o['shape']}") for o in objects])
    single_feats = encode_images(model, [r.image for r in single], preprocess)

    def zero_shot(templates, names=classes, truth=labels) -> float:
        per_template = torch.stack([enc([t.format(c=c) for c in names]) for t in templates])
        class_feats = F.normalize(per_template.mean(dim=0), dim=-1)
        return round((single_feats @ class_feats.T).argmax(dim=1).eq(truth).float().mean().item(), 4)

    # by one attribute, ensembled over the other's values (as fixclip/eval/benchmarks/toy.py does)
    colours, shapes = list(COLOURS), list(SHAPES)
    by_colour = zero_shot([t.replace("{c}", "{c} " + s) for t in TEMPLATES for s in shapes], colours,
                          torch.tensor([colours.index(o["colour"]) for o in objects]))
    by_shape = zero_shot([t.replace("{c}", c + " {c}") for t in TEMPLATES for c in colours], shapes,
                         torch.tensor([shapes.index(o["shape"]) for o in objects]))

    zs = {"top1": zero_shot(TEMPLATES), "chance": round(1 / len(classes), 4), "classes": len(classes),
          "images": len(single), "templates": list(TEMPLATES),
          "top1_bare_classname": zero_shot(("{c}",)),
          "top1_unseen_template_a_rendering_of_a": zero_shot(("a rendering of a {c}.",)),
          "colour_top1": by_colour, "colour_chance": round(1 / len(colours), 4),
          "shape_top1": by_shape, "shape_chance": round(1 / len(shapes), 4)}
    return {"short_text_retrieval": short, "short_scene_retrieval": short_scenes, "long_text_retrieval": long,
            "zero_shot": zs}


def check_preprocessing(images: np.ndarray) -> None:
    """The training tensors equal open_clip.image_transform(64, is_train=False) of the same 64 px images."""
    from PIL import Image
    preprocess = open_clip.image_transform(64, is_train=False)
    ref = torch.stack([preprocess(Image.fromarray(a)) for a in images[:8]])
    assert torch.allclose(ref, to_input(images[:8]), atol=1e-5), "training preprocessing differs from image_transform"


# ----------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase1-steps", type=int, default=P1_STEPS)
    parser.add_argument("--phase2-steps", type=int, default=P2_STEPS)
    parser.add_argument("--pool-multi", type=int, default=POOL_MULTI)
    parser.add_argument("--pool-few", type=int, default=POOL_FEW)
    parser.add_argument("--out", type=Path, default=HERE, help="folder for model.json, weights.pt, scores.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    print(f"rendering the pool: {args.pool_multi} scenes of 3-6 objects + {args.pool_few} of 1-2", flush=True)
    images, scenes = build_pool(args.pool_multi, args.pool_few)
    check_preprocessing(images)
    targets = np.stack([scene_targets(s) for s in scenes])
    indices = range(3_000_000, 3_000_500)  # single-object scenes the evaluation below does not use
    held_out_scenes = [sample_scene(HELD_OUT_WORLD, i, WORLD["grid"], 1, 1, WORLD["textures"]) for i in indices]
    held_out = (np.stack([jpeg_round_trip(np.asarray(scene_record(scene, HELD_OUT_WORLD, i, image_size=64).image))
                          for scene, i in zip(held_out_scenes, indices)]),
                np.stack([scene_targets(scene) for scene in held_out_scenes]))
    t_pool = time.time() - t_start

    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # open_clip's default BPE tokenizer (49408 tokens, context 77)
    model = open_clip.model.CLIP(**CONFIG)
    print(f"phase 1: the image tower, {args.phase1_steps} steps of {P1_BATCH}", flush=True)
    log1 = train_image_tower(model, images, targets, held_out, args.phase1_steps, P1_BATCH)
    print(f"phase 2: the text tower against the locked image tower, {args.phase2_steps} steps of {P2_BATCH}",
          flush=True)
    log2 = train_text_tower(model, images, TextSampler(scenes, tokenizer), args.phase2_steps, P2_BATCH)
    print(f"trained in {(log1['seconds'] + log2['seconds']) / 60:.1f} min on {len(scenes)} images", flush=True)

    (args.out / "model.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save(state, args.out / "weights.pt")

    # score what was written: the fp16 weights, loaded the way the pipeline loads them
    shipped = open_clip.model.CLIP(**json.loads((args.out / "model.json").read_text()))
    torch.load(args.out / "weights.pt", weights_only=True)
    open_clip.load_checkpoint(shipped, str(args.out / "weights.pt"))
    with torch.no_grad():  # the trimmed text encoder used in training equals open_clip's
        tok = tokenizer(["red circle next to a small blue star", "a photo of a striped green cross on beige."])
        assert torch.allclose(encode_text_trimmed(shipped, tok), shipped.encode_text(tok), atol=1e-4)
    scores = {"benchmark_64px": evaluate(shipped, tokenizer, 64), "benchmark_96px": evaluate(shipped, tokenizer, 96)}
    scores["training"] = {
        "phase1": {"steps": args.phase1_steps, "batch": P1_BATCH, "lr": P1_LR, "epochs_seen": log1["epochs_seen"],
                   "minutes": round(log1["seconds"] / 60, 2), "history": log1["history"]},
        "phase2": {"steps": args.phase2_steps, "batch": P2_BATCH, "lr": P2_LR, "epochs_seen": log2["epochs_seen"],
                   "minutes": round(log2["seconds"] / 60, 2), "loss_history": log2["history"]},
        "weight_decay": WD, "warmup": WARMUP, "pool_multi": args.pool_multi, "pool_few": args.pool_few,
        "prefix_rate": PREFIX_RATE, "complete_rate": COMPLETE_RATE, "render_minutes": round(t_pool / 60, 2),
        "total_minutes": round((time.time() - t_start) / 60, 2),
        "weights_bytes": (args.out / "weights.pt").stat().st_size,
        "torch": torch.__version__, "open_clip": open_clip.__version__,
    }
    (args.out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    for name in ("benchmark_64px", "benchmark_96px"):
        s = scores[name]
        print(f"{name}: short R@1 i2t {s['short_text_retrieval']['image_to_text_r1']:.3f} "
              f"t2i {s['short_text_retrieval']['text_to_image_r1']:.3f} | long R@1 i2t "
              f"{s['long_text_retrieval']['image_to_text_r1']:.3f} t2i {s['long_text_retrieval']['text_to_image_r1']:.3f}"
              f" | short scenes R@1 {s['short_scene_retrieval']['image_to_text_r1']:.3f} "
              f"{s['short_scene_retrieval']['text_to_image_r1']:.3f} | zero-shot top-1 {s['zero_shot']['top1']:.3f}, "
              f"colour {s['zero_shot']['colour_top1']:.3f}, shape {s['zero_shot']['shape_top1']:.3f}")
    print(f"wrote {args.out} ({scores['training']['weights_bytes'] / 1e6:.2f} MB weights) in "
          f"{scores['training']['total_minutes']:.1f} min")


if __name__ == "__main__":
    main()
