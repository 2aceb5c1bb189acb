"""Is an image usable? Two checks, chosen by `shard.check_images`.

`decode`: Pillow opens and decodes the whole image; a JPEG at 1/8 scale (libjpeg's scaled IDCT), which still
entropy-decodes every coefficient of every block, so a truncated or corrupt stream fails as in a full decode
(tests/pipeline/shard/test_image_check.py checks the verdicts agree on damaged JPEGs), and faster (docs/development.md,
"Tests and benchmarks"). `header`: the container is read without decoding: the
format's signature, its pixel size from the header, and its end (JPEG's EOI marker, PNG's IEND chunk, WebP's RIFF
length). That catches truncated downloads, wrong content and decompression bombs; it cannot see corrupt compressed
data in the middle of a file, which img2dataset's own re-encoding does not produce. Formats other than these three
are decoded. Structures: JPEG (ITU-T T.81, annex B), PNG (ISO/IEC 15948, section 5), WebP (RFC 9649).

Both take bytes or a memoryview (of a mapped tar): `header` then reads the few bytes it needs without copying the
image.
"""
import io
import struct
import warnings

from PIL import Image

# Decompression-bomb guard (pixels), as Pillow's own default.
MAX_IMAGE_PIXELS = 89_478_485
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# JPEG start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM: no length field
MARKER = struct.Struct(">BBH")  # 0xFF, marker, segment length (big-endian, as all JPEG numbers)
FRAME_SIZE = struct.Struct(">HH")  # a frame header's height and width, after its length and sample precision


Data = bytes | memoryview


def decodes(data: Data) -> bool:
    """The image opens and decodes within the pixel budget (a JPEG at 1/8 scale: see the module docstring)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    return False
                if image.format == "JPEG":
                    image.draft(image.mode, (1, 1))
                image.load()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure is the same drop class
        return False


def ends_with(data: Data, marker: bytes) -> bool:
    """The data ends with the marker, ignoring NUL bytes after it (padding some writers add)."""
    if data[-1:] == b"\0":
        data = bytes(data).rstrip(b"\0")
    return data[-len(marker):] == marker


def jpeg_size(data: Data) -> tuple[int, int] | None:
    """(width, height) from the first frame header of a JPEG that ends with EOI, else None."""
    if data[:2] != b"\xff\xd8" or not ends_with(data, b"\xff\xd9"):
        return None
    position = 2
    while position + 4 <= len(data):
        fill, marker, length = MARKER.unpack_from(data, position)
        if fill != 0xFF:
            return None
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in JPEG_STANDALONE:
            position += 2
            continue
        if marker in JPEG_FRAMES:
            if length < 8 or position + 9 > len(data):
                return None
            height, width = FRAME_SIZE.unpack_from(data, position + 5)
            return width, height
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        position += 2 + length
    return None


def png_size(data: Data) -> tuple[int, int] | None:
    """(width, height) from the IHDR chunk of a PNG that ends with IEND, else None."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or data[-len(PNG_END):] != PNG_END:
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def webp_size(data: Data) -> tuple[int, int] | None:
    """(width, height) of a WebP whose RIFF length matches the data, else None."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    if int.from_bytes(data[4:8], "little") + 8 != len(data):
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


SIZE_READERS = {b"\xff\xd8": jpeg_size, PNG_SIGNATURE[:2]: png_size, b"RI": webp_size}


def header_ok(data: Data) -> bool:
    """Signature, size within the pixel budget and a complete container; unknown formats are decoded."""
    reader = SIZE_READERS.get(bytes(data[:2]))
    if reader is None:
        return decodes(data)
    size = reader(data)
    return size is not None and 0 < size[0] * size[1] <= MAX_IMAGE_PIXELS


CHECKS = {"decode": decodes, "header": header_ok}
