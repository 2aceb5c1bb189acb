"""Command line: embed or score images and texts with a model folder, no DVC needed.

    python -m fixclip score models/fixclip --images a.png b.png --texts captions.txt   # cosine similarities, TSV
    python -m fixclip embed models/fixclip --images a.png --texts captions.txt --out embeddings.npz

A texts file holds one text per line.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from .eval.encode import CachedEncoder
from .inference import load


def _texts(path: Path | None) -> list[str]:
    if path is None:
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fixclip", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("score", "print image x text cosine similarities as a TSV table"),
                            ("embed", "write L2-normalised embeddings to an .npz file")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("model", type=Path, help="model folder (models/fixclip, assets/base_clip, ...)")
        command.add_argument("--images", type=Path, nargs="*", default=[], help="image files")
        command.add_argument("--texts", type=Path, help="text file, one text per line")
        command.add_argument("--device", default="cpu")
        if name == "embed":
            command.add_argument("--out", type=Path, required=True, help="output .npz "
                                 "(image_embeddings, text_embeddings, images, texts)")
    args = parser.parse_args(argv)
    if args.command == "score" and not (args.images and args.texts):
        parser.error("score needs --images and --texts")
    if not (args.images or args.texts):
        parser.error("give --images, --texts or both")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    encoder = CachedEncoder(load(args.model, args.device)[0], str(args.model))
    texts = _texts(args.texts)
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
