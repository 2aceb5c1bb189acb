"""The benchmarks `evaluate` is configured with, as the stages read them: where the toy benchmark is written, and
each entry's adapter (fixclip/eval/benchmarks) called with the entry's options.

The toy benchmark has two splits of the same shape: the test split (`evaluate.toy.seed`, in TOY_DIR), which the
tables report, and the development split (`evaluate.toy.dev_seed`, in DEV_TOY_DIR), on which set-up choices are
made (docs/evaluation.md, "Protocol"). Real benchmarks have no development split here.
"""
from dataclasses import replace
from pathlib import Path

from fixclip.eval.benchmarks import Benchmark

TOY_DIR = Path("data/toy_benchmark")  # written by the benchmarks stage, read by evaluate
DEV_TOY_DIR = Path("data/toy_benchmark_dev")
DEV = "dev"  # the development split's key in metrics/eval_dev.json and the prefix of its fingerprinted names


def dev_entries(entries) -> list:
    """The entries scored on the development split: the toy ones."""
    return [entry for entry in entries if entry.kind == "toy"]


def load_benchmark(entry, toy_dir: Path = TOY_DIR) -> Benchmark:
    """The adapter of `entry.kind` called with the entry's options (toy: the generated folder), captions cut to
    `max_text_tokens` when set."""
    benchmark = entry.load(**({"root": str(toy_dir)} if entry.kind == "toy" else {}))
    return benchmark if entry.max_text_tokens is None else replace(benchmark, max_text_tokens=entry.max_text_tokens)
