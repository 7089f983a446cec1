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
    ):
        super().__init__()
        self.conv = _subnet(channels, num_convs, group_norm, separable)
        self.out_name = out_name
        setattr(self, out_name, nn.Conv2d(channels, num_anchors * outputs_per_anchor, 3, padding=1))
        nn.init.normal_(self.out.weight, std=0.01)
        self.outputs_per_anchor = outputs_per_anchor

    @property
    def out(self) -> nn.Conv2d:
        return getattr(self, self.out_name)

    def forward(self, features: list[Tensor]) -> Tensor:
        per_level = []
        for x in features:
            y = self.out(self.conv(x))  # [B, A * K, H, W]
            b, _, h, w = y.shape
            # -> [B, H * W * A, K]: row, column, then anchor type, as the anchors are ordered
            per_level.append(
                y.view(b, -1, self.outputs_per_anchor, h, w)
                .permute(0, 3, 4, 1, 2)
                .reshape(b, -1, self.outputs_per_anchor)
            )
        return torch.cat(per_level, dim=1)


class RetinaNetHead(nn.Module):
    """Two subnets of ``num_convs`` 3x3 conv + ReLU (optionally GroupNorm), not shared between
    the tasks, shared across levels; final convs ``A * K`` and ``A * 4``.

    ``separable=True`` makes each tower conv depthwise 3x3 + pointwise 1x1, for CPUs.
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
    ):
        super().__init__()
        self.classification_head = _Branch(
            in_channels, num_classes, num_anchors, num_convs, group_norm, "cls_logits", separable
        )
        nn.init.constant_(self.classification_head.out.bias, -math.log((1 - prior) / prior))
        self.regression_head = _Branch(in_channels, 4, num_anchors, num_convs, group_norm, "bbox_reg", separable)
        nn.init.zeros_(self.regression_head.out.bias)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``[B, A, K]`` class logits and ``[B, A, 4]`` box deltas over all levels."""
        return self.classification_head(features), self.regression_head(features)
