"""DVC stage `download`: --urls -> --raw (img2dataset webdataset shards) + --metrics; the toy world's images are
opened from --toyworld (the download guard allows that folder besides `download.allow_file_roots`)."""
from pipeline.download import run as download_run
from core.outputs import write_json
from pipeline.params import exit_on_params_error, load_params
from pipeline.stage_args import stage_paths


def main() -> None:
    args = stage_paths("download", "urls", "toyworld", "raw", "metrics")
    params = load_params().download
    summary = download_run.run(params, args.urls, args.raw, toy_world=args.toyworld)
    write_json(args.metrics, summary)
    print(f"download: {summary['success']}/{summary['urls']} images, failures {summary['failures']}")


if __name__ == "__main__":
    with exit_on_params_error():
        main()
