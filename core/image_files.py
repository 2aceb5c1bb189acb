"""Image files as the command line takes them: a file Pillow can read, or a folder of such files (torch-free)."""
import argparse
import base64
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .cli import existing_file, existing_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
UNDECODABLE = (UnidentifiedImageError, OSError, SyntaxError)  # what Pillow raises on bad data (verify: SyntaxError)


def readable_image(value: str) -> Path:
    """argparse type: an image file Pillow can identify and whose data is intact (``Image.verify``)."""
    path = existing_file(value)
    try:
        with Image.open(path) as image:
            image.verify()
    except UNDECODABLE as exc:
        raise argparse.ArgumentTypeError(f"{value}: not an image Pillow can read ({exc})") from None
    return path


def images_or_folder(value: str) -> list[Path]:
    """argparse type: an image file, or a folder's image files (recursively, sorted), each checked as above."""
    path = existing_path(value)
    if not path.is_dir():
        return [readable_image(value)]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise argparse.ArgumentTypeError(f"{value}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return [readable_image(str(p)) for p in found]


def png_data_url(data: bytes, side: int) -> str:
    """The image bytes as a data: URL of a PNG at most ``side`` px on its longer side (PNG, so that small images stay
    sharp); raises one of UNDECODABLE where they do not decode."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, "PNG")
    return f"data:image/png;base64,{base64.b64encode(out.getvalue()).decode()}"
