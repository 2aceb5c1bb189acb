"""DVC stage `shard`: --raw + --captions -> --out/{train,val}/*.tar + --out/index.parquet + --metrics.

With shard.decontaminate, images are checked against --fingerprints (the benchmarks stage's)."""
from pipeline.decontaminate.downloaded import Decontamination
from pipeline.decontaminate.index import FingerprintError, read
from pipeline.shard import writer
from core.outputs import write_json
from pipeline.params import exit_on_params_error, load_params
from pipeline.stage_args import stage_paths


def main() -> None:
    args = stage_paths("shard", "raw", "captions", "fingerprints", "out", "metrics")
    all_params = load_params()
    params = all_params.shard
    decontamination = None
    if params.decontaminate:
        read(args.fingerprints)  # fails here, before any work, if the benchmarks stage has not run
        decontamination = Decontamination(args.fingerprints, params.decontaminate_threshold,
                                          all_params.download.resize_mode)
    metrics = writer.run(params, args.raw, args.captions, args.out, decontamination)
    write_json(args.metrics, metrics)
    print(f"shard: {metrics['train']} train + {metrics['val']} val of {metrics['raw_images']} images; "
          f"{metrics['dropped_benchmark_duplicate']} copies of benchmark images dropped")


if __name__ == "__main__":
    with exit_on_params_error(FingerprintError):
        main()
