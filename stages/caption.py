"""DVC stage `caption`: --raw -> --captions/<shard>.parquet + --metrics; the servers' logs go to --logs.

Starts `caption.num_servers` vLLM servers (or uses `caption.endpoints`; with `caption.distributor: ray`, each of
`caption.ray.workers` Ray workers starts its own), writes `caption.captions_per_image` captions per image from as
many distinct `caption.prompts` (chosen by the image key), filters the captions, and resumes shard by shard after a
crash. Before any server starts, a request for an image of `download.image_size` must fit
`caption.server.max_model_len`.
"""
from pipeline.caption import run as caption_run
from pipeline.params import exit_on_params_error, load_params
from pipeline.stage_args import stage_paths


def main() -> None:
    args = stage_paths("caption", "raw", "captions", "logs", "metrics")
    params = load_params()
    download = params.download
    # The square side download writes (border, center_crop; keep_ratio*: the shorter/longer side); `no`: none.
    image_size = None if download.resize_mode == "no" else download.image_size
    metrics = caption_run.run(params.caption, args.raw, args.captions, args.metrics, args.logs, image_size)
    print(f"caption: {metrics['ok']}/{metrics['captions']} captions kept ({metrics['captions_per_image']} per "
          f"image), {metrics['images_per_s']} images/s")


if __name__ == "__main__":
    with exit_on_params_error():
        main()
