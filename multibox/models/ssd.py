"""The course's SSD family: grid heads (fastai), the toy SSD (d2l.ai) and SSD/SSDLite on MobileNetV2.

Every network returns :class:`~multibox.structures.DenseOutput` with ``K + 1`` class columns
per anchor, background in column 0 (the sigmoid heads of the grid steps leave that column
untrained), and carries what its criterion and post-processing need: :meth:`anchors`, the box
``coder`` and the class ``activation``. Each is built for one input size, as in the papers and
notes: the feature-map sizes, and so the anchors, follow from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from ..anchors import SSD300_SCALES, TOY_SSD, grid_anchors, grid_cell_sizes, ssd_default_boxes
from ..coding import DeltaCoder, TanhCoder
from ..structures import DenseOutput
from .backbones import build_backbone
from .detectors import DenseDetector

__all__ = ["SSD_KINDS", "SSD_VARIANCES", "GridSSD", "MobileNetSSD", "OutConv", "StdConv", "ToySSD"]

SSD_KINDS = ("ssd_grid", "ssd_multihead", "toyssd", "ssd300", "ssdlite")

# SSD's "variances" 0.1 (centre) and 0.2 (size) are DeltaCoder weights 10, 10, 5, 5.
SSD_VARIANCES = (0.1, 0.2)
_SSD_CODER_WEIGHTS = (1 / SSD_VARIANCES[0],) * 2 + (1 / SSD_VARIANCES[1],) * 2


def _square_side(image_size: Sequence[int], kind: str) -> int:
    height, width = (int(v) for v in image_size)
    if height != width:
        raise ValueError(f"{kind} works on square inputs; got image_size {height}x{width} (input.size=[S, S])")
    return height


def _prior_bias(prior: float = 0.01) -> float:
    """The class bias that makes every anchor start at probability ``prior`` (Lin et al. 2017)."""
    return -math.log((1 - prior) / prior)


def _flatten(y: Tensor, per_anchor: int) -> Tensor:
    """``[B, k * n, H, W] -> [B, H * W * k, n]``: row, column, then anchor type, as the anchors."""
    b, _, h, w = y.shape
    return y.view(b, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, per_anchor)


class _FixedSizeDetector(DenseDetector):
    """What the SSD-family networks share: one input size, its anchors, ``K + 1`` class columns."""

    activation = "softmax"
    background_column = True
    image_size: tuple[int, int]
    _anchors: Tensor
    _level_sizes: list[int]

    def _check_input(self, images: Tensor) -> None:
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"{type(self).__name__} was built for {self.image_size[0]}x{self.image_size[1]} inputs (its anchors "
                f"follow from it); got {images.shape[-2]}x{images.shape[-1]} (input.resize squish or letterbox)"
            )

    def anchors(self, image_size: Sequence[int] | None = None) -> Tensor:
        """``[A, 4]`` xyxy anchors in input pixels, in output order."""
        if image_size is not None and tuple(int(v) for v in image_size) != self.image_size:
            raise ValueError(f"this network's anchors are for {self.image_size} inputs, not {tuple(image_size)}")
        return self._anchors.clone()

    def level_sizes(self, image_size: Sequence[int] | None = None) -> list[int]:
        """Anchors per feature map, for per-level top-k in post-processing."""
        return list(self._level_sizes)


class StdConv(nn.Sequential):
    """The course's ``StdConv``: 3x3 conv (stride 2 by default), ReLU, BatchNorm, dropout."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, dropout: float = 0.1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(out_channels),
            nn.Dropout(dropout),
        )


