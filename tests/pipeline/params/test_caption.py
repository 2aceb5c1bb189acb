"""The caption section: bad values fail at load naming the key, and what enters the resume fingerprint."""
import pytest

from pipeline.params import ParamsError, parse_params


def caption(**values) -> dict:
    return {"caption": values}


@pytest.mark.parametrize("raw, message", [
    (caption(distributor="slurm"), "caption.distributor: input should be 'local' or 'ray'"),
    (caption(distributor="ray", ray={"address": "head-node"}),
     "caption.ray.address: 'head-node' is not host:port, ray://host:port or auto"),
    (caption(distributor="ray", ray={"workers": 0}), "caption.ray.workers: input should be greater than or equal to 1"),
    (caption(distributor="ray", ray={"gpus_per_worker": "1"}), "caption.ray.gpus_per_worker: expected int, got '1'"),
    (caption(distributor="ray", ray={"nodes": 2}), "caption.ray.nodes: unknown key"),
    (caption(distributor="ray", endpoints=["http://h:8000"]),
     "caption.endpoints: distributor ray starts the servers on its workers"),
    (caption(distributor="ray", gpus=["0"]), "caption.gpus: with distributor ray, Ray gives each worker its GPUs"),
    (caption(distributor="ray", num_servers=2, ray={"gpus_per_worker": 1}),
     "caption.ray.gpus_per_worker: 1, but each worker's num_servers (2) x server.tensor_parallel_size (1) = 2"),
])
def test_bad_distributor_params_name_the_key(raw, message):
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert message in str(info.value)


@pytest.mark.parametrize("address", [None, "auto", "10.0.0.5:6379", "ray://head:10001", "[::1]:6379"])
def test_ray_addresses_accepted(address):
    params = parse_params(caption(distributor="ray", num_servers=2, ray={"address": address, "gpus_per_worker": 2}))
    assert params.caption.ray.address == address


def test_distributor_is_not_part_of_the_caption_fingerprint():
    """Moving the same captioning onto Ray does not redo finished captions."""
    local = parse_params({}).caption
    on_ray = parse_params(caption(distributor="ray", ray={"workers": 4})).caption
    assert local.content_fingerprint() == on_ray.content_fingerprint()


def test_request_shaping_options_enter_the_fingerprint_only_when_set(tmp_path):
    """A chat template (its text) or processor settings change captions; unset, the default's stamp is unchanged."""
    default = parse_params({}).caption.content_fingerprint()
    assert "chat_template" not in default["server"] and "mm_processor_kwargs" not in default["server"]
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    shaped = parse_params(caption(server={"chat_template": str(template), "mm_processor_kwargs": {"max_pixels": 784}}))
    assert shaped.caption.content_fingerprint()["server"] == default["server"] | {
        "chat_template": "{{ messages }}", "mm_processor_kwargs": {"max_pixels": 784}}


def test_missing_chat_template_file_names_the_key(tmp_path):
    with pytest.raises(ParamsError, match="caption.server.chat_template: .* is not a file"):
        parse_params(caption(server={"chat_template": str(tmp_path / "none.jinja")}))


def test_engine_mode_and_gpu_knobs_stay_out_of_the_fingerprint_and_max_image_side_enters_it():
    """Switching engine or tuning throughput keeps finished captions; sending smaller images does not."""
    default = parse_params({}).caption.content_fingerprint()
    tuned = parse_params(caption(engine="in_process", server={
        "max_num_batched_tokens": 8192, "mm_processor_cache_gb": 4, "batch_invariant": True})).caption
    assert tuned.content_fingerprint() == default
    assert parse_params(caption(max_image_side=448)).caption.content_fingerprint() == default | {"max_image_side": 448}


@pytest.mark.parametrize("raw, message", [
    (caption(engine="in_process", endpoints=["http://h:8000"]), "caption.engine: in_process starts its own engines"),
    (caption(engine="in_process", server={"api_server_count": 2}), "caption.server.api_server_count: API servers exist with"),
    (caption(engine="offline"), "caption.engine: input should be 'in_process' or 'server'"),
    (caption(max_image_side=8), "caption.max_image_side: input should be greater than or equal to 16"),
])
def test_bad_engine_params_name_the_key(raw, message):
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert message in str(info.value)
