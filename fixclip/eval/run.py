"""Run benchmarks on several models: ``{benchmark: {model: metrics}}`` with models side by side.

Retrieval metrics: I2T and T2I R@1/5/10 in percent over the benchmark's distinct captions (see
``RetrievalBenchmark.texts_and_pairs``); classification: top-1 / top-5 accuracy in percent with prompt ensembling.
"""
import time

import torch

from .benchmarks import Benchmark, ClassificationBenchmark, RetrievalBenchmark
from .encode import CachedEncoder
from .metrics import class_embeddings, retrieval_recall, zero_shot_accuracy


def evaluate_retrieval(encoder: CachedEncoder, benchmark: RetrievalBenchmark) -> dict[str, float]:
    texts, pair_text, pair_image = benchmark.texts_and_pairs()
    metrics = retrieval_recall(encoder.images(benchmark.images), encoder.texts(texts, benchmark.max_text_tokens),
                               pair_text, pair_image)
    metrics.update(images=len(benchmark.images), texts=len(texts), duplicate_captions=benchmark.num_captions - len(texts))
    return metrics


def evaluate_zeroshot(encoder: CachedEncoder, benchmark: ClassificationBenchmark) -> dict[str, float]:
    prompts = benchmark.prompts()
    flat = encoder.texts([p for per_class in prompts for p in per_class])
    classes = class_embeddings(flat.view(len(prompts), len(benchmark.templates), -1))
    metrics = zero_shot_accuracy(encoder.images(benchmark.images), classes, torch.tensor(benchmark.labels),
                                 ks=(1, min(5, len(prompts))))
    metrics.update(images=len(benchmark.images), classes=len(prompts))
    return metrics


def evaluate_benchmark(encoder: CachedEncoder, benchmark: Benchmark) -> dict[str, float]:
    """Metrics of one model on one benchmark, with the seconds it took (encoding included)."""
    start = time.perf_counter()
    if isinstance(benchmark, RetrievalBenchmark):
        metrics = evaluate_retrieval(encoder, benchmark)
    else:
        metrics = evaluate_zeroshot(encoder, benchmark)
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    return metrics


def evaluate_all(encoders: list[CachedEncoder], benchmarks: dict[str, Benchmark]) -> dict[str, dict[str, dict]]:
    """``{benchmark name: {model name: metrics}}``; each encoder keeps its cache across benchmarks."""
    return {name: {encoder.name: evaluate_benchmark(encoder, benchmark) for encoder in encoders}
            for name, benchmark in benchmarks.items()}


HEADLINE_LABELS = {"i2t": "I2T R@1", "t2i": "T2I R@1", "top1": "top-1"}


def headline(metrics: dict) -> dict[str, float]:
    """One model's headline scores on one benchmark: {"i2t", "t2i"} R@1 for retrieval, {"top1"} for classification."""
    if "top1" in metrics:
        return {"top1": metrics["top1"]}
    return {d: metrics[f"{d}_R@1"] for d in ("i2t", "t2i")}


def plot_rows(results: dict[str, dict[str, dict]], model: str) -> list[dict]:
    """One row per benchmark and direction for a bar plot: I2T / T2I R@1 for retrieval, top-1 for classification."""
    return [{"task": f"{benchmark} {HEADLINE_LABELS[key]}", "score": score}
            for benchmark, per_model in results.items() for key, score in headline(per_model[model]).items()]
