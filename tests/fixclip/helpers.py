"""Shared helpers for the fixclip tests (imported explicitly; not a pytest conftest)."""
import copy

import open_clip
import torch
import torch.distributed as dist

from fixclip.base_model import TINY_CLIP_CONFIG, build_clip
from fixclip.text_stretch import long_tokenizer

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart", "ring", "diamond"]


def with_2_layers(name: str) -> dict:
    """open_clip's config of ``name`` at its real widths, with 2 layers per tower (no shape depends on depth)."""
    config = copy.deepcopy(open_clip.get_model_config(name))
    config["vision_cfg"]["layers"] = config["text_cfg"]["layers"] = 2
    return config


def tiny_clip(seed: int = 0, **vision_overrides):
    """A fresh seeded open_clip CLIP of the embedded default's shape (64 px, 64 patches, 4 + 4 layers)."""
    cfg = copy.deepcopy(TINY_CLIP_CONFIG)
    cfg["vision_cfg"].update(vision_overrides)
    return build_clip(cfg, seed=seed)


def captions(n: int, long: bool):
    """n distinct captions; long ones exceed 77 CLIP tokens."""
    out = []
    for i in range(n):
        head = f"a {COLOURS[i % 8]} {SHAPES[(3 * i + 1) % 8]}"
        if long:
            extra = " ".join(f"and a {COLOURS[(i + j) % 8]} {SHAPES[(i * j + 2) % 8]} in cell {j}" for j in range(14))
            head = f"{head} {extra} , finally a {COLOURS[i % 8]} {SHAPES[i % 8]} number {i}"
        out.append(head)
    return out


def batch(n: int = 8, seed: int = 0, image_size: int = 64):
    """(images, long tokens at 248, short tokens at 77)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, image_size, image_size, generator=gen)
    return images, long_tokenizer(248)(captions(n, long=True)), open_clip.tokenize(captions(n, long=False))


def ddp_loss_matches_single_process(rank: int, world_size: int, port: int, out_dim: int, loss_and_grad,
                                    make_loss) -> None:
    """An mp.spawn target: the loss of each rank's share (features gathered by the loss) and the rank-averaged
    gradient equal one process's loss and gradient on the whole batch. ``loss_and_grad(model, inputs, loss_fn)``
    maps a Linear's outputs to the loss's features; ``make_loss(rank=, world_size=)`` builds the loss."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(5, out_dim, bias=False)
        inputs = torch.randn(4 * world_size, 5)
        ref_loss, ref_grad = loss_and_grad(model, inputs, make_loss(rank=0, world_size=1))
        local = inputs.chunk(world_size)[rank]
        loss, grad = loss_and_grad(model, local, make_loss(rank=rank, world_size=world_size))
        dist.all_reduce(grad)
        grad /= world_size  # what DDP does to parameter gradients
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    finally:
        dist.destroy_process_group()


def fixclip_here(capsys, *args):
    """`python -m fixclip ARGS` in this process, through the main the entry point calls (a subprocess imports torch
    and open_clip again: ~17 s on 2 cores); what it wrote, as .out and .err. Each command's tests keep one real
    subprocess."""
    from fixclip.__main__ import main

    capsys.readouterr()
    main([str(a) for a in args])
    return capsys.readouterr()
