"""DVC stage `source`: params `source` -> data/urls.parquet (url, uid, alt_text, ...) + metrics/source.json.

kind `toyworld` renders the synthetic scenes into data/toyworld/ and lists them as file: URLs;
kind `url_list` normalises a user's list (dropped rows counted by reason), streaming it into data/urls.parquet.
"""
import shutil
from pathlib import Path

from pipeline.source import url_list
from pipeline.toyworld import scenes
from core.outputs import write_json, write_parquet
from pipeline.params import exit_on_params_error, load_params

URLS = Path("data/urls.parquet")
TOYWORLD_DIR = Path("data/toyworld")
METRICS = Path("metrics/source.json")


def main() -> None:
    params = load_params().source
    shutil.rmtree(TOYWORLD_DIR, ignore_errors=True)
    if params.kind == "toyworld":
        urls = scenes.generate(params.toyworld, TOYWORLD_DIR)
        counts = {"rows": len(urls), "urls": len(urls)}
        write_parquet(URLS, urls)
    else:
        TOYWORLD_DIR.mkdir(parents=True)  # declared out of the stage; empty for url lists
        counts = url_list.normalise(params.url_list, URLS)
    write_json(METRICS, {"kind": params.kind, **counts})
    print(f"source: {counts['urls']} urls -> {URLS}")


if __name__ == "__main__":
    with exit_on_params_error():
        main()