class OutConv(nn.Module):
    """The course's ``OutConv``: two 3x3 convs giving ``k * (K + 1)`` class and ``k * 4`` box
    outputs per cell, flattened to ``[B, H * W * k, K + 1]`` and ``[B, H * W * k, 4]``.

    Foreground class biases start at the 0.01 prior (the course adds a constant -4 for the same
    reason: a thousand confident "no"s to begin with, not a thousand coin flips).
    """

    def __init__(self, in_channels: int, k: int, num_classes: int, separable: bool = False):
        super().__init__()
        self.k, self.columns = k, num_classes + 1
        self.cls = _predictor(in_channels, k * self.columns, separable)
        self.box = _predictor(in_channels, k * 4, separable)
        bias = _last_conv(self.cls).bias.data.view(k, self.columns)
        bias[:, 1:] = _prior_bias()
        bias[:, 0] = 0.0

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _flatten(self.cls(x), self.columns), _flatten(self.box(x), 4)


def _predict(outs: nn.ModuleList, features: list[Tensor]) -> DenseOutput:
    """Each map through its :class:`OutConv`, the anchors of all maps in one ``DenseOutput``."""
    cls_parts, box_parts = zip(*(out(x) for out, x in zip(outs, features, strict=True)), strict=True)
    return DenseOutput(torch.cat(cls_parts, 1), torch.cat(box_parts, 1))


def _predictor(in_channels: int, outputs: int, separable: bool) -> nn.Module:
    if not separable:
        return nn.Conv2d(in_channels, outputs, 3, padding=1)
    # SSDLite: depthwise 3x3 + BatchNorm + ReLU6, then a pointwise 1x1 to the outputs
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU6(inplace=True),
        nn.Conv2d(in_channels, outputs, 1),
    )


def _last_conv(module: nn.Module) -> nn.Conv2d:
    return module[-1] if isinstance(module, nn.Sequential) else module


# what GridSSD's head reads: C5 (the course), or P4, C5 merged into C4 at stride 16
GRID_SOURCES = ("c5", "p4")


def _stride2(side: int, times: int = 1) -> int:
    """Side of a map after ``times`` 3x3 stride-2 convs with padding 1."""
    for _ in range(times):
        side = (side + 1) // 2
    return side


