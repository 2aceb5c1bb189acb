"""DVC stage `shard`: data/raw + data/captions -> data/shards/{train,val}/*.tar + index.parquet + metrics/shard.json.

With shard.decontaminate, images are checked against data/benchmark_fingerprints (the benchmarks stage's)."""
from pathlib import Path

from pipeline.decontaminate.downloaded import Decontamination
from pipeline.decontaminate.index import FingerprintError, read
from pipeline.shard import writer
from core.outputs import write_json
from pipeline.params import exit_on_params_error, load_params

RAW = Path("data/raw")
CAPTIONS = Path("data/captions")
FINGERPRINTS = Path("data/benchmark_fingerprints")
OUT = Path("data/shards")
METRICS = Path("metrics/shard.json")


def main() -> None:
    all_params = load_params()
    params = all_params.shard
    decontamination = None
    if params.decontaminate:
        read(FINGERPRINTS)  # fails here, before any work, if the benchmarks stage has not run
        decontamination = Decontamination(FINGERPRINTS, params.decontaminate_threshold,
                                          all_params.download.resize_mode)
    metrics = writer.run(params, RAW, CAPTIONS, OUT, decontamination)
    write_json(METRICS, metrics)
    print(f"shard: {metrics['train']} train + {metrics['val']} val of {metrics['raw_images']} images; "
          f"{metrics['dropped_benchmark_duplicate']} copies of benchmark images dropped")


if __name__ == "__main__":
    with exit_on_params_error(FingerprintError):
        main()
