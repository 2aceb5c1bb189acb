"""The bill of a params profile from first principles: per caption image and per train sample, FLOPs and bytes, the
GPU-time bound at a GPU's peak, the rate at a stated utilisation and the GPU-hours for N images; for captioning, the
same for each knob that moves it (docs/scale.md).

    python -m bench.cost                                     # configs/paper-30m.yaml over params.yaml, on an H100
    python -m bench.cost --profile configs/paper-30m.yaml --gpu h200 --utilisation 0.4 --images-total 3e7
    python -m bench.cost --images data/raw                   # the run's own images instead of the web size mix
    python -m bench.cost --stage caption --model /models/llava-v1.6-mistral-7b-hf

The captioner is `caption.model` when it is a local folder, else the folder of the same name in
assets/captioner_configs (configs and processor settings of hub releases, no weights); the smaller-model rows use the
other folders there. Image sizes: WEB_SIZES (an assumed mix of web photo sizes) resized as the profile's download
does, or with --images the sizes of the run's own images (as the caption stage reads them). Output tokens per image:
min(max_tokens, --caption-tokens). Train: FLOPs per sample of a plain open_clip step and of FIX-CLIP (as the profile
sets it) at ViT-B/16 and ViT-L/14, counted by bench/model.py (a CPU forward + backward at batch 2: ~1-3 minutes).
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository root, when run as a script

from bench.caption_cost import WEB_SIZES, Captioner, Cost, Setting, cost, image_sizes  # noqa: E402
from bench.gpus import GPUS, Gpu  # noqa: E402
from core.cli import ArgumentParser, UserError, existing_file, existing_path, user_errors  # noqa: E402
from pipeline.params import read_yaml  # noqa: E402
from pipeline.params.caption import CaptionParams  # noqa: E402
from pipeline.profile import merge  # noqa: E402

CONFIGS = REPO / "assets" / "captioner_configs"
# Assumed utilisation (model FLOPs / peak): the GEMM-bound regime of large-model work on H100s, where Llama 3's
# pre-training ran at 38-43% BF16 MFU (The Llama 3 Herd of Models, arXiv:2407.21783, Table 4). docs/scale.md.
UTILISATION = 0.4
CAPTION_TOKENS = 120  # assumed mean caption length: the paper profile's ~120-token captions
TRAIN_ARCHS = ("ViT-B-16", "ViT-L-14")
TRAIN_FLOP_BATCH = 2  # samples per counted step (FLOPs per sample hardly depend on it: the loss's B^2 term is tiny)
# AdamW per step and parameter (fp32): read weight, grad, two moments; write weight and two moments: 7 x 4 bytes.
ADAMW_BYTES_PER_PARAM = 28


def profile_params(params_file: Path, profile: Path | None) -> dict:
    """params.yaml with the profile merged over it (as pipeline.profile does), as plain data: the paper profile's
    paths need not exist to be priced."""
    params = read_yaml(params_file.read_text())
    if profile is not None:
        merge(params, read_yaml(profile.read_text()) or {})
    return params


def captioner_folder(model: str) -> Path:
    path = Path(model).expanduser()
    if not path.is_absolute():
        path = REPO / path
    if path.is_dir():
        return path
    fallback = CONFIGS / path.name.lower()
    if fallback.is_dir():
        return fallback
    raise UserError(f"caption.model {model}: not a local folder and not in {CONFIGS.relative_to(REPO)}; give --model")


def knob_settings(base: Setting, captioner: Captioner) -> list[Setting]:
    """The profile's setting and one row per knob: max_image_side, the tile grid or pixel budget, max_tokens, images
    at web size (no download resize), and each smaller model of assets/captioner_configs."""
    rows = [base]
    rows += [base.but(f"caption.max_image_side: {'null' if side is None else side}", max_image_side=side)
             for side in (None, 336, 224) if side != base.max_image_side]
    if captioner.family == "llava_next":
        rows += [base.but("grid: 1x2 tiles only [[336,672],[672,336]]", grid=[[336, 672], [672, 336]]),
                 base.but("grid: one tile [[336,336]]", grid=[[336, 336]])]
    elif captioner.family == "qwen2_vl":
        rows += [base.but(f"mm_processor_kwargs: max_pixels {28 * 28 * n}", mm_kwargs={"max_pixels": 28 * 28 * n})
                 for n in (256, 64)]
    rows += [base.but(f"caption.sampling.max_tokens: {n}", max_tokens=n) for n in (160, 96)]
    rows.append(base.but("images at web size (download.resize_mode: no)", resize_mode="no"))
    for folder in sorted(CONFIGS.iterdir()):
        if folder.is_dir() and folder.name != captioner.folder.name:
            rows.append(base.but(f"model: {folder.name}", model=folder))
            if folder.name.startswith("qwen2-vl"):
                rows.append(base.but(f"model: {folder.name}, max_pixels {28 * 28 * 64}", model=folder,
                                     mm_kwargs={"max_pixels": 28 * 28 * 64}))
    return rows


def caption_costs(params: dict, model: Path, sizes, downloaded: bool, caption_tokens: int, gpu: Gpu) -> list[Cost]:
    """One Cost per row of knob_settings, for the profile's caption and download params."""
    caption = CaptionParams.model_validate(params.get("caption", {}))
    download = params.get("download", {})
    server = caption.server
    base = Setting("profile as is", model, download.get("image_size", 64), download.get("resize_mode", "border"),
                   download.get("resize_only_if_bigger", False), caption.max_image_side,
                   server.mm_processor_kwargs or None, None, caption.sampling.max_tokens, server.max_num_seqs or 256,
                   server.gpu_memory_utilization, server.kv_cache_memory_bytes)
    template = Path(server.chat_template).read_text() if server.chat_template else None
    captioners: dict[Path, Captioner] = {}
    costs = []
    for setting in knob_settings(base, captioners.setdefault(model, Captioner(model, template))):
        if setting.model not in captioners:
            captioners[setting.model] = Captioner(setting.model)
        costs.append(cost(setting, captioners[setting.model], sizes, caption.prompts, caption_tokens, gpu,
                          downloaded))
    return costs


