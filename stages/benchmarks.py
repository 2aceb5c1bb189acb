"""DVC stage `benchmarks`: the images of every benchmark `evaluate` is configured with -> their fingerprints.

Renders the held-out toy benchmark when a toy benchmark is listed: its test split into --toy-benchmark and its
development split into --toy-benchmark-dev (evaluate reads them there; they are written here, before the shard
stage, so that training data can be checked against both), then fingerprints every distinct benchmark image into
--fingerprints (pipeline/decontaminate/index.py), which the shard stage drops near copies of. --metrics counts the
images per benchmark.
"""
import time

from pipeline.decontaminate.benchmarks import BenchmarkImageError, fingerprint_benchmarks
from core.outputs import write_json
from pipeline.params import exit_on_params_error, load_params
from pipeline.stage_args import stage_paths
from pipeline.toyworld.benchmark import generate


def main() -> None:
    args = stage_paths("benchmarks", "toy_benchmark", "toy_benchmark_dev", "fingerprints", "metrics")
    params = load_params()
    start = time.perf_counter()
    toy = params.evaluate.toy
    splits = (("test", toy, args.toy_benchmark), ("development", toy.development(), args.toy_benchmark_dev))
    for split, split_params, folder in splits:
        folder.mkdir(parents=True, exist_ok=True)
        if any(entry.kind == "toy" for entry in params.evaluate.benchmarks):
            stats = generate(split_params, params.source.toyworld, params.download, folder)
            print(f"benchmarks: toy benchmark, {split} split: {stats['share_over_77_tokens']:.0%} of long descriptions "
                  f"over 77 tokens, {stats['share_twins_equal_in_first_77_tokens']:.0%} of twin pairs equal in their "
                  "first 77")
    metrics = fingerprint_benchmarks(params.evaluate.benchmarks, args.toy_benchmark, args.fingerprints,
                                     args.toy_benchmark_dev)
    write_json(args.metrics, metrics)
    print(f"benchmarks: {metrics['images']} distinct images of {len(metrics['images_per_benchmark'])} benchmarks "
          f"fingerprinted in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    with exit_on_params_error(BenchmarkImageError):
        main()
