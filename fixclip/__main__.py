"""Command line: embed or score images and texts with a model folder, no DVC needed.

    python -m fixclip score models/fixclip --images a.png b.png --texts captions.txt   # cosine similarities, TSV
    python -m fixclip embed models/fixclip --images a.png --texts captions.txt --out embeddings.npz

A texts file holds one text per line. A user error (a missing file, an unreadable image, a bad argument) is one line
on stderr and exit status 2 (``fixclip.cli``).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .cli import ArgumentParser, UserError, existing_file, existing_path, user_errors
from .eval.encode import CachedEncoder
from .inference import load


def readable_image(value: str) -> Path:
    """argparse type: an image file Pillow can identify and whose data is intact (``Image.verify``)."""
    path = existing_file(value)
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:  # verify raises SyntaxError on some bad data
        raise argparse.ArgumentTypeError(f"{value}: not an image Pillow can read ({exc})") from None
    return path


def _texts(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m fixclip", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("score", "print image x text cosine similarities as a TSV table"),
                            ("embed", "write L2-normalised embeddings to an .npz file")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("model", type=existing_path, help="model folder or checkpoint (models/fixclip, "
                                     "assets/base_clip, ViT-B-16.pt, an open_clip or transformers folder, ...)")
        command.add_argument("--images", type=readable_image, nargs="*", default=[], help="image files")
        command.add_argument("--texts", type=existing_file, help="text file, one text per line")
        command.add_argument("--device", default="cpu")
        command.add_argument("--no-prompts", dest="prompts", action="store_false",
                             help="encode images without a FIX-CLIP model's regional prompts (the backbone alone, "
                                  "as the open_clip and transformers exports)")
        if name == "embed":
            command.add_argument("--out", type=Path, required=True, help="output .npz "
                                 "(image_embeddings, text_embeddings, images, texts)")
    args = parser.parse_args(argv)
    if args.command == "score" and not (args.images and args.texts):
        parser.error("score needs --images and --texts")
    if not (args.images or args.texts):
        parser.error("give --images, --texts or both")
    if args.command == "embed" and not args.out.parent.is_dir():
        parser.error(f"--out: {args.out.parent}: no such folder")
    return args


def main(argv: list[str] | None = None) -> None:
    with user_errors():
        args = _arguments(argv)
        texts = _texts(args.texts)
        model = load(args.model, args.device, args.prompts)[0]  # a bad checkpoint: UserError
        encoder = CachedEncoder(model, str(args.model))
    images = encoder.images(args.images)
    text_embeddings = encoder.texts(texts)
    if args.command == "embed":
        np.savez(args.out, image_embeddings=images.numpy(), text_embeddings=text_embeddings.numpy(),
                 images=np.array([str(p) for p in args.images]), texts=np.array(texts))
        print(f"{len(args.images)} image and {len(texts)} text embeddings -> {args.out}", file=sys.stderr)
        return
    similarity = images @ text_embeddings.T
    print("\t".join(["image", *texts]))
    for path, row in zip(args.images, similarity.tolist()):
        print("\t".join([str(path), *(f"{value:.4f}" for value in row)]))


if __name__ == "__main__":
    main()
