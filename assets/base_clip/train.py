"""Train the tiny base CLIP (context 77) that the pipeline's default fine-tunes: "a pretrained CLIP" for the toy world.

It plays the part of a web-trained CLIP: it sees toy scenes only with their short, partial alt texts (never a long
description), so it should be good at short text and zero-shot, and poor at long descriptions (77 tokens, never
trained on them; text positions past the longest alt text never receive a gradient, much as OpenAI CLIP's late
positions are under-trained).

Run from the repository root (offline, CPU, one thread):  .venv/bin/python assets/base_clip/train.py
Writes, next to this file: model.json (the open_clip config, unchanged architecture), weights.pt (state_dict, fp16
floats; loads with torch.load(weights_only=True) / open_clip.load_checkpoint) and scores.json (toy scores of the
written fp16 weights). Uses open_clip and pipeline.toyworld.scenes only (not the fixclip package).

Recipe (seeded, deterministic on one CPU thread):
- model: open_clip.model.CLIP(**model.json): 64 px images, 8 px patches, ViT width 64 x 4 layers, text width 32 x 4
  layers, embed 64, context 77, the standard 49408-token BPE vocab (open_clip.get_tokenizer default); open_clip init.
- data: a pool of POOL_MULTI scenes with 3-6 objects (world seed 20_000_000) and POOL_SINGLE single-object scenes
  (world seed 20_000_001), rendered once by pipeline.toyworld.scenes.make_record. Half the pool (even indices) is
  rendered at 64 px directly, the other half at 96 px and downscaled to 64 px with cv2 INTER_AREA, as img2dataset does to a world
  rendered larger than download.image_size (the default renders at 64 px); every image then goes through
  the JPEG quality 95 round trip of img2dataset (cv2). Preprocessing = open_clip.image_transform(64, is_train=False)
  (identity resize/crop at 64 px, OpenAI mean/std), applied directly to the uint8 tensors; no augmentation.
- text: a fresh alt text per image and epoch, pipeline.toyworld.scenes.alt_text(scene, rng) with rng seeded by
  (SEED, epoch, index) (web data has several alt texts per kind of image); with probability PREFIX_RATE it is
  wrapped in a web-style prefix/suffix from WEB_WRAPS ("a photo of a ...", "clip art: ...", ...). The text tower
  runs on the batch's tokens trimmed after its last end-of-text token, which is exact under the causal mask.
- loss/optimiser: open_clip.ClipLoss, AdamW (lr LR, betas 0.9/0.98, eps 1e-6, weight decay WD on matrices only;
  embeddings, gains, biases and the logit scale undecayed), WARMUP linear warm-up steps then cosine to 0, STEPS
  steps of BATCH, logit scale initialised at ln(1/0.07) and clamped at ln(100).

Evaluation (held-out world seed 1000003, scores of the saved fp16 weights, open_clip.image_transform(64, False)):
(a) short-text retrieval, scenes 0..499 (3-6 objects) with their alt texts, R@1 both ways (identical texts
deduplicated: a hit is a top text / top image whose alt text string equals the query's own);
(b) long-text retrieval of the same images against their long descriptions (tokenizer truncation to 77 tokens);
(c) zero-shot top-1 on single-object scenes 500..979 over the 48 "<colour> <shape>" classes, templates
"a photo of a {c}.", "a {c}.", "a drawing of a {c}." (mean of normalised template embeddings).
Reported for benchmark images rendered at 64 px (the main numbers) and at 96 px (resized to 64 by the transform);
chance levels alongside. The evaluate stage's toy benchmark (twin scenes, 5-6 objects) gives the pipeline's numbers.

Run that wrote the committed weights (torch 2.14.1, open_clip 3.3.0, one thread on a shared 2-core CPU): render 2.7 min
(40,000 images), training 35.3 min (1700 steps of 128 = 5.4 passes over the pool; final batch loss ~2.8 vs ln 128 =
4.85 at chance), 38.2 min in all; weights.pt 3.75 MB. Scores (scores.json), R@1 / top-1, chance in brackets:

                                       64 px benchmark   96 px benchmark
  short text, image -> text (452 uniq)  0.022 (0.002)     0.026 (0.002)
  short text, text -> image             0.044 (0.002)     0.035 (0.002)
  long text, image -> text (77 tokens)  0.110 (0.002)     0.104 (0.002)
  long text, text -> image              0.026 (0.002)     0.022 (0.002)
  zero-shot, 48 classes, 3 templates    0.181 (0.021)     0.181 (0.021)
  (zero-shot with the bare class name 0.167 / 0.171; with an unseen template "a rendering of a {c}." 0.188 / 0.183)
Short-text R@1 is low in absolute terms because alt texts are partial: many of the 500 scenes fit a given alt text.
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
from pipeline.toyworld.scenes import COLOURS, SHAPES, alt_text, make_record, sample_scene  # noqa: E402

SEED = 0
TRAIN_WORLD_MULTI, TRAIN_WORLD_SINGLE = 20_000_000, 20_000_001  # >= 20_000_000: never the pipeline's worlds
HELD_OUT_WORLD = 1_000_003
POOL_MULTI, POOL_SINGLE = 32_000, 8_000
BATCH, STEPS, LR, WD, WARMUP = 128, 1700, 1e-3, 0.1, 100
PREFIX_RATE = 0.25
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


def render_train_image(seed: int, index: int, single: bool) -> np.ndarray:
    counts = dict(min_objects=1, max_objects=1) if single else dict(min_objects=3, max_objects=6)
    if index % 2 == 0:
        rgb = np.asarray(make_record(seed, index, image_size=64, **counts, **WORLD).image)
    else:  # the pipeline default: rendered at 96 px, img2dataset "border" resize to 64 px (cv2 INTER_AREA)
        rgb = np.asarray(make_record(seed, index, image_size=96, **counts, **WORLD).image)
        rgb = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA)
    return jpeg_round_trip(np.ascontiguousarray(rgb))


def build_pool(n_multi: int, n_single: int):
    """uint8 images [N, 64, 64, 3] and their scenes: multi-object scenes first, then single-object ones."""
    entries = [(TRAIN_WORLD_MULTI, i, False) for i in range(n_multi)]
    entries += [(TRAIN_WORLD_SINGLE, i, True) for i in range(n_single)]
    images = np.empty((len(entries), 64, 64, 3), dtype=np.uint8)
    scenes = []
    t0 = time.time()
    for k, (seed, index, single) in enumerate(entries):
        images[k] = render_train_image(seed, index, single)
        lo, hi = (1, 1) if single else (3, 6)
        scenes.append(sample_scene(seed, index, WORLD["grid"], lo, hi, WORLD["textures"]))
        if (k + 1) % 10_000 == 0:
            print(f"  rendered {k + 1}/{len(entries)} ({time.time() - t0:.0f} s)", flush=True)
    return images, scenes


class TextSampler:
    """Fresh alt text per (epoch, index), sometimes wrapped web-style; tokenised once per distinct string."""

    def __init__(self, scenes, tokenizer):
        self.scenes, self.tokenizer, self.cache = scenes, tokenizer, {}

    def text(self, epoch: int, index: int) -> str:
        rng = np.random.default_rng([SEED, 2, epoch, index])
        text = alt_text(self.scenes[index], rng)
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


# ---------------------------------------------------------------------------------------------------------- train
def train(model, images, sampler, steps: int, batch: int, log_every: int = 50) -> dict:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_matrix = p.ndim >= 2 and "embedding" not in name and "ln" not in name
        (decay if is_matrix else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.ClipLoss()
    order_rng = np.random.default_rng([SEED, 1])
    n = len(images)
    per_epoch = n // batch
    epoch, order = -1, None
    t0, history = time.time(), []
    model.train()
    for step in range(steps):
        if step % per_epoch == 0:
            epoch += 1
            order = order_rng.permutation(n)
        idx = np.sort(order[(step % per_epoch) * batch:(step % per_epoch + 1) * batch])
        lr = LR * (step + 1) / WARMUP if step < WARMUP else \
            0.5 * LR * (1 + math.cos(math.pi * (step - WARMUP) / max(1, steps - WARMUP)))
        for g in opt.param_groups:
            g["lr"] = lr
        img = to_input(images[idx])
        txt = sampler.tokens(epoch, idx)
        image_features = F.normalize(model.encode_image(img), dim=-1)
        text_features = F.normalize(encode_text_trimmed(model, txt), dim=-1)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % log_every == 0 or step == steps - 1:
            el = time.time() - t0
            print(f"  step {step:5d}/{steps} epoch {epoch} loss {loss.item():.4f} lr {lr:.2e} "
                  f"scale {model.logit_scale.exp().item():.1f} {el:.0f} s", flush=True)
            history.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(el, 1)})
    return {"seconds": time.time() - t0, "epochs_seen": round(steps * batch / n, 2), "history": history}


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
    long["mean_tokens_untruncated"] = round(float(np.mean([len(tokenizer.encode(r.long_description)) + 2
                                                           for r in multi])), 1)

    classes = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    labels = []
    for r in single:
        obj = json.loads(r.scene_json)["objects"][0]
        labels.append(classes.index(f"{obj['colour']} {obj['shape']}"))
    labels = torch.tensor(labels)
    single_feats = encode_images(model, [r.image for r in single], preprocess)

    def zero_shot(templates) -> float:
        per_template = torch.stack([enc([t.format(c=c) for c in classes]) for t in templates])
        class_feats = F.normalize(per_template.mean(dim=0), dim=-1)
        return round((single_feats @ class_feats.T).argmax(dim=1).eq(labels).float().mean().item(), 4)

    zs = {"top1": zero_shot(TEMPLATES), "chance": round(1 / len(classes), 4), "classes": len(classes),
          "images": len(single), "templates": list(TEMPLATES),
          "top1_bare_classname": zero_shot(("{c}",)),
          "top1_unseen_template_a_rendering_of_a": zero_shot(("a rendering of a {c}.",))}
    return {"short_text_retrieval": short, "long_text_retrieval": long, "zero_shot": zs}


def check_preprocessing(images: np.ndarray) -> None:
    """The training tensors equal open_clip.image_transform(64, is_train=False) of the same 64 px images."""
    from PIL import Image
    preprocess = open_clip.image_transform(64, is_train=False)
    ref = torch.stack([preprocess(Image.fromarray(a)) for a in images[:8]])
    assert torch.allclose(ref, to_input(images[:8]), atol=1e-5), "training preprocessing differs from image_transform"


# ----------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--pool-multi", type=int, default=POOL_MULTI)
    parser.add_argument("--pool-single", type=int, default=POOL_SINGLE)
    parser.add_argument("--out", type=Path, default=HERE, help="folder for model.json, weights.pt, scores.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    print(f"rendering the pool: {args.pool_multi} multi-object + {args.pool_single} single-object scenes", flush=True)
    images, scenes = build_pool(args.pool_multi, args.pool_single)
    check_preprocessing(images)
    t_pool = time.time() - t_start

    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # open_clip's default BPE tokenizer (49408 tokens, context 77)
    model = open_clip.model.CLIP(**CONFIG)
    print(f"training {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters: {args.steps} steps of "
          f"{args.batch}", flush=True)
    log = train(model, images, TextSampler(scenes, tokenizer), args.steps, args.batch)
    print(f"trained in {log['seconds'] / 60:.1f} min; {len(scenes)} images, {log['epochs_seen']} epochs", flush=True)

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
        "steps": args.steps, "batch": args.batch, "lr": LR, "weight_decay": WD, "warmup": WARMUP,
        "pool_multi": args.pool_multi, "pool_single": args.pool_single, "prefix_rate": PREFIX_RATE,
        "epochs_seen": log["epochs_seen"], "render_minutes": round(t_pool / 60, 2),
        "train_minutes": round(log["seconds"] / 60, 2), "total_minutes": round((time.time() - t_start) / 60, 2),
        "loss_history": log["history"], "weights_bytes": (args.out / "weights.pt").stat().st_size,
        "torch": torch.__version__, "open_clip": open_clip.__version__,
    }
    (args.out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    for name in ("benchmark_64px", "benchmark_96px"):
        s = scores[name]
        print(f"{name}: short R@1 i2t {s['short_text_retrieval']['image_to_text_r1']:.3f} "
              f"t2i {s['short_text_retrieval']['text_to_image_r1']:.3f} | long R@1 i2t "
              f"{s['long_text_retrieval']['image_to_text_r1']:.3f} t2i {s['long_text_retrieval']['text_to_image_r1']:.3f}"
              f" | zero-shot top-1 {s['zero_shot']['top1']:.3f} (chance {s['zero_shot']['chance']:.3f})")
    print(f"wrote {args.out} ({scores['training']['weights_bytes'] / 1e6:.2f} MB weights) in "
          f"{scores['training']['total_minutes']:.1f} min")


if __name__ == "__main__":
    main()
