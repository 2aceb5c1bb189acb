"""Benchmark adapters: each module reads a published on-disk layout from local paths and returns a
``RetrievalBenchmark`` or ``ClassificationBenchmark`` (its ``load``), and defines the ``evaluate.benchmarks`` entry
that names it (its ``kind``; the entry's other keys are ``load``'s keyword arguments). ``ENTRIES`` is the one
registry: params validation reads the entries from it, the stages their adapters. Protocols: README.md here."""
from typing import Annotated, Union, get_args

from pydantic import Field

from . import coco, dci, docci, iiw, imagefolder, karpathy, sharegpt4v, toy, urban1k
from .entry import Entry
from .types import Benchmark, ClassificationBenchmark, RetrievalBenchmark

ENTRIES: tuple[type[Entry], ...] = (toy.ToyEntry, urban1k.Urban1kEntry, sharegpt4v.ShareGPT4VEntry, dci.DCIEntry,
                                    iiw.IIWEntry, docci.DOCCIEntry, karpathy.KarpathyEntry, coco.CocoVal2017Entry,
                                    imagefolder.ImageFolderEntry)
# kind -> entry class (a class may serve several kinds, as the Karpathy splits of COCO and Flickr30k)
BENCHMARKS: dict[str, type[Entry]] = {kind: entry for entry in ENTRIES
                                      for kind in get_args(entry.model_fields["kind"].annotation)}
BenchmarkEntry = Annotated[Union[ENTRIES], Field(discriminator="kind")]

__all__ = ["BENCHMARKS", "ENTRIES", "Benchmark", "BenchmarkEntry", "ClassificationBenchmark", "Entry",
           "RetrievalBenchmark"]
