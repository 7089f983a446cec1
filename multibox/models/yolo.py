"""A YOLOv3-style detector: backbone C3-C5, YOLOv3's top-down neck (optional SPP), objectness heads.

The output is the :class:`~multibox.structures.DenseOutput` of every dense detector: per anchor
``K + 1`` score columns, the objectness logit in column 0 and the class logits after it (a
detection scores ``sigmoid(objectness) * sigmoid(class)``, post-processing's ``"objectness"``
activation), and 4 box outputs for :class:`~multibox.coding.YOLOCoder`. Anchors are 3 shapes per
level at strides 8, 16 and 32, fitted to the training boxes by
:func:`~multibox.anchors.kmeans_anchors` (the trainer does it when ``model.yolo.anchors`` is
empty) or given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..anchors import yolo_anchors
from ..coding import YOLOCoder
from ..structures import DenseOutput
from .backbones import build_backbone
from .ssd import _FixedSizeDetector, _flatten, _square_side, _stride2

__all__ = ["YOLO_COCO_ANCHORS", "YOLO_STRIDES", "YOLOv3"]

YOLO_STRIDES = (8, 16, 32)
# YOLOv3's nine COCO anchors (w, h) for 416x416 inputs (Redmon & Farhadi 2018), small to large
YOLO_COCO_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))


def _conv(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    """Darknet's convolution: conv (no bias), BatchNorm, LeakyReLU 0.1."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(0.1, inplace=True),
    )


def _conv_set(in_channels: int, channels: int) -> nn.Sequential:
    """YOLOv3's five convolutions before each output: 1x1 ``c``, 3x3 ``2c``, 1x1, 3x3, 1x1 ``c``."""
    return nn.Sequential(
        _conv(in_channels, channels, 1),
        _conv(channels, 2 * channels, 3),
        _conv(2 * channels, channels, 1),
        _conv(channels, 2 * channels, 3),
        _conv(2 * channels, channels, 1),
    )


class SPP(nn.Module):
    """YOLOv3-SPP's spatial pyramid pooling: the input and its 5, 9 and 13 max pools (stride 1),
    concatenated and mixed back to the input's channels by a 1x1 convolution."""

    def __init__(self, channels: int, pools: Sequence[int] = (5, 9, 13)):
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in pools)
        self.mix = _conv(channels * (len(pools) + 1), channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(torch.cat([x, *(pool(x) for pool in self.pools)], dim=1))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class YOLOv3(_FixedSizeDetector):
    """YOLOv3 (Redmon & Farhadi 2018) on a torchvision backbone: images ``[B, 3, S, S]`` -> ``DenseOutput``.

    The neck is YOLOv3's: C5 (through SPP with ``spp=True``) into five convolutions, whose
    output feeds the stride-32 head and, through a 1x1 convolution and 2x upsampling,
    concatenated with C4, the next five convolutions; the same again with C3. Each head is a
    3x3 convolution and a 1x1 predictor of ``3 x (4 + 1 + K)`` numbers per cell. Widths are
    ``width``, ``2 width`` and ``4 width`` at strides 8, 16 and 32 (YOLOv3 on Darknet-53: 128).

    Biases start at YOLOv5's priors: about 8 objects per image spread over each level's cells
    for objectness, ``0.6 / (K - 0.99)`` for a class.

    Args:
        num_classes: foreground classes ``K``.
        image_size: the square input the network is built for.
        anchors: 9 shapes ``(w, h)`` in input pixels, small to large, 3 per level; empty:
            YOLOv3's COCO anchors scaled from 416 to ``image_size``.
        backbone, pretrained, frozen_bn, trainable_stages: see
            :func:`~multibox.models.backbones.build_backbone`.
        width: neck width at stride 8.
        spp: an SPP block on C5 (YOLOv3-SPP).
    """

    activation = "objectness"
    background_column = False

    def __init__(
        self,
        num_classes: int,
        image_size: Sequence[int] = (416, 416),
        anchors: Sequence[Sequence[float]] = (),
        backbone: str = "mobilenet_v2",
        pretrained: str = "imagenet",
        frozen_bn: bool = True,
        trainable_stages: int = 3,
        width: int = 64,
        spp: bool = False,
    ):
        super().__init__()
        side = _square_side(image_size, "YOLOv3")
        self.image_size, self.num_classes = (side, side), num_classes
        shapes = torch.as_tensor(anchors if len(anchors) else YOLO_COCO_ANCHORS, dtype=torch.float32)
        if not len(anchors):
            shapes = shapes * side / 416
        if shapes.shape != (9, 2) or not bool((shapes > 0).all()):
            raise ValueError(f"YOLOv3 takes 9 anchor shapes (w, h) > 0, 3 per level; got {shapes.tolist()}")
        self.anchor_shapes = shapes.view(3, 3, 2)  # [level, shape, (w, h)]
        self.backbone = build_backbone(backbone, pretrained, frozen_bn, trainable_stages)
        self.spp = SPP(self.backbone.out_channels[-1]) if spp else nn.Identity()
        c3, c4, c5 = self.backbone.out_channels
        w3, w4, w5 = width, 2 * width, 4 * width
        self.sets = nn.ModuleList([_conv_set(c5, w5), _conv_set(c4 + w4, w4), _conv_set(c3 + w3, w3)])
        self.reduce = nn.ModuleList([_conv(w5, w4, 1), _conv(w4, w3, 1)])
        per_anchor = 5 + num_classes
        self.heads = nn.ModuleList(
            nn.Sequential(_conv(w, 2 * w, 3), nn.Conv2d(2 * w, 3 * per_anchor, 1)) for w in (w5, w4, w3)
        )
        maps = [_stride2(side, n) for n in (3, 4, 5)]
        for head, cells in zip(self.heads, maps[::-1], strict=True):
            bias = head[-1].bias.detach().view(3, per_anchor)
            bias.zero_()
            bias[:, 4] = _logit(min(0.5, 8 / cells**2))
            bias[:, 5:] = _logit(min(0.6, 0.6 / max(num_classes - 0.99, 1e-6)))
        grids = [(m, m) for m in maps]
        self._anchors = yolo_anchors(side, YOLO_STRIDES, self.anchor_shapes.tolist(), grid_sizes=grids)
        self._level_sizes = [m * m * 3 for m in maps]
        strides = [torch.full((n,), float(s)) for n, s in zip(self._level_sizes, YOLO_STRIDES, strict=True)]
        self.coder = YOLOCoder(torch.cat(strides))

    def forward(self, images: Tensor) -> DenseOutput:
        self._check_input(images)
        c3, c4, c5 = self.backbone(images).values()
        x = self.sets[0](self.spp(c5))
        outputs = [self.heads[0](x)]
        for conv_set, reduce, head, skip in zip(self.sets[1:], self.reduce, self.heads[1:], (c4, c3), strict=True):
            up = nn.functional.interpolate(reduce(x), size=skip.shape[-2:], mode="nearest")
            x = conv_set(torch.cat((up, skip), dim=1))
            outputs.append(head(x))
        per_anchor = 5 + self.num_classes
        flat = torch.cat([_flatten(y, per_anchor) for y in outputs[::-1]], dim=1)  # strides 8, 16, 32
        return DenseOutput(flat[..., 4:], flat[..., :4])
