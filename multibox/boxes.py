"""Box formats, areas, clipping and the IoU family (IoU, GIoU, DIoU, CIoU).

Every box in multibox is a float tensor ``[N, 4]`` in ``(x1, y1, x2, y2)`` format, absolute
pixels, with ``x1 <= x2`` and ``y1 <= y2``. Other formats are converted only at the edges.

The IoU family is computed by one function, :func:`iou_family`, on broadcastable shapes: the
pairwise functions (``[N, 4] x [M, 4] -> [N, M]``) feed it ``boxes1[:, None]`` and
``boxes2[None]``; the losses feed it matched pairs (``[N, 4] x [N, 4] -> [N]``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_convert",
    "box_iou",
    "box_iou_numpy",
    "check_boxes",
    "clip_boxes",
    "complete_box_iou",
    "distance_box_iou",
    "generalized_box_iou",
    "iou_family",
]

_FORMATS = ("xyxy", "xywh", "cxcywh")

# Added to denominators that vanish only for degenerate (zero-size) boxes; same value as
# torchvision.ops uses in its DIoU/CIoU functions.
_EPS = 1e-7


def check_boxes(boxes: Tensor, name: str = "boxes", *, allow_empty_extent: bool = True) -> None:
    """Raise ``ValueError`` unless ``boxes`` is a valid ``[..., 4]`` xyxy float tensor.

    Valid means: last dimension 4, floating point, every coordinate finite, ``x1 <= x2`` and
    ``y1 <= y2`` (``<`` when ``allow_empty_extent`` is False). The message names the argument
    and the first offending row, so that a user can find the box in their data.
    """
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [N, 4], got {type(boxes).__name__}")
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (x1, y1, x2, y2), got shape {list(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got dtype {boxes.dtype}")
    if boxes.numel() == 0:
        return
    flat = boxes.reshape(-1, 4)
    finite = torch.isfinite(flat).all(dim=1)
    if allow_empty_extent:
        ordered = (flat[:, 2] >= flat[:, 0]) & (flat[:, 3] >= flat[:, 1])
    else:
        ordered = (flat[:, 2] > flat[:, 0]) & (flat[:, 3] > flat[:, 1])
    bad = ~(finite & ordered)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        where = _row_name(boxes.shape, row)
        values = [round(v, 4) for v in flat[row].tolist()]
        if not bool(finite[row]):
            problem = "has a NaN or infinite coordinate"
        elif allow_empty_extent:
            problem = "has x2 < x1 or y2 < y1"
        else:
            problem = "has zero or negative width or height"
        raise ValueError(
            f"{name} {where} {problem}: {values}. Boxes must be (x1, y1, x2, y2) in pixels with "
            f"x1 <= x2 and y1 <= y2; convert xywh/cxcywh boxes with multibox.boxes.box_convert."
        )


def _row_name(shape: torch.Size, flat_row: int) -> str:
    """``row 7`` for ``[N, 4]`` tensors, ``[2, 7]`` (image 2, row 7) for batched ones."""
    lead = list(shape[:-1])
    if len(lead) <= 1:
        return f"row {flat_row}"
    index = []
    for size in reversed(lead):
        index.append(flat_row % size)
        flat_row //= size
    return f"row {list(reversed(index))}"


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes ``[..., 4]`` between ``xyxy``, ``xywh`` (top-left, size) and ``cxcywh``.

    Units are unchanged (pixels in, pixels out). Same formats and results as
    ``torchvision.ops.box_convert``.
    """
    for fmt, arg in ((in_fmt, "in_fmt"), (out_fmt, "out_fmt")):
        if fmt not in _FORMATS:
            raise ValueError(f"{arg} must be one of {_FORMATS}, got {fmt!r}")
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got shape {list(boxes.shape)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        x1, y1, x2, y2 = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    else:
        x1, y1, x2, y2 = a, b, c, d
    if out_fmt == "xyxy":
        out = (x1, y1, x2, y2)
    elif out_fmt == "xywh":
        out = (x1, y1, x2 - x1, y2 - y1)
    else:
        out = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
    return torch.stack(out, dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes ``[..., 4]`` in square pixels, shape ``[...]``."""
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got shape {list(boxes.shape)}")
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip xyxy boxes ``[..., 4]`` to an image of ``image_size = (height, width)`` pixels."""
    height, width = image_size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def iou_family(boxes1: Tensor, boxes2: Tensor, kind: str) -> Tensor:
    """IoU, GIoU, DIoU or CIoU of broadcastable xyxy boxes ``[..., 4]``, shape ``[...]``.

    Formulas as in the papers and ``torchvision.ops``: GIoU subtracts the share of the
    smallest enclosing box not covered by the union; DIoU subtracts the squared centre
    distance over the squared enclosing diagonal; CIoU also subtracts ``alpha * v`` with
    ``v = 4 / pi^2 * (atan(w2 / h2) - atan(w1 / h1))^2``, ``alpha = v / (1 - iou + v)``.
    """
    x1a, y1a, x2a, y2a = boxes1.unbind(-1)
    x1b, y1b, x2b, y2b = boxes2.unbind(-1)
    area1 = (x2a - x1a) * (y2a - y1a)
    area2 = (x2b - x1b) * (y2b - y1b)
    inter_w = (torch.minimum(x2a, x2b) - torch.maximum(x1a, x1b)).clamp_(min=0)
    inter_h = (torch.minimum(y2a, y2b) - torch.maximum(y1a, y1b)).clamp_(min=0)
    inter = inter_w * inter_h
    union = area1 + area2 - inter
    # union is 0 only when both boxes are degenerate: their IoU is 0, not NaN.
    iou = inter / union.clamp(min=torch.finfo(union.dtype).tiny)
    if kind == "iou":
        return iou

    encl_w = torch.maximum(x2a, x2b) - torch.minimum(x1a, x1b)
    encl_h = torch.maximum(y2a, y2b) - torch.minimum(y1a, y1b)
    if kind == "giou":
        encl_area = encl_w * encl_h
        return iou - (encl_area - union) / encl_area.clamp(min=torch.finfo(union.dtype).tiny)

    diag_sq = encl_w**2 + encl_h**2 + _EPS
    centre_sq = ((x1a + x2a) - (x1b + x2b)) ** 2 / 4 + ((y1a + y2a) - (y1b + y2b)) ** 2 / 4
    diou = iou - centre_sq / diag_sq
    if kind == "diou":
        return diou

    w1, h1 = x2a - x1a, y2a - y1a
    w2, h2 = x2b - x1b, y2b - y1b
    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + _EPS)) - torch.atan(w1 / (h1 + _EPS))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + _EPS)
    return diou - alpha * v


