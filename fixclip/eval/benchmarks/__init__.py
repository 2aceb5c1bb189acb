"""Benchmark adapters: each reads a published on-disk layout from local paths and returns a ``RetrievalBenchmark``
or ``ClassificationBenchmark``. ``ADAPTERS`` maps the ``kind`` of an ``evaluate.benchmarks`` entry to its loader;
the entry's other keys are the loader's keyword arguments. Protocols: README.md in this folder."""
from . import coco, dci, docci, iiw, imagefolder, karpathy, sharegpt4v, toy, urban1k
from .types import Benchmark, ClassificationBenchmark, RetrievalBenchmark

ADAPTERS = {
    "toy": toy.load,
    "urban1k": urban1k.load,
    "sharegpt4v": sharegpt4v.load,
    "dci": dci.load,
    "iiw": iiw.load,
    "docci": docci.load,
    "coco_karpathy": karpathy.load,
    "flickr30k_karpathy": karpathy.load,
    "coco_val2017": coco.load,
    "imagefolder": imagefolder.load,
}

__all__ = ["ADAPTERS", "Benchmark", "ClassificationBenchmark", "RetrievalBenchmark"]
