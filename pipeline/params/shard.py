"""The `shard:` section: deterministic webdataset shards for training."""
from typing import Literal

from pydantic import Field

from pipeline.params.section import Section


class ShardParams(Section):
    """Deterministic webdataset shards for training (see pipeline/shard/writer.py)."""

    seed: int = 0
    """Which samples go to val and the order they are written in (seeded hashes of the uids)."""
    long_text: Literal["caption", "ground_truth", "alt_text"] = "caption"
    """Caption (the MLLM's) | ground_truth (toy world: no captioner errors) | alt_text (any fine-tune). The long text
    of each sample: the MLLM's caption; the source's ground-truth description (toy world only), the control that
    measures what the captioner's errors cost; or the source's alt text, the control that tells a long-text fine-tune
    from any fine-tune. Same images every way (caption filters still apply)."""
    samples_per_shard: int = Field(1000, ge=1)
    """Samples per webdataset shard."""
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    """seeded by uid: the split is stable when the data grows"""
    short_text: Literal["first_sentence", "alt_text", "both"] = "alt_text"
    """alt_text (FIX-CLIP: the source's short caption) | first_sentence (Long-CLIP) | both: the short text of the
    short branch (both: the alt text for a seeded alt_text_rate of samples, else the first sentence)."""
    alt_text_rate: float = Field(0.5, ge=0.0, le=1.0)
    """with short_text: both, the seeded share of samples that get the alt text"""
    check_images: Literal["decode", "header"] = "decode"
    """Decode (whole image; JPEG at 1/8 scale) | header (format, size, end marker: img2dataset re-encodes): how an
    image is found usable, else dropped as undecodable_image. Decoding a JPEG at 1/8 scale still decodes every
    compressed block; the header check suffices for img2dataset's re-encoded output (pipeline/shard/image_check.py)."""
    workers: int = Field(2, ge=1)
    """Processes reading raw tars and writing shards; the bytes do not depend on it."""
    distributor: Literal["local", "ray"] = "local"
    """local (processes) | ray (tasks on RAY_ADDRESS or a local instance; shared storage): where the workers run;
    with ray, every node must see data/ at the same path."""
    decontaminate: bool = True
    """Drop near copies of any evaluate benchmark image as benchmark_duplicate (stage benchmarks): those in the
    benchmarks stage's fingerprints."""
    decontaminate_threshold: float = Field(0.075, gt=0.0, lt=1.0)
    """Aligned distance (0: same picture) at or below which an image is a copy:
    pipeline/decontaminate/fingerprint.py's distance; 0.075 was picked from the measurements in
    docs/decontamination.md."""
