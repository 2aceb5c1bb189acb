"""DVC stage `benchmarks`: the images of every benchmark `evaluate` is configured with -> their fingerprints.

Renders the held-out toy benchmark when a toy benchmark is listed: its test split into data/toy_benchmark/ and its
development split into data/toy_benchmark_dev/ (evaluate reads them there; they are written here, before the shard
stage, so that training data can be checked against both), then fingerprints every distinct benchmark image into
data/benchmark_fingerprints/ (pipeline/decontaminate/index.py), which the shard
stage drops near copies of. metrics/benchmarks.json counts the images per benchmark.
"""
import time
from pathlib import Path

from pipeline.benchmarks import DEV_TOY_DIR, TOY_DIR
from pipeline.decontaminate.benchmarks import BenchmarkImageError, fingerprint_benchmarks
from core.outputs import write_json
from pipeline.params import exit_on_params_error, load_params
from pipeline.toyworld.benchmark import generate

FINGERPRINTS = Path("data/benchmark_fingerprints")
METRICS = Path("metrics/benchmarks.json")


def main() -> None:
    params = load_params()
    start = time.perf_counter()
    toy = params.evaluate.toy
    for split, split_params, folder in (("test", toy, TOY_DIR), ("development", toy.development(), DEV_TOY_DIR)):
        folder.mkdir(parents=True, exist_ok=True)
        if any(entry.kind == "toy" for entry in params.evaluate.benchmarks):
            stats = generate(split_params, params.source.toyworld, params.download, folder)
            print(f"benchmarks: toy benchmark, {split} split: {stats['share_over_77_tokens']:.0%} of long descriptions "
                  f"over 77 tokens, {stats['share_twins_equal_in_first_77_tokens']:.0%} of twin pairs equal in their "
                  "first 77")
    metrics = fingerprint_benchmarks(params.evaluate.benchmarks, TOY_DIR, FINGERPRINTS, DEV_TOY_DIR)
    write_json(METRICS, metrics)
    print(f"benchmarks: {metrics['images']} distinct images of {len(metrics['images_per_benchmark'])} benchmarks "
          f"fingerprinted in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    with exit_on_params_error(BenchmarkImageError):
        main()
