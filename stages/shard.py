"""DVC stage `shard`: data/raw + data/captions -> data/shards/{train,val}/*.tar + index.parquet + metrics/shard.json."""
from pathlib import Path

from pipeline.shard import writer
from pipeline.outputs import write_json
from pipeline.params import exit_on_params_error, load_params

RAW = Path("data/raw")
CAPTIONS = Path("data/captions")
OUT = Path("data/shards")
METRICS = Path("metrics/shard.json")


def main() -> None:
    params = load_params().shard
    metrics = writer.run(params, RAW, CAPTIONS, OUT)
    write_json(METRICS, metrics)
    print(f"shard: {metrics['train']} train + {metrics['val']} val of {metrics['raw_images']} images")


if __name__ == "__main__":
    with exit_on_params_error():
        main()