def caption_table(costs: list[Cost], images: float, utilisation: float) -> str:
    head = ("setting", "img tok", "prompt tok", "out tok", "TFLOP/img", "(vis/pre/dec)", "dec GB/img", "batch",
            "bound ms", "img/s bound", f"img/s @{utilisation:.0%}", f"GPU-h @{utilisation:.0%}", "vs profile")
    base = costs[0].gpu_hours(images, utilisation)
    lines = [head]
    for c in costs:
        r = c.request
        split = f"{r.vision_flops / 1e12:.1f}/{r.prefill_flops / 1e12:.1f}/{r.decode_flops / 1e12:.1f}"
        hours = c.gpu_hours(images, utilisation)
        marks = "" if c.captioner.exact_text else "~"  # ~: text tokens estimated (no tokenizer in the folder)
        lines.append((c.setting.label, f"{r.image_tokens:.0f}", f"{r.prompt_tokens:.0f}{marks}", f"{r.output_tokens}",
                      f"{r.flops / 1e12:.2f}", split, f"{c.decode_bytes / 1e9:.1f}", str(c.batch),
                      f"{c.bound_seconds * 1e3:.1f}{'m' if c.byte_seconds > c.flop_seconds else ''}",
                      f"{1 / c.bound_seconds:.1f}", f"{utilisation / c.bound_seconds:.1f}", f"{hours:,.0f}",
                      f"{hours / base:.2f}x"))
    return _aligned(lines)


def train_costs(params: dict, gpu: Gpu, samples: float, utilisation: float) -> list[tuple]:
    """(arch, step, GFLOP per sample, parameters, bound s per sample, GPU-hours at utilisation) per arch and step."""
    from bench.model import flops_per_sample
    import torch

    torch.set_num_threads(1)
    batch = params.get("train", {}).get("batch_size", 128)
    rows = []
    for arch in TRAIN_ARCHS:
        for name, (flops, parameters) in flops_per_sample(arch, TRAIN_FLOP_BATCH).items():
            compute, memory = gpu.seconds(flops, parameters * ADAMW_BYTES_PER_PARAM / batch)
            bound = compute + memory  # the optimizer step runs after the backward pass, not beside it
            rows.append((arch, name, flops, parameters, bound, samples * bound / utilisation / 3600))
    return rows


