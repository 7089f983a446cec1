"""Feature pyramid: torchvision's FPN over C3-C5, plus P6 and P7 (RetinaNet)."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

__all__ = ["FeatureExtractor", "retinanet_fpn"]


def retinanet_fpn(
    in_channels: list[int], out_channels: int = 256, p6_from: str = "c5", levels: int = 5, separable: bool = False
) -> FeaturePyramidNetwork:
    """P3-P7 (``levels=5``) or P3-P5 (``levels=3``): lateral 1x1 and output 3x3 convs on C3-C5
    with a top-down path; P6 a 3x3 stride-2 conv on C5 (``p6_from="c5"``, the paper) or on P5
    (``"p5"``, torchvision's first RetinaNet); P7 a 3x3 stride-2 conv on ReLU(P6).

    ``separable=True`` factorises the output 3x3 convs into depthwise 3x3 + pointwise 1x1
    (as EfficientDet's BiFPN), for CPUs.
    """
    if p6_from not in ("c5", "p5"):
        raise ValueError(f"p6_from must be 'c5' or 'p5', got {p6_from!r}")
    if levels not in (3, 5):
        raise ValueError(f"the pyramid has 3 (P3-P5) or 5 (P3-P7) levels, got {levels}")
    if levels == 3:
        fpn = FeaturePyramidNetwork(in_channels, out_channels)
    else:
        source = in_channels[-1] if p6_from == "c5" else out_channels
        extra = LastLevelP6P7(source, out_channels)
        extra.use_P5 = p6_from == "p5"
        fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
    if separable:
        for block in fpn.layer_blocks:  # each a Conv2dNormActivation holding one 3x3 conv
            block[0] = _separable_conv(out_channels)
    return fpn


def _separable_conv(channels: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1 (with bias), initialised as torchvision's FPN convs."""
    layers = nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False), nn.Conv2d(channels, channels, 1)
    )
    for conv in layers:
        nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(layers[1].bias)
    return layers


class FeatureExtractor(nn.Module):
    """Backbone body plus FPN: images ``[B, 3, H, W]`` -> P3..P7, each ``[B, C, ceil(H / s), ceil(W / s)]``.

    Module names (``body``, ``fpn``) follow torchvision's ``BackboneWithFPN``, so that its
    RetinaNet weights load unchanged.
    """

    def __init__(self, body: nn.Module, fpn: nn.Module, out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> list[Tensor]:
        features: OrderedDict[str, Tensor] = self.fpn(self.body(images))
        return list(features.values())
