"""What an image is compared by: its canonical picture, a coarse descriptor for lookup, an aligned distance to check.

Near copies are resized, re-encoded, cropped by up to ~10% or turned grey. Perceptual hashes fail on the toy world
in both directions: its images are mostly flat background, so JPEG noise flips the bits of the flat areas while
unrelated scenes share their background's bits (docs/decontamination.md, "The fingerprint, and why not a perceptual
hash", has the measurements). So the comparison is in two steps:

1. Lookup (`coarse`): a blurred 8 x 8 thumbnail (RGB, or luminance for a grey image), compared by RMS difference
   with every benchmark image and with crops of it that keep 90% of a side (`crop_boxes`), so a cropped copy is near
   one of them. Cheap and tolerant: it proposes candidates, it decides nothing.
2. Check (`aligned_distance`): the two canonical pictures, lightly blurred, aligned by template matching over the
   scales a <=10% crop leaves (per axis) and every offset, scored by normalised cross-correlation. A copy aligns to
   ~1 (distance ~0) whatever its resizing or compression; another scene with the same background does not, because
   NCC compares structure, not the share of equal background pixels.

Every image is first stretched to a square `CANONICAL` x `CANONICAL` picture: a copy with the original's aspect
stretches alike, and a crop of one axis is one of the per-axis scales the check tries. Grey images (every pixel
R = G = B up to JPEG noise) are compared in luminance (ITU-R 601 luma, as Pillow's "L"), others in colour.
"""
import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

CANONICAL = 64  # side of the canonical picture (pixels)
COARSE = 8  # side of the lookup thumbnail
COARSE_BLUR = 4.0  # Gaussian sigma of the lookup thumbnail, in pixels of a CANONICAL / 2 picture
CHECK_BLUR = 2.0  # Gaussian sigma of the check, in canonical pixels: evens out JPEG ringing and resampling
CROP_KEEP = 0.9  # the lookup also holds crops keeping this share of a side ...
CROP_STEPS = 3  # ... at this many offsets per axis (0, half, all of the slack)
CHECK_SCALES = (0.9, 0.95, 1.0)  # per-axis share of the benchmark picture a copy may show
GREY_TOLERANCE = 6  # max |channel - mean of channels| (0-255) of a grey image's 16 x 16 thumbnail
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, the weights of Pillow's convert("L")


class UnreadableImage(ValueError):
    """The bytes do not decode as an image."""


def decode(data: bytes | memoryview) -> Image.Image:
    """An RGB picture of the image; UnreadableImage if it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (2 * CANONICAL, 2 * CANONICAL))  # JPEG: decode at a reduced scale where it can
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise UnreadableImage("not an image format Pillow reads") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the same error
        raise UnreadableImage(str(exc)) from exc


def canonical(image: Image.Image, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The image (or its `box`) stretched to CANONICAL x CANONICAL RGB, uint8."""
    if box is not None:
        image = image.crop(box)
    array = np.asarray(image.convert("RGB"))
    return cv2.resize(array, (CANONICAL, CANONICAL), interpolation=cv2.INTER_AREA)


def is_grey(picture: np.ndarray) -> bool:
    """Whether a canonical picture has no colour (a greyscale image, maybe re-encoded as JPEG)."""
    small = cv2.resize(picture, (16, 16), interpolation=cv2.INTER_AREA).astype(np.int16)
    return int(np.abs(small - small.mean(axis=2, keepdims=True)).max()) <= GREY_TOLERANCE


def luminance(picture: np.ndarray) -> np.ndarray:
    """(H, W, 1) float32 luma of an RGB picture."""
    return (picture.astype(np.float32) @ LUMA)[:, :, None]


def channels(picture: np.ndarray, grey: bool) -> np.ndarray:
    """The picture as float32 (H, W, C): luma for grey comparisons, RGB otherwise."""
    return luminance(picture) if grey else picture.astype(np.float32)


def crop_boxes(size: int = CANONICAL) -> list[tuple[int, int, int, int]]:
    """The lookup's crops of a square picture: the whole, CROP_KEEP of both sides at CROP_STEPS x CROP_STEPS offsets,
    and CROP_KEEP of one side at CROP_STEPS offsets (x0, y0, x1, y1)."""
    keep = round(size * CROP_KEEP)
    offsets = np.linspace(0, size - keep, CROP_STEPS).round().astype(int).tolist()
    boxes = [(0, 0, size, size)]
    boxes += [(x, y, x + keep, y + keep) for y in offsets for x in offsets]
    boxes += [(x, 0, x + keep, size) for x in offsets] + [(0, y, size, y + keep) for y in offsets]
    return boxes


