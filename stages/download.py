"""DVC stage `download`: data/urls.parquet -> data/raw/ (img2dataset webdataset shards) + metrics/download.json."""
from pathlib import Path

from pipeline.download import run as download_run
from core.outputs import write_json
from pipeline.params import exit_on_params_error, load_params

URLS = Path("data/urls.parquet")
RAW = Path("data/raw")
METRICS = Path("metrics/download.json")


def main() -> None:
    params = load_params().download
    summary = download_run.run(params, URLS, RAW)
    write_json(METRICS, summary)
    print(f"download: {summary['success']}/{summary['urls']} images, failures {summary['failures']}")


if __name__ == "__main__":
    with exit_on_params_error():
        main()