def train_table(rows: list[tuple], utilisation: float) -> str:
    head = ("arch", "step", "GFLOP/sample", "params", "bound us/sample", "samples/s bound",
            f"samples/s @{utilisation:.0%}", f"GPU-h @{utilisation:.0%}")
    lines = [head] + [(arch, name, f"{flops / 1e9:.0f}", f"{parameters / 1e6:.0f}M", f"{bound * 1e6:.0f}",
                       f"{1 / bound:,.0f}", f"{utilisation / bound:,.0f}", f"{hours:,.1f}")
                      for arch, name, flops, parameters, bound, hours in rows]
    return _aligned(lines)


def _aligned(lines: list[tuple]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m bench.cost", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=existing_file, default=REPO / "configs/paper-30m.yaml",
                        help="a profile merged over --params (default: the paper profile)")
    parser.add_argument("--params", type=existing_file, default=REPO / "params.yaml")
    parser.add_argument("--model", type=existing_path, help="captioner folder (default: from caption.model)")
    parser.add_argument("--images", type=existing_path, help="the run's images (a folder, or data/raw's tars)")
    parser.add_argument("--sample", type=int, default=2000, help="at most this many of --images")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    parser.add_argument("--utilisation", type=float, default=UTILISATION, help="model FLOPs / peak (assumed)")
    parser.add_argument("--images-total", type=float, default=30e6, help="N images (captioned K times each)")
    parser.add_argument("--caption-tokens", type=int, default=CAPTION_TOKENS, help="mean caption length (assumed)")
    parser.add_argument("--stage", default="caption,train", help="comma-separated: caption, train")
    with user_errors(ValueError):
        args = parser.parse_args(argv)
        stages = {s.strip() for s in args.stage.split(",") if s.strip()}
        if not stages or stages - {"caption", "train"}:
            raise UserError(f"--stage: {args.stage!r}; give caption and/or train")
        if not 0 < args.utilisation <= 1:
            raise UserError(f"--utilisation: {args.utilisation} is not in (0, 1]")
        params = profile_params(args.params, args.profile)
        gpu = GPUS[args.gpu]
        print(f"{gpu.name}: {gpu.flops / 1e12:.0f} TFLOP/s dense bf16, {gpu.bandwidth / 1e12:.2f} TB/s, "
              f"{gpu.memory / 1e9:.0f} GB (bench/gpus.py); utilisation {args.utilisation:.0%} (assumed); "
              f"profile {args.profile.relative_to(REPO) if args.profile.is_relative_to(REPO) else args.profile}")
        if "caption" in stages:
            caption = CaptionParams.model_validate(params.get("caption", {}))
            model = args.model or captioner_folder(caption.model)
            sizes = image_sizes(args.images, args.sample) if args.images else list(WEB_SIZES)
            costs = caption_costs(params, model, sizes, args.images is not None, args.caption_tokens, gpu)
            where = f"{len(sizes)} sizes of {args.images}" if args.images else "WEB_SIZES (an assumed mix)"
            print(f"\ncaption: {model} ({costs[0].captioner.total_params / 1e9:.2f}B params); images: {where}; "
                  f"{len(caption.prompts)} prompts; N x K = {args.images_total:,.0f} x {caption.captions_per_image}; "
                  "~: text tokens estimated (no tokenizer in the folder); m: bound by memory bandwidth")
            print(caption_table(costs, args.images_total * caption.captions_per_image, args.utilisation))
        if "train" in stages:
            epochs = params.get("train", {}).get("epochs", 1.0)
            rows = train_costs(params, gpu, args.images_total * epochs, args.utilisation)
            print(f"\ntrain: N x epochs = {args.images_total:,.0f} x {epochs}, FLOPs counted by bench/model.py "
                  f"(forward + loss + backward, batch {TRAIN_FLOP_BATCH}), AdamW bytes at train.batch_size "
                  f"{params.get('train', {}).get('batch_size', 128)} per GPU")
            print(train_table(rows, args.utilisation))


if __name__ == "__main__":
    main()
