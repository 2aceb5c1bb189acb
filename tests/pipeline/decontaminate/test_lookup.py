"""Fingerprints and lookup on real photos (scikit-image's samples) and toy-world images: near copies are found as
the shard stage sees them (after img2dataset's resizer), other images are not."""
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.decontaminate import fingerprint
from pipeline.decontaminate.copies import COPIES
from pipeline.decontaminate.downloaded import Decontamination
from pipeline.decontaminate.index import FLAT_BELOW, BenchmarkIndex, FingerprintError, write
from pipeline.params import ShardParams
from pipeline.toyworld.scenes import make_record

skimage_data = pytest.importorskip("skimage.data")
THRESHOLD = ShardParams().decontaminate_threshold
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "horse", "page")  # non-square among them


def photo(name: str) -> Image.Image:
    array = np.asarray(getattr(skimage_data, name)())
    return Image.fromarray(array.astype(np.uint8) * 255 if array.dtype == bool else array).convert("RGB")


def downloaded(data: bytes, size: int, mode: str) -> tuple[bytes, tuple[int, int]]:
    """What img2dataset stores for `data` (and the original size its parquet records)."""
    from img2dataset.resizer import Resizer

    stored, _, _, width, height, error = Resizer(size, mode, False, encode_quality=95, encode_format="jpg")(
        io.BytesIO(data))
    assert error is None
    return stored, (width, height)


def fingerprints(folder, names, images) -> None:
    pictures = np.stack([fingerprint.canonical(image) for image in images])
    write(folder, pd.DataFrame({"benchmark": "bench", "item": names}), pictures)


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    fingerprints(folder, list(PHOTOS), [photo(name) for name in PHOTOS])
    return folder


@pytest.mark.parametrize("mode", ["border", "keep_ratio_largest", "center_crop"])
def test_every_kind_of_copy_of_a_photo_is_found_after_download(photo_index, mode):
    """Each copy of each photo, downloaded at 256 px: border pads non-square photos with white (the check leaves
    the padding out), center_crop keeps the middle square only: found when the crop leaves >= 90% of a side."""
    rng = np.random.default_rng(0)
    check = Decontamination(photo_index, THRESHOLD, mode)
    names = [name for name in PHOTOS if mode != "center_crop" or _square_enough(photo(name))]
    stored, originals, expected = [], [], []
    for name in names:
        for kind, copy in COPIES.items():
            data, original = downloaded(copy(photo(name), rng)[0], 256, mode)
            stored.append(data)
            originals.append(original)
            expected.append((name, kind))
    found = check.check(stored, originals)
    missed = [want for want, match in zip(expected, found) if match is None or match.item != want[0]]
    assert not missed, missed


def _square_enough(image: Image.Image) -> bool:
    return min(image.size) / max(image.size) >= 0.9


def test_photos_are_not_copies_of_each_other(photo_index, tmp_path):
    """Each photo against an index of the others: no match (nor of its greyscale version)."""
    for name in PHOTOS:
        others = [other for other in PHOTOS if other != name]
        fingerprints(tmp_path / name, others, [photo(other) for other in others])
        index = BenchmarkIndex(tmp_path / name)
        pictures = [fingerprint.canonical(photo(name)), fingerprint.canonical(photo(name).convert("L"))]
        assert index.match(pictures, THRESHOLD) == [None, None], name


def test_the_inverted_file_index_finds_what_the_exact_one_does(tmp_path):
    """Above FLAT_BELOW descriptors the lookup clusters them (faiss IVF): copies of toy scenes are still proposed
    with their own scene among the candidates."""
    count = FLAT_BELOW // 16 + 50
    images = [make_record(5, i, 64, 3, 3, 6, True).image for i in range(count)]
    fingerprints(tmp_path, [str(i) for i in range(count)], images)
    index = BenchmarkIndex(tmp_path)
    assert type(index.searchers[False]).__name__ == "IndexIVFFlat"
    rng = np.random.default_rng(1)
    chosen = rng.choice(count, size=40, replace=False).tolist()
    copies = [fingerprint.canonical(fingerprint.decode(COPIES["crop 10%"](images[i], rng)[0])) for i in chosen]
    found = index.candidates(copies, [False] * len(copies))
    assert all(i in items for i, items in zip(chosen, found))
    matches = index.match(copies, THRESHOLD)
    assert [m.item if m else None for m in matches] == [str(i) for i in chosen]


def test_a_flat_image_matches_nothing(photo_index):
    index = BenchmarkIndex(photo_index)
    assert index.match([np.full((64, 64, 3), 128, np.uint8)], THRESHOLD) == [None]


def test_content_box_undoes_border_padding():
    image = photo("rocket")  # 640 x 427
    stored, original = downloaded(_png(image), 96, "border")
    box = fingerprint.content_box((96, 96), original, "border")
    assert box == (0, 16, 96, 80)
    padded = np.asarray(fingerprint.decode(stored))
    assert padded[:box[1] - 1].min() >= 250 and padded[box[3] + 1:].min() >= 250  # white bands outside
    assert fingerprint.content_box((96, 96), original, "keep_ratio") is None
    assert fingerprint.content_box((96, 96), (500, 500), "border") is None


def _png(image: Image.Image) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()


def test_a_missing_fingerprint_folder_is_named(tmp_path):
    with pytest.raises(FingerprintError, match=f"{tmp_path}: no benchmark fingerprints here"):
        BenchmarkIndex(tmp_path)
