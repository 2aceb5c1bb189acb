"""The benchmarks `evaluate` is configured with, as the stages read them: where the toy benchmark is written, and
each entry's adapter (fixclip/eval/benchmarks) called with the entry's options."""
from dataclasses import replace
from pathlib import Path

from fixclip.eval.benchmarks import ADAPTERS, Benchmark

TOY_DIR = Path("data/toy_benchmark")  # written by the benchmarks stage, read by evaluate


def load_benchmark(entry, toy_dir: Path = TOY_DIR) -> Benchmark:
    """The adapter of `entry.kind` called with the entry's options (toy: the generated folder), captions cut to
    `max_text_tokens` when set."""
    kwargs = entry.adapter_kwargs()
    if entry.kind == "toy":
        kwargs["root"] = str(toy_dir)
    benchmark = ADAPTERS[entry.kind](**kwargs)
    return benchmark if entry.max_text_tokens is None else replace(benchmark, max_text_tokens=entry.max_text_tokens)
