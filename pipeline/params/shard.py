"""The `shard:` section: deterministic webdataset shards for training."""
from typing import Literal

from pydantic import Field

from pipeline.params.section import Section


class ShardParams(Section):
    """Deterministic webdataset shards for training (see pipeline/shard/writer.py)."""

    seed: int = 0  # which samples go to val (a seeded hash of each uid) and the order they are written in
    # Long text of each sample: the MLLM's caption; the source's ground-truth description (toy world only), the
    # control that measures what the captioner's errors cost; or the source's alt text, the control that tells a
    # long-text fine-tune from any fine-tune. Same images every way (caption filters still apply).
    long_text: Literal["caption", "ground_truth", "alt_text"] = "caption"
    samples_per_shard: int = Field(1000, ge=1)
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    # Short text of the short branch: the long caption's first sentence (Long-CLIP's convention), the source's alt
    # text, or both (alt text for a seeded `alt_text_rate` of samples).
    short_text: Literal["first_sentence", "alt_text", "both"] = "alt_text"
    alt_text_rate: float = Field(0.5, ge=0.0, le=1.0)
    # How an image is found usable (else dropped as undecodable_image): decode the whole image (a JPEG at 1/8 scale,
    # which still decodes every compressed block), or read its header, size and end marker only (enough for
    # img2dataset's re-encoded output; see pipeline/shard/image_check.py).
    check_images: Literal["decode", "header"] = "decode"
    # Processes reading raw tars and writing shards; the bytes written do not depend on it.
    workers: int = Field(2, ge=1)
    # Where those run: local processes, or Ray tasks (RAY_ADDRESS, else a local instance of `workers` CPUs); every
    # node must see data/ at the same path.
    distributor: Literal["local", "ray"] = "local"
    # Drop near copies of any benchmark image evaluate is configured with (the benchmarks stage's fingerprints) as
    # `benchmark_duplicate`. The threshold is on pipeline/decontaminate/fingerprint.py's aligned distance (0: the
    # same picture); 0.075 was picked from the measurements in docs/decontamination.md.
    decontaminate: bool = True
    decontaminate_threshold: float = Field(0.075, gt=0.0, lt=1.0)
