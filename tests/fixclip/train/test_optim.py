"""The training optimizer (torch's fused AdamW; new parameters at their own rate) and the per-step timer behind
the curves' samples/s."""
import time

import torch
from torch import nn

from fixclip.config import FixClipConfig
from fixclip.model import FixClip
from fixclip.train.log import StepTimer
from fixclip.train.optim import adamw, set_lr
from tests.fixclip.helpers import tiny_clip


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(50, 8), nn.LayerNorm(8), nn.Linear(8, 4))


def _train(model: nn.Module, optim: torch.optim.Optimizer, steps: int = 5) -> None:
    tokens = torch.arange(12).view(3, 4)
    for _ in range(steps):
        model(tokens).pow(2).sum().backward()
        optim.step()
        optim.zero_grad(set_to_none=True)


def test_adamw_follows_the_default_per_tensor_loop_up_to_rounding():
    ours, reference = _model(), _model()
    optim = adamw(ours, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    assert all(group["fused"] for group in optim.param_groups)
    params = list(reference.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    _train(ours, optim)
    _train(reference, torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, foreach=False))
    for (name, p), q in zip(ours.named_parameters(), params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_adamw_decays_matrices_only():
    model = _model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optim = adamw(model, lr=0.1, weight_decay=0.5, betas=(0.9, 0.999), eps=1e-8)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optim.step()
    for name, p in model.named_parameters():
        decayed = not torch.equal(p.detach(), before[name])
        assert decayed == (p.ndim >= 2), name


def test_step_timer_counts_all_the_time_between_steps():
    start = time.perf_counter()
    timer = StepTimer()
    time.sleep(0.02)  # e.g. logging or a checkpoint after the previous step
    first = timer.lap()
    second = timer.lap()
    assert first >= 0.02
    assert first + second <= time.perf_counter() - start


def test_new_parameters_get_the_lr_scale_and_no_weight_decay():
    """What the method adds from scratch is not decayed; the mask token and HFA heads run at new_params_lr_scale x lr
    (the prompts at lr); set_lr keeps the ratio."""
    model = FixClip(tiny_clip(), FixClipConfig())
    optim = adamw(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6, new_params_lr_scale=10.0)
    set_lr(optim, 2e-4)
    new, scaled = ({id(p) for p in params} for params in (model.new_parameters(), model.lr_scaled_parameters()))
    assert id(model.prompts.tokens) in new - scaled and id(model.mask_embedding.embedding) in scaled
    assert scaled < new
    assert sum(p.numel() for p in model.new_parameters()) < sum(p.numel() for p in model.parameters()) / 10
    for group in optim.param_groups:
        ids = {id(p) for p in group["params"]}
        assert group["lr"] == (2e-3 if ids == scaled else 2e-4)
        assert group["weight_decay"] == 0.0 or not ids & new


def test_prompt_lr_scaled_puts_the_prompts_at_the_new_parameters_rate():
    model = FixClip(tiny_clip(), FixClipConfig().with_(prompt_lr_scaled=True))
    assert id(model.prompts.tokens) in {id(p) for p in model.lr_scaled_parameters()}
