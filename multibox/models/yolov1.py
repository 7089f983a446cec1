"""YOLOv1 (Redmon et al. 2016): one network, an S x S grid, B boxes a cell, no anchors.

Each cell predicts B boxes, each ``(x, y, w, h)`` and a confidence, and one class distribution
shared by its boxes. ``x, y`` place the box's centre inside its cell, ``w, h`` are the square
roots of its size over the image's (sigmoids here, so that each stays in ``[0, 1]``, as the
paper's targets are). The head is the paper's (a convolution on the backbone's last map, then two
fully connected layers, so that every cell's prediction sees the whole image) or, learning far
faster on a CPU budget, a 1x1 convolution per cell.

The output is the :class:`~multibox.structures.DenseOutput` of every dense detector, with one
"anchor" per (cell, box): the cell's own box, which :class:`YOLOv1Coder` decodes against. The
``K + 1`` score columns are the box's confidence logit (column 0) and its cell's class logits
(the same for the B boxes of a cell); a detection scores ``sigmoid(confidence) x
sigmoid(class)``, the paper's class-specific confidence (post-processing's ``objectness``
activation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..structures import DenseOutput
from .backbones import build_backbone
from .ssd import _FixedSizeDetector, _square_side

__all__ = ["YOLOv1", "YOLOv1Coder", "cell_boxes"]


def cell_boxes(side: int, grid: int, boxes: int) -> Tensor:
    """``[grid * grid * boxes, 4]`` xyxy boxes of the cells of a ``side``-pixel square input, row
    by row, each repeated ``boxes`` times (the output's order)."""
    edges = torch.linspace(0, side, grid + 1)
    y1, x1 = torch.meshgrid(edges[:-1], edges[:-1], indexing="ij")
    y2, x2 = torch.meshgrid(edges[1:], edges[1:], indexing="ij")
    cells = torch.stack((x1, y1, x2, y2), dim=-1).reshape(-1, 4)
    return cells.repeat_interleave(boxes, dim=0)


class YOLOv1Coder:
    """YOLOv1's box parameters: ``sigmoid(tx), sigmoid(ty)`` the centre's place in its cell,
    ``sigmoid(tw)^2, sigmoid(th)^2`` the box's width and height over the image's.

    ``anchors`` are the cells' boxes (:func:`cell_boxes`); ``image_size`` ``(height, width)``.
    """

    def __init__(self, image_size: Sequence[int], eps: float = 1e-6):
        self.height, self.width = float(image_size[0]), float(image_size[1])
        self.eps = eps

    def targets(self, cells: Tensor, boxes: Tensor) -> Tensor:
        """The sigmoids' targets ``[..., 4]``: centre offsets in the cell, square-rooted sizes."""
        cw, ch = cells[..., 2] - cells[..., 0], cells[..., 3] - cells[..., 1]
        cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
        w = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) / self.width
        h = (boxes[..., 3] - boxes[..., 1]).clamp(min=0) / self.height
        return torch.stack(((cx - cells[..., 0]) / cw, (cy - cells[..., 1]) / ch, w.sqrt(), h.sqrt()), dim=-1)

    def encode(self, anchors: Tensor, boxes: Tensor, anchor_index: Tensor | None = None) -> Tensor:
        """Raw outputs ``[..., 4]`` (logits of :meth:`targets`, clamped inside ``(0, 1)``)."""
        cells = anchors if anchor_index is None else anchors[anchor_index]
        return torch.logit(self.targets(cells, boxes).clamp(self.eps, 1 - self.eps))

    def decode(self, anchors: Tensor, deltas: Tensor, anchor_index: Tensor | None = None) -> Tensor:
        """xyxy boxes ``[..., 4]`` in input pixels from raw outputs ``[..., 4]``."""
        cells = anchors if anchor_index is None else anchors[anchor_index]
        p = torch.sigmoid(deltas)
        cx = cells[..., 0] + p[..., 0] * (cells[..., 2] - cells[..., 0])
        cy = cells[..., 1] + p[..., 1] * (cells[..., 3] - cells[..., 1])
        w, h = p[..., 2] ** 2 * self.width, p[..., 3] ** 2 * self.height
        return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