def coarse(picture: np.ndarray, grey: bool) -> np.ndarray:
    """The lookup descriptor of a (crop of a) picture: blurred COARSE x COARSE thumbnail, flattened float32."""
    half = cv2.resize(channels(picture, grey), (CANONICAL // 2, CANONICAL // 2), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(half, (0, 0), COARSE_BLUR, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(blurred, (COARSE, COARSE), interpolation=cv2.INTER_AREA).reshape(-1)


def lookup_descriptors(picture: np.ndarray, grey: bool) -> np.ndarray:
    """(len(crop_boxes()), dims) descriptors of a benchmark picture and of its crops."""
    return np.stack([coarse(picture[y0:y1, x0:x1], grey) for x0, y0, x1, y1 in crop_boxes()])


def check_picture(picture: np.ndarray, grey: bool) -> np.ndarray:
    """What the check compares: the picture in the comparison's channels, blurred (H, W, C) float32."""
    blurred = cv2.GaussianBlur(channels(picture, grey), (0, 0), CHECK_BLUR, borderType=cv2.BORDER_REFLECT)
    return blurred.reshape(CANONICAL, CANONICAL, -1)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two (H, W, C) float pictures on the 0-255 scale: Gaussian windows of sigma 1.5,
    C1 = (0.01 L)^2, C2 = (0.03 L)^2 (Wang et al., "Image quality assessment: from error visibility to structural
    similarity", IEEE TIP 2004, eq. 13), averaged over pixels and channels."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def smooth(x):
        return cv2.GaussianBlur(x, (0, 0), 1.5, borderType=cv2.BORDER_REFLECT).reshape(x.shape)

    mean_a, mean_b = smooth(a), smooth(b)
    var_a = smooth(a * a) - mean_a ** 2
    var_b = smooth(b * b) - mean_b ** 2
    cov = smooth(a * b) - mean_a * mean_b
    index = (2 * mean_a * mean_b + c1) * (2 * cov + c2) / ((mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def aligned_distance(query: np.ndarray, benchmark: np.ndarray) -> float:
    """How far the query's check picture is from the window of the benchmark's that aligns best with it: the larger
    of 1 - NCC and 1 - SSIM there (0: the same picture). The window is found by normalised cross-correlation
    (template matching) over per-axis scales CHECK_SCALES and every offset. Each measure misses what the other sees:
    NCC, normalised by contrast, barely counts faint objects one picture has and the other lacks (SSIM does); SSIM
    rates two mostly flat pictures alike for their equal background (NCC, which compares structure only, does not)."""
    best, window = -2.0, None
    for keep_x in CHECK_SCALES:
        for keep_y in CHECK_SCALES:
            size = (round(CANONICAL / keep_x), round(CANONICAL / keep_y))
            scaled = cv2.resize(benchmark, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
            _, score, _, (x, y) = cv2.minMaxLoc(cv2.matchTemplate(scaled, query, cv2.TM_CCOEFF_NORMED))
            if score > best:
                best, window = score, scaled[y:y + CANONICAL, x:x + CANONICAL]
    return max(1.0 - best, 1.0 - ssim(query, window))


def content_box(size: tuple[int, int], original: tuple[int, int] | None,
                resize_mode: str) -> tuple[int, int, int, int] | None:
    """The part of a downloaded image that shows the original: img2dataset's `border` mode pads the resized image
    to a square with white, centred (albumentations' PadIfNeeded); None where nothing was padded."""
    width, height = size
    if resize_mode != "border" or original is None or width != height or original[0] == original[1]:
        return None
    scale = width / max(original)
    inner_width, inner_height = min(width, round(original[0] * scale)), min(height, round(original[1] * scale))
    if (inner_width, inner_height) == (width, height):
        return None
    x0, y0 = (width - inner_width) // 2, (height - inner_height) // 2
    return x0, y0, x0 + max(1, inner_width), y0 + max(1, inner_height)
