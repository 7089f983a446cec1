"""Box coders: boxes <-> regression targets relative to anchors.

A coder's ``encode(anchors, boxes)`` and ``decode(anchors, deltas)`` are inverses:
``decode(anchors, encode(anchors, boxes)) == boxes`` (to float precision, for boxes within
the coder's reach). Both broadcast over leading dimensions, so ``anchors [A, 4]`` serve a
batch of ``deltas [B, A, 4]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from .boxes import check_boxes

__all__ = ["Coder", "DeltaCoder", "TanhCoder", "YOLOCoder"]

_DEFAULT_CLAMP = math.log(1000.0 / 16)


class Coder(Protocol):
    """What the criteria, post-processing and export need of a box coder: an inverse pair.

    ``DeltaCoder``, ``TanhCoder`` and ``YOLOCoder`` are coders; ``anchor_index``, when given,
    says which of the full ``[A, 4]`` anchors the rows of ``boxes`` / ``deltas`` belong to.
    """

    def encode(self, anchors: Tensor, boxes: Tensor, anchor_index: Tensor | None = None) -> Tensor:
        """Regression targets ``[..., 4]`` of xyxy ``boxes`` relative to ``anchors``."""
        ...

    def decode(self, anchors: Tensor, deltas: Tensor, anchor_index: Tensor | None = None) -> Tensor:
        """xyxy boxes ``[..., 4]`` (the anchors' pixels) from ``deltas [..., 4]``."""
        ...


def _centres(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(cx, cy, w, h)`` of xyxy boxes ``[..., 4]``, each ``[...]``."""
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


def _check_sizes(boxes: Tensor, name: str) -> None:
    check_boxes(boxes, name, allow_empty_extent=False)


class DeltaCoder:
    """The R-CNN box parametrisation used by RetinaNet and SSD.

    ``encode`` gives ``(wx * dx / w_a, wy * dy / h_a, ww * log(w / w_a), wh * log(h / h_a))``
    where ``dx, dy`` is the centre offset and ``w_a, h_a`` the anchor size. Weights (1, 1, 1, 1)
    are RetinaNet's; (10, 10, 5, 5) are SSD's variances 0.1 / 0.2. ``decode`` clamps the log
    sizes at ``clamp`` so that ``exp`` cannot overflow. Numerically identical to
    ``torchvision.models.detection._utils.BoxCoder``.

    Args:
        weights: ``(wx, wy, ww, wh)`` multipliers of the targets.
        clamp: largest log size change accepted by ``decode``.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clamp: float = _DEFAULT_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"weights must be (wx, wy, ww, wh), got {weights!r}")
        self.weights = tuple(float(w) for w in weights)
        self.clamp = float(clamp)

    def __repr__(self) -> str:
        return f"DeltaCoder(weights={self.weights}, clamp={self.clamp:.4g})"

    def encode(self, anchors: Tensor, boxes: Tensor, anchor_index: Tensor | None = None) -> Tensor:
        """Regression targets of ``boxes`` w.r.t. ``anchors``.

        Args:
            anchors: ``[..., 4]`` xyxy pixels with positive width and height.
            boxes: ``[..., 4]`` xyxy pixels, broadcastable with ``anchors``, positive size.
            anchor_index: optional; then ``anchors`` is the full ``[A, 4]`` set and ``boxes``
                belong to ``anchors[anchor_index]`` (e.g. the positive anchors only).

        Returns:
            ``[..., 4]`` deltas ``(dx, dy, dw, dh)``, unitless.
        """
        if anchor_index is not None:
            anchors = anchors[anchor_index]
        _check_sizes(anchors, "anchors")
        _check_sizes(boxes, "boxes")
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = _centres(anchors)
        bx, by, bw, bh = _centres(boxes)
        return torch.stack(
            (
                wx * (bx - ax) / aw,
                wy * (by - ay) / ah,
                ww * torch.log(bw / aw),
                wh * torch.log(bh / ah),
            ),
            dim=-1,
        )

    def decode(self, anchors: Tensor, deltas: Tensor, anchor_index: Tensor | None = None) -> Tensor:
        """Boxes from regression outputs.

        Args:
            anchors: ``[..., 4]`` xyxy pixels.
            deltas: ``[..., 4]`` ``(dx, dy, dw, dh)``, broadcastable with ``anchors``.
            anchor_index: optional; then ``anchors`` is the full ``[A, 4]`` set and ``deltas``
                belong to ``anchors[anchor_index]`` (post-processing decodes only candidates).

        Returns:
            ``[..., 4]`` xyxy boxes in the anchors' pixels (not clipped to the image).
        """
        if deltas.shape[-1] != 4:
            raise ValueError(f"deltas must have shape [..., 4], got shape {list(deltas.shape)}")
        if anchor_index is not None:
            anchors = anchors[anchor_index]
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = _centres(anchors.to(deltas.dtype))
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.clamp)
        # Same operation order as torchvision's BoxCoder.decode_single, bit for bit.
        cx = dx * aw + ax
        cy = dy * ah + ay
        half_w = 0.5 * (torch.exp(dw) * aw)
        half_h = 0.5 * (torch.exp(dh) * ah)
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


