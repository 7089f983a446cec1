"""RetinaNet's classification and box subnets, shared across pyramid levels."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

__all__ = ["RetinaNetHead"]


def _separable(channels: int, norm) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1 (+ norm) + ReLU: about 1/9 of a 3x3 conv's work."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        Conv2dNormActivation(channels, channels, kernel_size=1, norm_layer=norm),
    )


def _subnet(channels: int, num_convs: int, group_norm: bool, separable: bool = False) -> nn.Sequential:
    norm = partial(nn.GroupNorm, min(32, channels)) if group_norm else None
    if separable:
        convs = [_separable(channels, norm) for _ in range(num_convs)]
    else:
        convs = [Conv2dNormActivation(channels, channels, norm_layer=norm) for _ in range(num_convs)]
    for layer in nn.Sequential(*convs).modules():
        if isinstance(layer, nn.Conv2d):
            if separable:
                # N(0, 0.01) suits 3x3x256 convs (fan-in 2304); on a depthwise 3x3 (fan-in 9) or a small
                # pointwise conv it would shrink the features a hundredfold per layer: use He init.
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            else:
                nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return nn.Sequential(*convs)


def _separable_predictor(channels: int, outputs: int) -> nn.Sequential:
    """A 3x3 predictor factorised as depthwise 3x3 then pointwise 1x1, no activation between
    (SSDLite, EfficientDet): a dense 3x3 conv to ``A * K`` outputs is the costliest layer of a
    light head on the finest level."""
    depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
    nn.init.kaiming_normal_(depthwise.weight, nonlinearity="linear")  # keeps the tower's scale
    return nn.Sequential(depthwise, nn.Conv2d(channels, outputs, 1))


class _Branch(nn.Module):
    def __init__(
        self,
        channels: int,
        outputs_per_anchor: int,
        num_anchors: int,
        num_convs: int,
        group_norm: bool,
        out_name: str,
        separable: bool = False,
        separable_predictor: bool = False,
    ):
        super().__init__()
        self.conv = _subnet(channels, num_convs, group_norm, separable)
        self.out_name = out_name
        outputs = num_anchors * outputs_per_anchor
        if separable_predictor:
            setattr(self, out_name, _separable_predictor(channels, outputs))
        else:
            setattr(self, out_name, nn.Conv2d(channels, outputs, 3, padding=1))
        nn.init.normal_(self.out.weight, std=0.01)
        self.outputs_per_anchor = outputs_per_anchor

    @property
    def out(self) -> nn.Conv2d:
        """The convolution that gives the outputs (the pointwise one of a separable predictor)."""
        layer = getattr(self, self.out_name)
        return layer[-1] if isinstance(layer, nn.Sequential) else layer

    def forward(self, features: list[Tensor]) -> Tensor:
        per_level = []
        for x in features:
            y = getattr(self, self.out_name)(self.conv(x))  # [B, A * K, H, W]
            # -> [B, H * W * A, K]: row, column, then anchor type, as the anchors are ordered (the
            # channels are A blocks of K). One transpose to [B, H, W, A * K]: a view of channels-last
            # outputs, and a layout OpenVINO keeps (a 5-d permute cost it a reorder and a transpose)
            per_level.append(y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, self.outputs_per_anchor))
        return torch.cat(per_level, dim=1)


class RetinaNetHead(nn.Module):
    """Two subnets of ``num_convs`` 3x3 conv + ReLU (optionally GroupNorm), not shared between
    the tasks, shared across levels; final convs ``A * K`` and ``A * 4``.

    ``separable=True`` makes each tower conv depthwise 3x3 + pointwise 1x1, for CPUs;
    ``separable_predictor=True`` factorises the final convs the same way.
    Weights are drawn from N(0, 0.01); the class bias is ``-log((1 - prior) / prior)``, so that
    every anchor starts at probability ``prior`` (Lin et al. 2017). Module names follow
    torchvision's ``RetinaNetHead``.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        group_norm: bool = False,
        prior: float = 0.01,
        separable: bool = False,
        separable_predictor: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        branch = partial(_Branch, in_channels, num_anchors=num_anchors, num_convs=num_convs, group_norm=group_norm)
        self.classification_head = branch(num_classes, out_name="cls_logits", separable=separable,
                                          separable_predictor=separable_predictor)  # fmt: skip
        nn.init.constant_(self.classification_head.out.bias, -math.log((1 - prior) / prior))
        self.regression_head = branch(4, out_name="bbox_reg", separable=separable,
                                      separable_predictor=separable_predictor)  # fmt: skip
        nn.init.zeros_(self.regression_head.out.bias)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``[B, A, K]`` class logits and ``[B, A, 4]`` box deltas over all levels."""
        return self.classification_head(features), self.regression_head(features)