class GridSSD(_FixedSizeDetector):
    """The course's SSD head on a backbone's C5 (fastai part 2, lesson 9).

    ``grids=1``: the 4x4 grid with one anchor per cell (``ssd_grid``); ``grids=3``: 4x4, 2x2 and
    1x1 grids with ``len(zooms) * len(ratios)`` anchors per cell (``ssd_multihead``). The
    backbone's C5 goes through dropout, a stride-1 :class:`StdConv`, then stride-2
    ones down to the first grid, and one more stride-2 :class:`StdConv` per further grid; each
    grid has its :class:`OutConv`. Boxes are decoded by :class:`~multibox.coding.TanhCoder`;
    classes are independent sigmoids (BCE or focal loss, no background column).

    Args:
        num_classes: ``K``.
        image_size: ``(S, S)``; 224 or 256 give the course's 4x4 first grid from a 7x7 or 8x8 C5.
        grids: how many grids (1 or more).
        zooms, ratios: anchor shapes per cell, as :func:`~multibox.anchors.grid_anchors`.
        backbone, pretrained, frozen_bn, trainable_stages: see :func:`build_backbone`.
        channels: width of the head's convs (the course: 256).
        dropout: dropout on the map the head reads and in each :class:`StdConv`.
        first_grid: side of the first (finest) grid at most.
        grid_from: what the head reads: ``"c5"`` (the course), or ``"p4"``, C5 merged into C4
            as an FPN merges them (1x1 lateral convs to C4's width, C5 upsampled 2x by nearest
            neighbour, summed) at stride 16, which keeps twice C5's resolution for small
            objects; one more stride-2 :class:`StdConv` then reaches the same grids.
        align: resize the map the head reads (bilinear) to the side that the stride-2
            :class:`StdConv` s halve exactly down to the first grid (16 for a 14x14 P4 at 224x224,
            8 for a 7x7 C5), so that every cell of a grid sees its anchors from the same place. A
            3x3 stride-2 conv on an odd side centres its outputs on inputs 0, 2, 4, ...: from
            14 -> 7 -> 4 the 4x4 grid's features sit 20, 12, 4 px before and 4 px after their cells'
            centres, an offset that no shared kernel can undo; from 16 -> 8 -> 4 each sits 21 px
            before. No change where the side already halves exactly (256x256 inputs).
    """

    activation = "sigmoid"

    def __init__(
        self,
        num_classes: int,
        image_size: Sequence[int] = (256, 256),
        grids: int = 3,
        zooms: Sequence[float] = (0.7, 1.0, 1.3),
        ratios: Sequence[tuple[float, float]] = ((1.0, 1.0), (1.0, 0.5), (0.5, 1.0)),
        backbone: str = "mobilenet_v2",
        pretrained: str = "imagenet",
        frozen_bn: bool = True,
        trainable_stages: int = 3,
        channels: int = 256,
        dropout: float = 0.1,
        first_grid: int = 4,
        grid_from: str = "c5",
        align: bool = False,
    ):
        super().__init__()
        side = _square_side(image_size, "GridSSD")
        if grids < 1:
            raise ValueError(f"grids must be at least 1, got {grids}")
        if grid_from not in GRID_SOURCES:
            raise ValueError(f"grid_from must be one of {GRID_SOURCES}, got {grid_from!r}")
        if not zooms or not all(z > 0 for z in zooms):
            raise ValueError(f"zooms must be positive numbers, got {list(zooms)}")
        self.image_size, self.num_classes = (side, side), num_classes
        k = len(zooms) * len(ratios)
        # named as RetinaNet's (backbone.body.*), so that train.backbone_lr_mult applies to it
        self.backbone = build_backbone(backbone, pretrained, frozen_bn, trainable_stages)
        self.grid_from = grid_from
        width = self.backbone.out_channels[-2 if grid_from == "p4" else -1]
        self.drop = nn.Dropout(dropout)
        # a stride-1 StdConv on C5 (or P4), then stride-2 ones down to the first grid (one for a
        # 7x7 or 8x8 C5, two for a 14x14 or 16x16 P4)
        read = -(-side // (32 if grid_from == "c5" else 16))  # side of the map the head reads
        steps = 1
        while _stride2(read, steps) > first_grid:
            steps += 1
        trunk = [StdConv(width, channels, stride=1, dropout=dropout)]
        trunk += [StdConv(channels, channels, dropout=dropout) for _ in range(steps - 1)]
        self.sconv0 = nn.Sequential(*trunk)
        # the side that halves exactly down to the first grid, where `align` resizes the map to
        self.read_side = _stride2(read, steps) * 2**steps if align else read
        self.sconvs = nn.ModuleList(StdConv(channels, channels, dropout=dropout) for _ in range(grids))
        self.outs = nn.ModuleList(OutConv(channels, k, num_classes) for _ in range(grids))
        sizes = [_stride2(read, steps + i) for i in range(grids)]
        if sizes[-1] < 1 or len(set(sizes)) != len(sizes):
            raise ValueError(f"a {side}x{side} input gives grids {sizes}: too small for {grids} grids")
        self.grids = tuple(sizes)
        self.zooms, self.ratios = tuple(zooms), tuple(ratios)
        self._anchors = grid_anchors(self.grids, zooms, ratios) * side
        self.coder = TanhCoder(grid_cell_sizes(self.grids, k) * side)
        self._level_sizes = [g * g * k for g in self.grids]
        if grid_from == "p4":
            self.lateral4 = nn.Conv2d(width, width, 1)
            self.lateral5 = nn.Conv2d(self.backbone.out_channels[-1], width, 1)

    def forward(self, images: Tensor) -> DenseOutput:
        self._check_input(images)
        *_, c4, x = self.backbone(images).values()
        # the course applies ReLU to ResNet's C5, where it changes nothing (C5 ends in a ReLU);
        # MobileNetV2's C5 is a linear bottleneck, and a ReLU would zero its negative half
        if self.grid_from == "p4":
            x = self.lateral4(c4) + nn.functional.interpolate(self.lateral5(x), size=c4.shape[-2:], mode="nearest")
        if x.shape[-1] != self.read_side:
            side = (self.read_side, self.read_side)
            x = nn.functional.interpolate(x, size=side, mode="bilinear", align_corners=False)
        x = self.sconv0(self.drop(x))
        grids = []
        for sconv in self.sconvs:
            x = sconv(x)
            grids.append(x)
        return _predict(self.outs, grids)


def _check_scales(scales: Sequence[float], levels: int) -> tuple[float, ...]:
    if len(scales) != levels + 1 or not all(0 < a < b for a, b in pairwise(scales)):
        raise ValueError(f"scales must be {levels + 1} increasing positive fractions of the side, got {list(scales)}")
    return tuple(float(v) for v in scales)


def _down_sample_blk(in_channels: int, out_channels: int) -> nn.Sequential:
    """d2l.ai's ``down_sample_blk``: two 3x3 conv + BatchNorm + ReLU, then 2x2 max pooling."""
    layers: list[nn.Module] = []
    for c in (in_channels, out_channels):
        layers += [nn.Conv2d(c, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class ToySSD(_FixedSizeDetector):
    """d2l.ai's ``TinySSD`` (section 14.7), trained from scratch: a base net of three
    down-sampling blocks (16, 32, 64 filters), three more blocks (128 filters) and a global max
    pool give five feature maps (32, 16, 8, 4 and 1 cells at 256x256), each with a 3x3 class and
    box predictor for 4 anchors per cell: 5,444 anchors. Softmax classes, SSD offsets
    (:data:`SSD_VARIANCES`).
    """

    def __init__(self, num_classes: int, image_size: Sequence[int] = (256, 256), scales: Sequence[float] = ()):
        super().__init__()
        side = _square_side(image_size, "ToySSD")
        if side < 64:
            raise ValueError(f"ToySSD needs inputs of at least 64x64, got {side}x{side}")
        self.image_size, self.num_classes = (side, side), num_classes
        widths = [64, 128, 128, 128, 128]
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(_down_sample_blk(3, 16), _down_sample_blk(16, 32), _down_sample_blk(32, 64)),
                _down_sample_blk(64, 128),
                _down_sample_blk(128, 128),
                _down_sample_blk(128, 128),
                nn.AdaptiveMaxPool2d((1, 1)),
            ]
        )
        per_cell = len(TOY_SSD["sizes"][0]) + len(TOY_SSD["ratios"][0])
        self.outs = nn.ModuleList(OutConv(c, per_cell, num_classes) for c in widths)
        maps = [side // 8, side // 16, side // 32, side // 64, 1]
        geometry = {**TOY_SSD, "image_size": side, "feature_maps": maps}
        if scales:
            geometry.update(sizes=None, scales=_check_scales(scales, len(maps)))
        self._anchors = ssd_default_boxes(**geometry)
        self.coder = DeltaCoder(_SSD_CODER_WEIGHTS)
        self._level_sizes = [m * m * per_cell for m in maps]

    def forward(self, images: Tensor) -> DenseOutput:
        self._check_input(images)
        x, features = images, []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return _predict(self.outs, features)


def _extra_block(in_channels: int, out_channels: int, padding: int, separable: bool) -> nn.Sequential:
    """One of SSD's extra feature layers: 1x1 reduce to half, then a 3x3 stride-2 (padding 1) or
    valid (padding 0) conv; SSDLite makes the 3x3 depthwise."""
    mid = out_channels // 2
    if separable:
        spatial = [nn.Conv2d(mid, mid, 3, stride=2, padding=padding, groups=mid, bias=False), nn.BatchNorm2d(mid),
                   nn.ReLU6(inplace=True), nn.Conv2d(mid, out_channels, 1, bias=False)]  # fmt: skip
    else:
        spatial = [nn.Conv2d(mid, out_channels, 3, stride=2 if padding else 1, padding=padding, bias=False)]
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU6(inplace=True),
        *spatial,
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class MobileNetSSD(_FixedSizeDetector):
    """SSD (Liu et al. 2016) and SSDLite (Sandler et al. 2018) on MobileNetV2.

    Six feature maps: MobileNetV2's C3, C4 and C5 (strides 8, 16, 32) and three extra layers.
    ``lite=False`` (``ssd300``): SSD300's geometry on a 300x300 input, maps 38, 19, 10, 5, 3, 1
    (the extras: a stride-2 3x3 conv, then two valid 3x3 convs), dense 3x3 predictors and the
    8,732 default boxes of :func:`~multibox.anchors.ssd_default_boxes`. ``lite=True``
    (``ssdlite``): depthwise-separable extras (all stride 2) and predictors, 320x320 by default
    (maps 40, 20, 10, 5, 3, 2). Both use SSD300's scales (0.07 .. 1.05 of the side, or
    ``scales``) and aspect ratios, softmax classes and SSD offsets (:data:`SSD_VARIANCES`).

    SSDLite's paper taps MobileNetV2's stride-16 expansion layer and its 1280-channel last conv;
    here the maps start at stride 8 (objects of 20 pixels need it) and C5 is the 320-channel block
    output, which keeps working with frozen BatchNorm (see :mod:`multibox.models.backbones`).
    """

    def __init__(
        self,
        num_classes: int,
        image_size: Sequence[int] = (300, 300),
        lite: bool = False,
        backbone: str = "mobilenet_v2",
        pretrained: str = "imagenet",
        frozen_bn: bool = True,
        trainable_stages: int = 3,
        extra_channels: Sequence[int] = (256, 256, 128),
        scales: Sequence[float] = (),
    ):
        super().__init__()
        side = _square_side(image_size, "MobileNetSSD")
        self.image_size, self.num_classes, self.lite = (side, side), num_classes, lite
        self.backbone = build_backbone(backbone, pretrained, frozen_bn, trainable_stages)
        c3, c4, c5 = (_stride2(side, n) for n in (3, 4, 5))
        paddings = (1, 1, 1) if lite else (1, 0, 0)
        maps = [c3, c4, c5]
        for padding in paddings:
            maps.append(_stride2(maps[-1]) if padding else maps[-1] - 2)
        if maps[-1] < 1:
            raise ValueError(f"a {side}x{side} input is too small for SSD's six feature maps (got {maps})")
        channels = [*self.backbone.out_channels, *extra_channels]
        self.extras = nn.ModuleList(
            _extra_block(cin, cout, padding, lite)
            for cin, cout, padding in zip(channels[2:-1], channels[3:], paddings, strict=True)
        )
        ratios = [(2.0, 0.5)] + [(2.0, 0.5, 3.0, 1 / 3)] * 3 + [(2.0, 0.5)] * 2
        per_cell = [2 + len(r) for r in ratios]
        self.outs = nn.ModuleList(
            OutConv(c, k, num_classes, separable=lite) for c, k in zip(channels, per_cell, strict=True)
        )
        scales = _check_scales(scales, len(maps)) if scales else SSD300_SCALES
        self._anchors = ssd_default_boxes(side, maps, steps=None, scales=scales, ratios=ratios)
        self.coder = DeltaCoder(_SSD_CODER_WEIGHTS)
        self._level_sizes = [m * m * k for m, k in zip(maps, per_cell, strict=True)]

    def forward(self, images: Tensor) -> DenseOutput:
        self._check_input(images)
        features = list(self.backbone(images).values())
        x = features[-1]
        for extra in self.extras:
            x = extra(x)
            features.append(x)
        return _predict(self.outs, features)
