"""DVC stage `source`: params `source` -> --urls (a parquet of url, uid, alt_text, ...) + --metrics.

kind `toyworld` renders the synthetic scenes into --toyworld and lists them as file: URLs;
kind `url_list` normalises a user's list (dropped rows counted by reason), streaming it into --urls.
"""
import shutil

from pipeline.source import url_list
from pipeline.toyworld import scenes
from core.outputs import write_json, write_parquet
from pipeline.params import exit_on_params_error, load_params
from pipeline.stage_args import stage_paths


def main() -> None:
    args = stage_paths("source", "urls", "toyworld", "metrics")
    params = load_params().source
    shutil.rmtree(args.toyworld, ignore_errors=True)
    if params.kind == "toyworld":
        urls = scenes.generate(params.toyworld, args.toyworld)
        counts = {"rows": len(urls), "urls": len(urls)}
        write_parquet(args.urls, urls)
    else:
        args.toyworld.mkdir(parents=True)  # declared out of the stage; empty for url lists
        counts = url_list.normalise(params.url_list, args.urls)
    write_json(args.metrics, {"kind": params.kind, **counts})
    print(f"source: {counts['urls']} urls -> {args.urls}")


if __name__ == "__main__":
    with exit_on_params_error():
        main()
