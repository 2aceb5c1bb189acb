"""The two image checks: every pixel decoded, or the container's header, size and end."""
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.shard import image_check


def _encode(fmt: str, size=(24, 16), **options) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


FORMATS = {"jpeg": _encode("JPEG"), "progressive_jpeg": _encode("JPEG", progressive=True), "png": _encode("PNG"),
           "webp_lossy": _encode("WEBP"), "webp_lossless": _encode("WEBP", lossless=True), "gif": _encode("GIF")}


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("check", ["decode", "header"])
def test_whole_images_pass(name, check):
    assert image_check.CHECKS[check](FORMATS[name])


@pytest.mark.parametrize("name", ["jpeg", "progressive_jpeg", "png", "webp_lossy", "webp_lossless"])
def test_header_reads_the_pixel_size(name):
    reader = {"jpeg": image_check.jpeg_size, "png": image_check.png_size, "webp": image_check.webp_size}[
        name.split("_")[-1] if "jpeg" in name else name.split("_")[0]]
    assert reader(FORMATS[name]) == (24, 16)


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("check", ["decode", "header"])
def test_truncated_and_foreign_bytes_fail(name, check):
    data = FORMATS[name]
    assert not image_check.CHECKS[check](data[: len(data) * 2 // 3])
    assert not image_check.CHECKS[check](b"<html>not an image</html>")


def test_header_refuses_a_decompression_bomb_without_decoding():
    bomb = _encode("PNG", size=(1, 1))
    ihdr_size = (100_000).to_bytes(4, "big") * 2  # claims 10^10 pixels; the checksum is not read
    assert not image_check.header_ok(bomb[:16] + ihdr_size + bomb[24:])


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("check", ["decode", "header"])
def test_a_memoryview_is_checked_like_its_bytes(name, check):
    """The shard stage hands the checks memoryviews of a mapped tar; padded, cut and whole images agree."""
    for data in (FORMATS[name], FORMATS[name] + bytes(7), FORMATS[name][:-3], b"", b"\0"):
        assert image_check.CHECKS[check](memoryview(data)) == image_check.CHECKS[check](data)


def full_decode(data: bytes) -> bool:
    """The reference verdict: Pillow loads every pixel at full size."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any failure is a rejection, as in the check
        return False


def damaged_jpegs() -> list[bytes]:
    """Noisy and smooth, baseline and progressive, 4:4:4 and 4:2:0 JPEGs of 48 and 160 px, each cut at 12 places,
    with one byte changed (10 times) and with a run of 32 random bytes (3 times)."""
    rng = np.random.default_rng(3)
    damaged = []
    for size in (48, 160):
        for smooth in (False, True):
            for progressive, subsampling in ((False, 0), (True, 2)):
                pixels = rng.integers(0, 256, (8, 8, 3) if smooth else (size, size, 3), dtype=np.uint8)
                image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=90, progressive=progressive, subsampling=subsampling)
                data = buffer.getvalue()
                damaged += [data[:int(len(data) * f)] for f in np.linspace(0.05, 0.99, 12)]
                for run in [1] * 10 + [32] * 3:
                    at = int(rng.integers(100, len(data) - run - 2))
                    changed = bytearray(data)
                    changed[at:at + run] = rng.integers(0, 256, run, dtype=np.uint8).tobytes()
                    damaged.append(bytes(changed))
    return damaged


def test_the_decode_check_of_a_jpeg_at_one_eighth_scale_rejects_what_a_full_decode_rejects():
    verdicts = [(image_check.decodes(data), full_decode(data)) for data in damaged_jpegs()]
    assert [ours for ours, _ in verdicts] == [full for _, full in verdicts]
    assert sum(not full for _, full in verdicts) >= len(verdicts) // 3  # the damage is seen, not passed by both
