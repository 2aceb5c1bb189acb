"""Command line: embed, score or search images and texts with a model folder, no DVC needed.

    python -m fixclip score models/fixclip --images a.png photos/ --texts captions.txt   # cosine similarities, TSV
    python -m fixclip embed models/fixclip --images a.png --texts captions.txt --out embeddings.npz
    python -m fixclip search models/fixclip --images data/shards "a long description ..." --html results.html

``--images`` takes image files and folders (searched recursively); search also takes webdataset shards. A texts
file holds one text per line. A text longer than the model's context (248 tokens after the stretch) is cut there,
and stderr says which. A user error (a missing file, an unreadable image, a bad argument or device, a folder that
holds no model) is one line on stderr and exit status 2 (``core.cli``). torch and open_clip are imported only
once the arguments are read, so ``--help`` and argument errors are quick.
"""
import argparse
import sys
from pathlib import Path

from core.cli import ArgumentParser, UserError, existing_file, existing_path, user_errors
from core.image_files import images_or_folder


def positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value}: not a whole number >= 1")
    return int(value)


def _texts(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if not texts:
        raise UserError(f"--texts {path}: no text in this file (one text per line)")
    return texts


def _model_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("model", type=existing_path, help="model folder or checkpoint (models/fixclip, "
                                                           "assets/base_clip, ViT-B-16.pt, an open_clip or "
                                                           "transformers folder, ...)")
    command.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    command.add_argument("--no-prompts", dest="prompts", action="store_false",
                         help="encode images without a FIX-CLIP model's regional prompts (the backbone alone, as "
                              "the open_clip and transformers exports)")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m fixclip", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("score", "print image x text cosine similarities as a TSV table"),
                            ("embed", "write L2-normalised embeddings to an .npz file")):
        command = commands.add_parser(name, help=help_text)
        _model_arguments(command)
        command.add_argument("--images", type=images_or_folder, nargs="*", default=[],
                             help="image files or folders of them")
        command.add_argument("--texts", type=existing_file, help="text file, one text per line")
        if name == "embed":
            command.add_argument("--out", type=Path, required=True, help="output .npz "
                                 "(image_embeddings, text_embeddings, images, texts)")
    search = commands.add_parser("search", help="rank images by one (long) description: the top-k with scores")
    _model_arguments(search)
    search.add_argument("query", help="the description (up to the model's context: 248 tokens after the stretch)")
    search.add_argument("--images", type=existing_path, action="append", required=True,
                        help="an image file, a folder of them, a webdataset shard (.tar) or a folder of shards; "
                             "repeat for more")
    search.add_argument("--top-k", type=positive, default=5, help="how many to show (5)")
    search.add_argument("--html", type=Path, help="also write the results as a self-contained HTML page")
    args = parser.parse_args(argv)
    if args.command != "search":
        args.images = [path for group in args.images for path in group]
        if args.command == "score" and not (args.images and args.texts):
            parser.error("score needs --images and --texts")
        if not (args.images or args.texts):
            parser.error("give --images, --texts or both")
    if args.command == "search" and not args.query.strip():
        parser.error("search: the query is empty")
    out = args.out if args.command == "embed" else getattr(args, "html", None)
    if out is not None and not out.parent.is_dir():
        parser.error(f"--{'out' if args.command == 'embed' else 'html'}: {out.parent}: no such folder")
    return args


def _announce_cuts(texts: list[str], context_length: int, what: str) -> None:
    from .inference import cut_notice

    notice = cut_notice(texts, context_length, what)
    if notice:
        print(notice, file=sys.stderr)


def _search(args: argparse.Namespace, model) -> None:
    from . import search

    _announce_cuts([args.query], model.context_length, "the query")
    with user_errors():
        found = search.candidates(*search.inputs(args.images))
        ranking = search.rank(model, args.query, found, args.top_k)
    if ranking.undecodable:
        print(f"warning: {len(ranking.undecodable)} images could not be decoded and are not ranked: "
              f"{', '.join(ranking.undecodable[:3])}{' ...' if len(ranking.undecodable) > 3 else ''}",
              file=sys.stderr)
    print(f"{len(ranking.hits)} best of {ranking.ranked} images", file=sys.stderr)
    print("rank\tscore\timage\tcaption")
    for place, hit in enumerate(ranking.hits, 1):
        print(f"{place}\t{hit.score:.4f}\t{hit.candidate.source}\t{' '.join(hit.candidate.caption.split())}")
    if args.html is not None:
        args.html.write_text(search.page(args.query, str(args.model), ranking), encoding="utf-8")
        print(f"-> {args.html}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    with user_errors():
        args = _arguments(argv)
        texts = _texts(getattr(args, "texts", None))
        from .inference import device, load

        model = load(args.model, device(args.device), args.prompts)[0]  # a folder that is not a model: UserError
    if args.command == "search":
        _search(args, model)
        return
    import numpy as np

    from .eval.encode import CachedEncoder

    _announce_cuts(texts, model.context_length, "text")
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