class TanhCoder:
    """The fastai course's ``actn_to_bb``: bounded moves around grid anchors.

    ``decode`` squashes the outputs with ``tanh``: the centre moves up to half a grid cell
    in each direction and each side scales between 0.5x and 1.5x of the anchor's. ``encode``
    inverts it with ``atanh``; a box beyond that reach is encoded as the nearest reachable
    one (its targets are clamped to ``tanh`` values of ``+-(1 - 1e-6)``).

    Args:
        cell_sizes: grid-cell side per anchor, ``[A]`` (or ``[A, 2]`` as width, height), in
            the anchors' units; see :func:`multibox.anchors.grid_cell_sizes`. ``encode`` and
            ``decode`` then take all ``A`` anchors (the last-but-one dimension of their inputs).
    """

    _LIMIT = 1 - 1e-6

    def __init__(self, cell_sizes: Tensor):
        cells = torch.as_tensor(cell_sizes, dtype=torch.float32)
        if cells.ndim == 1:
            cells = torch.stack((cells, cells), dim=-1)
        if cells.ndim != 2 or cells.shape[1] != 2 or not bool((cells > 0).all()):
            raise ValueError("cell_sizes must be positive, shape [A] or [A, 2] (width, height)")
        self.cell_sizes = cells  # [A, 2]

    def __repr__(self) -> str:
        return f"TanhCoder(anchors={len(self.cell_sizes)})"

    def _cells(self, anchors: Tensor, anchor_index: Tensor | None) -> tuple[Tensor, Tensor]:
        cells = self.cell_sizes.to(anchors.device, anchors.dtype)
        if anchor_index is not None:
            return anchors[anchor_index], cells[anchor_index]
        if anchors.shape[-2] != len(cells):
            raise ValueError(
                f"this TanhCoder was built for {len(cells)} anchors, got anchors of shape {list(anchors.shape)}"
            )
        return anchors, cells

    def encode(self, anchors: Tensor, boxes: Tensor, anchor_index: Tensor | None = None) -> Tensor:
        """Pre-``tanh`` outputs that decode to ``boxes``: ``[..., 4]`` for anchors and boxes ``[..., 4]``."""
        anchors, cells = self._cells(anchors, anchor_index)
        _check_sizes(anchors, "anchors")
        _check_sizes(boxes, "boxes")
        ax, ay, aw, ah = _centres(anchors)
        bx, by, bw, bh = _centres(boxes)
        squashed = torch.stack(
            (
                2 * (bx - ax) / cells[..., 0],
                2 * (by - ay) / cells[..., 1],
                2 * (bw / aw - 1),
                2 * (bh / ah - 1),
            ),
            dim=-1,
        )
        return torch.atanh(squashed.clamp(-self._LIMIT, self._LIMIT))

    def decode(self, anchors: Tensor, deltas: Tensor, anchor_index: Tensor | None = None) -> Tensor:
        """Boxes ``[..., 4]`` (xyxy, the anchors' units) from raw outputs ``[..., 4]``.

        ``anchor_index`` works as in :meth:`DeltaCoder.decode`.
        """
        if deltas.shape[-1] != 4:
            raise ValueError(f"deltas must have shape [..., 4], got shape {list(deltas.shape)}")
        anchors, cells = self._cells(anchors.to(deltas.dtype), anchor_index)
        ax, ay, aw, ah = _centres(anchors)
        t = torch.tanh(deltas)
        cx = ax + t[..., 0] / 2 * cells[..., 0]
        cy = ay + t[..., 1] / 2 * cells[..., 1]
        half_w = (t[..., 2] / 2 + 1) * aw / 2
        half_h = (t[..., 3] / 2 + 1) * ah / 2
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