class YOLOv1(_FixedSizeDetector):
    """YOLOv1 on a torchvision backbone: images ``[B, 3, S, S]`` -> ``DenseOutput``.

    The backbone's stride-32 map goes through a 3x3 convolution to ``channels`` and is resized to
    the ``grid x grid`` cells (bilinear; nothing to do where the map is the grid: 8 x 8 at 256
    px). With ``head="fc"`` (the paper's) it is flattened and fed to two fully connected layers
    (``hidden`` units, LeakyReLU 0.1 and dropout between them, as the paper's 4096) that give
    each cell ``boxes x 5 + K`` numbers; with ``"conv"`` a 1x1 convolution gives each cell its
    numbers from its own features (dropout before it).

    Args:
        num_classes: foreground classes ``K``.
        image_size: the square input the network is built for.
        grid: cells a side (the paper: 7 at 448 px).
        boxes: boxes a cell (the paper: 2).
        backbone, pretrained, frozen_bn, trainable_stages: see
            :func:`~multibox.models.backbones.build_backbone`.
        channels: width of the convolution before the fully connected layers.
        hidden: units of the first fully connected layer.
        dropout: dropout after it (the paper: 0.5).
    """

    activation = "objectness"
    background_column = False

    def __init__(
        self,
        num_classes: int,
        image_size: Sequence[int] = (448, 448),
        grid: int = 7,
        boxes: int = 2,
        backbone: str = "mobilenet_v2",
        pretrained: str = "imagenet",
        frozen_bn: bool = True,
        trainable_stages: int = 3,
        channels: int = 64,
        hidden: int = 512,
        dropout: float = 0.5,
        head: str = "fc",
    ):
        super().__init__()
        side = _square_side(image_size, "YOLOv1")
        if head not in ("fc", "conv"):
            raise ValueError(
                f"YOLOv1's head is 'fc' (the paper's) or 'conv' (a 1x1 convolution per cell), got {head!r}"
            )
        if grid < 1 or boxes < 1:
            raise ValueError(f"YOLOv1 needs a grid and boxes of at least 1, got grid {grid}, boxes {boxes}")
        self.image_size, self.num_classes, self.grid, self.boxes = (side, side), num_classes, grid, boxes
        self.backbone = build_backbone(backbone, pretrained, frozen_bn, trainable_stages)
        self.conv = nn.Sequential(
            nn.Conv2d(self.backbone.out_channels[-1], channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(0.1, inplace=True),
        )
        per_cell = boxes * 5 + num_classes
        if head == "fc":
            self.predict = nn.Sequential(
                nn.Flatten(),
                nn.Linear(channels * grid * grid, hidden),
                nn.LeakyReLU(0.1, inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, grid * grid * per_cell),
            )
            bias = self.predict[-1].bias.view(grid * grid, per_cell)
        else:
            self.predict = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, per_cell, 1))
            bias = self.predict[-1].bias.view(1, per_cell)
        self.head = head
        with torch.no_grad():  # start where an empty image is right: low confidence
            bias.zero_()
            bias[:, 4 : boxes * 5 : 5] = -4.0
        self._anchors = cell_boxes(side, grid, boxes)
        self._level_sizes = [grid * grid * boxes]
        self.coder = YOLOv1Coder((side, side))

    def forward(self, images: Tensor) -> DenseOutput:
        self._check_input(images)
        c5 = list(self.backbone(images).values())[-1]
        x = self.conv(c5)
        if x.shape[-1] != self.grid or x.shape[-2] != self.grid:  # ONNX has no adaptive pooling to any size
            x = nn.functional.interpolate(x, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        y = self.predict(x)
        cells = (
            y.view(images.shape[0], self.grid * self.grid, -1) if self.head == "fc" else y.flatten(2).transpose(1, 2)
        )
        per_box = cells[..., : self.boxes * 5].reshape(images.shape[0], -1, self.boxes, 5)
        classes = cells[..., self.boxes * 5 :, None].transpose(-1, -2).expand(-1, -1, self.boxes, -1)
        scores = torch.cat((per_box[..., 4:], classes), dim=-1).flatten(1, 2)  # [N, cells * boxes, 1 + K]
        return DenseOutput(scores, per_box[..., :4].flatten(1, 2))
