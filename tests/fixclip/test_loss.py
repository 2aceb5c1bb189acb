
import functools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip import ClipLoss

from fixclip.loss import FixClipLoss, info_nce
from tests.conftest import free_port
from tests.fixclip.helpers import ddp_loss_matches_single_process


def _features(n=8, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=gen), dim=-1),
            F.normalize(torch.randn(n, d, generator=gen), dim=-1))


def test_info_nce_without_smoothing_equals_open_clip_clip_loss():
    image, text = _features()
    scale = torch.tensor(14.3)
    torch.testing.assert_close(info_nce(image, text, scale), ClipLoss()(image, text, scale))


def test_info_nce_label_smoothing_by_hand():
    image, text = _features(n=4)
    scale, eps = torch.tensor(10.0), 0.1
    target = torch.full((4, 4), eps / 4) + torch.eye(4) * (1 - eps)

    def smoothed_ce(logits):
        return -(target * logits.log_softmax(-1)).sum(-1).mean()

    logits = scale * image @ text.T
    expected = (smoothed_ce(logits) + smoothed_ce(logits.T)) / 2
    torch.testing.assert_close(info_nce(image, text, scale, label_smoothing=eps), expected)


def test_total_is_weighted_hfa_plus_short_plus_long():
    feats = [_features(seed=s) for s in range(4)]
    out = {"image_features": feats[0][0], "text_features": feats[0][1], "logit_scale": torch.tensor(20.0),
           "short_image_features": feats[1][0], "short_text_features": feats[1][1],
           "hfa_image": [feats[2][0], feats[3][0]], "hfa_text": [feats[2][1], feats[3][1]],
           "hfa_logit_scale": torch.tensor([5.0, 7.0])}
    parts = FixClipLoss(label_smoothing=0.1, hfa_weights=(0.3, 0.7), hfa_first_group=2)(out)
    assert set(parts) == {"loss", "long", "short", "hfa_2", "hfa_3"}
    scales = [20.0, 20.0, 5.0, 7.0]  # each HFA group at its own logit scale
    nce = [info_nce(i, t, torch.tensor(scale), 0.1) for (i, t), scale in zip(feats, scales)]
    torch.testing.assert_close(parts["loss"], 0.3 * nce[2] + 0.7 * nce[3] + nce[1] + nce[0])


def _loss_and_grads(model: torch.nn.Module, inputs: torch.Tensor, loss_fn: FixClipLoss):
    out = {"logit_scale": torch.tensor(10.0), "hfa_logit_scale": torch.tensor([10.0])}
    feats = [F.normalize(f, dim=-1) for f in model(inputs).chunk(6, dim=-1)]
    out.update(image_features=feats[0], text_features=feats[1], short_image_features=feats[2],
               short_text_features=feats[3], hfa_image=[feats[4]], hfa_text=[feats[5]])
    loss = loss_fn(out)["loss"]
    model.zero_grad()
    loss.backward()
    return loss.detach(), model.weight.grad.clone()


@pytest.mark.expensive
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_gathered_loss_and_gradients_equal_single_process_on_concatenated_batch():
    make_loss = functools.partial(FixClipLoss, label_smoothing=0.1, hfa_weights=(0.5,))
    mp.spawn(ddp_loss_matches_single_process, args=(2, free_port(), 6 * 8, _loss_and_grads, make_loss), nprocs=2,
             join=True)