class YOLOCoder:
    """YOLO's grid-relative boxes, in the bounded form of YOLOv4-scaled and YOLOv5.

    ``decode``: the centre moves ``(2 sigmoid(t) - 1)`` strides from the anchor's cell centre
    (up to one cell each way, so that a box can be predicted from a neighbouring cell too), and
    each side is ``(2 sigmoid(t))^2`` times the anchor's (0 to 4x). YOLOv3's ``exp`` sizes are
    unbounded; the squared sigmoid keeps the IoU losses' gradients finite from the first step.
    ``encode`` inverts it; a box beyond that reach is encoded as the nearest reachable one.

    Args:
        strides: the stride (cell side, pixels) of each anchor's feature map, ``[A]``.
            ``encode`` and ``decode`` then take all ``A`` anchors (the last-but-one dimension of
            their inputs), or ``anchor_index`` into them.
    """

    _LIMIT = 1 - 1e-6

    def __init__(self, strides: Tensor):
        strides = torch.as_tensor(strides, dtype=torch.float32)
        if strides.ndim != 1 or not bool((strides > 0).all()):
            raise ValueError("strides must be positive, one per anchor: shape [A]")
        self.strides = strides

    def __repr__(self) -> str:
        return f"YOLOCoder(anchors={len(self.strides)})"

    def _strides(self, anchors: Tensor, anchor_index: Tensor | None) -> tuple[Tensor, Tensor]:
        strides = self.strides.to(anchors.device, anchors.dtype)
        if anchor_index is not None:
            return anchors[anchor_index], strides[anchor_index]
        if anchors.shape[-2] != len(strides):
            raise ValueError(
                f"this YOLOCoder was built for {len(strides)} anchors, got anchors of shape {list(anchors.shape)}"
            )
        return anchors, strides

    def encode(self, anchors: Tensor, boxes: Tensor, anchor_index: Tensor | None = None) -> Tensor:
        """Pre-``sigmoid`` outputs ``[..., 4]`` that decode to ``boxes [..., 4]``."""
        anchors, strides = self._strides(anchors, anchor_index)
        _check_sizes(anchors, "anchors")
        _check_sizes(boxes, "boxes")
        ax, ay, aw, ah = _centres(anchors)
        bx, by, bw, bh = _centres(boxes)
        squashed = torch.stack(
            (
                ((bx - ax) / strides + 1) / 2,
                ((by - ay) / strides + 1) / 2,
                torch.sqrt(bw / aw) / 2,
                torch.sqrt(bh / ah) / 2,
            ),
            dim=-1,
        )
        return torch.logit(squashed.clamp(1 - self._LIMIT, self._LIMIT))

    def decode(self, anchors: Tensor, deltas: Tensor, anchor_index: Tensor | None = None) -> Tensor:
        """Boxes ``[..., 4]`` (xyxy, the anchors' pixels) from raw outputs ``[..., 4]``.

        ``anchor_index`` works as in :meth:`DeltaCoder.decode`.
        """
        if deltas.shape[-1] != 4:
            raise ValueError(f"deltas must have shape [..., 4], got shape {list(deltas.shape)}")
        anchors, strides = self._strides(anchors.to(deltas.dtype), anchor_index)
        ax, ay, aw, ah = _centres(anchors)
        t = torch.sigmoid(deltas)
        cx = ax + (2 * t[..., 0] - 1) * strides
        cy = ay + (2 * t[..., 1] - 1) * strides
        half_w = 2 * t[..., 2] ** 2 * aw
        half_h = 2 * t[..., 3] ** 2 * ah
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