def _pairwise(boxes1: Tensor, boxes2: Tensor, kind: str) -> Tensor:
    for boxes, name in ((boxes1, "boxes1"), (boxes2, "boxes2")):
        if boxes.ndim != 2:
            raise ValueError(f"{name} must have shape [N, 4], got shape {list(boxes.shape)}")
        check_boxes(boxes, name)
    return iou_family(boxes1[:, None, :], boxes2[None, :, :], kind)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union.

    Args:
        boxes1: ``[N, 4]`` xyxy boxes in pixels.
        boxes2: ``[M, 4]`` xyxy boxes in pixels.

    Returns:
        ``[N, M]`` IoU in ``[0, 1]``; 0 between two degenerate (zero-area) boxes.
    """
    return _pairwise(boxes1, boxes2, "iou")


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019), ``[N, 4] x [M, 4] -> [N, M]`` in ``[-1, 1]``."""
    return _pairwise(boxes1, boxes2, "giou")


def distance_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise distance IoU (Zheng et al. 2020), ``[N, 4] x [M, 4] -> [N, M]`` in ``[-1, 1]``."""
    return _pairwise(boxes1, boxes2, "diou")


def complete_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise complete IoU (Zheng et al. 2020), ``[N, 4] x [M, 4] -> [N, M]``.

    ``boxes2`` plays the ground truth in the aspect term; the term is symmetric anyway.
    """
    return _pairwise(boxes1, boxes2, "ciou")


def box_iou_numpy(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box ``[4]`` with each of ``boxes [N, 4]`` -> ``[N]``, in NumPy (data and VOC code).

    0 between two degenerate boxes, as :func:`box_iou`.
    """
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    union = np.prod(box[2:] - box[:2]) + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter
    return inter / np.maximum(union, np.finfo(np.float64).tiny)
