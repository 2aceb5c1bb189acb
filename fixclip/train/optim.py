"""Optimizer, learning-rate schedule and logit-scale handling (Long-CLIP's recipe where FIX-CLIP is silent)."""
import math

import torch
from torch import nn


def adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple, eps: float,
          new_params_lr_scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW with weight decay on the base model's matrices only: biases, norm gains, logit_scale and 1-D embeddings
    are not decayed (open_clip_train's and Long-CLIP's rule). The parameters the method adds from scratch
    (``model.new_parameters()``: mask token, prompts, HFA heads) are not decayed either, and those of
    ``model.lr_scaled_parameters()`` (mask token, HFA heads) run at ``new_params_lr_scale`` times the learning rate:
    starting from zero or random values, they have further to go than the pretrained weights around them.

    torch's fused kernel (CPU and CUDA): one pass over each tensor instead of the default per-tensor loop's
    several, faster on CPU where the 49408-row token embedding makes the step memory-bound (docs/methods.md, "FIX-CLIP
    training"). Same update, rounded differently: parameters differ from the loop's by float rounding, except attention
    key biases, whose true gradient is 0 (softmax ignores them): Adam scales their rounding-noise gradient up to
    lr-sized steps under either kernel, and they change no output."""
    new = {id(p) for p in model.new_parameters()} if hasattr(model, "new_parameters") else set()
    scaled = {id(p) for p in model.lr_scaled_parameters()} if hasattr(model, "lr_scaled_parameters") else set()
    decay, no_decay, added = [], [], []
    for param in model.parameters():
        if param.requires_grad:
            if id(param) in scaled:
                added.append(param)
            else:
                (decay if param.ndim >= 2 and id(param) not in new else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
              {"params": added, "weight_decay": 0.0, "lr_scale": new_params_lr_scale}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)


def cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` then cosine decay to 0 at ``total_steps`` (0-based ``step``)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress)) * base_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group at ``lr`` times its ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


@torch.no_grad()
def reset_logit_scale(logit_scale: nn.Parameter, value: float) -> None:
    """Set the temperature to 1 / ``value`` (Long-CLIP resets the logit scale to ln 100)."""
    logit_scale.fill_(math.log(value))


@torch.no_grad()
def clamp_logit_scale(logit_scale: nn.Parameter, max_value: float) -> None:
    """After every optimizer step, as open_clip_train: 0 <= logit_scale <= ln ``max_value``."""
    logit_scale.clamp_(0, math.log(max_value))
