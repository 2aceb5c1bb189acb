import math

import pytest
import torch

from fixclip.hfa import GroupAlignmentHead, gaussian_group_weights


@pytest.mark.parametrize("size", [1, 2, 3, 4, 6])
def test_gaussian_weights_sum_to_one_and_peak_at_last_layer(size):
    w = gaussian_group_weights(size)
    assert w.shape == (size,)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    assert int(w.argmax()) == size - 1
    assert torch.all(w[1:] > w[:-1])  # strictly rising towards the group's last layer


def test_gaussian_weights_follow_normal_density():
    w = gaussian_group_weights(3, sigma=1.0)
    density = torch.tensor([math.exp(-0.5 * (j - 3) ** 2) for j in (1, 2, 3)])
    torch.testing.assert_close(w, density / density.sum())


def test_group_head_is_gta_then_linear_then_layernorm():
    torch.manual_seed(0)
    layers, groups, first, width, dim = 6, 3, 2, 5, 4
    head = GroupAlignmentHead(layers, groups, first, width, dim)
    tokens = [torch.randn(2, width) for _ in range(layers)]
    out = head(tokens)
    assert len(out) == groups - first + 1
    a = gaussian_group_weights(2)
    for k, z in zip(range(first, groups + 1), out):
        g = a[0] * tokens[2 * (k - 1)] + a[1] * tokens[2 * (k - 1) + 1]
        linear, norm = head.projections[k - first]
        torch.testing.assert_close(z, norm(linear(g)))
