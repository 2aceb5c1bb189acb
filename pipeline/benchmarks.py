"""The benchmarks `evaluate` is configured with, as the stages read them: each entry's adapter
(fixclip/eval/benchmarks) called with the entry's options (the toy benchmark: the folder the benchmarks stage wrote).

The toy benchmark has two splits of the same shape: the test split (`evaluate.toy.seed`), which the tables report,
and the development split (`evaluate.toy.dev_seed`), on which set-up choices are made (docs/evaluation.md,
"Protocol"). Real benchmarks have no development split here.
"""
from dataclasses import replace
from pathlib import Path

from fixclip.eval.benchmarks import Benchmark

DEV = "dev"  # the development split's key in evaluate's --dev-metrics and the prefix of its fingerprinted names


def dev_entries(entries) -> list:
    """The entries scored on the development split: the toy ones."""
    return [entry for entry in entries if entry.kind == "toy"]


def load_benchmark(entry, toy_dir: Path) -> Benchmark:
    """The adapter of `entry.kind` called with the entry's options (toy: the generated folder), captions cut to
    `max_text_tokens` when set."""
    benchmark = entry.load(**({"root": str(toy_dir)} if entry.kind == "toy" else {}))
    return benchmark if entry.max_text_tokens is None else replace(benchmark, max_text_tokens=entry.max_text_tokens)
