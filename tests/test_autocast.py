"""The guard that runs one-column strided convolutions in float32 under CPU bf16 autocast."""

import pytest
import torch
from torch import nn

from multibox.models.autocast import guard_bf16_strided_convs


@pytest.mark.parametrize("size", [(1, 1), (4, 1), (1, 4), (2, 2)])  # stride 2 or 3 wider than the input's side
def test_guarded_convolutions_give_the_true_weight_gradient(size):
    stride = 3 if size == (2, 2) else 2
    model = nn.Sequential(nn.Conv2d(8, 8, 3, stride, 1), nn.Conv2d(8, 8, 1))
    assert guard_bf16_strided_convs(model) == 1  # the 1x1 conv has no padding and no stride
    conv = model[0]
    x = torch.randn(2, 8, *size, requires_grad=True)
    junk = torch.full((1 << 16,), 1e30)  # what the allocator hands out next held 1e30: garbage shows
    del junk
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        assert y.dtype == torch.float32 and torch.is_autocast_enabled("cpu")  # float32 inside, autocast after
    grad = torch.randn(y.shape)
    y.backward(grad)
    expected = nn.grad.conv2d_weight(x.detach().double(), conv.weight.shape, grad.double(), stride=stride, padding=1)
    # float32 arithmetic: the true gradient to float32 rounding, the padding-only taps exactly 0
    torch.testing.assert_close(conv.weight.grad.double(), expected, rtol=1e-5, atol=1e-6)
    assert int((expected == 0).sum()) > 0 and bool((conv.weight.grad[expected == 0] == 0).all())


def test_convolutions_wider_than_their_stride_stay_in_bf16():
    conv = nn.Conv2d(8, 8, 3, 2, 1)
    guard_bf16_strided_convs(conv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 8, 4, 4)).dtype == torch.bfloat16
    assert conv(torch.randn(1, 8, 1, 1)).dtype == torch.float32  # no autocast: untouched
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError):
        conv(torch.randn(1, 3, 1, 1))  # a failing call still leaves autocast as it was
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 8, 8, 8)).dtype == torch.bfloat16
