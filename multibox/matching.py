"""Matching anchors to ground-truth boxes: pure functions of an IoU matrix.

Every function returns, per anchor, the index of its ground-truth box, or one of the named
sentinels :data:`NEGATIVE` (background) and :data:`IGNORE` (neither: excluded from the
classification loss). Functions take ``iou`` of shape ``[G, A]`` for one image or
``[B, G, A]`` for a batch whose images were padded to ``G`` boxes by :func:`batch_iou`;
padding rows hold IoU ``-1`` and can never be matched. An image with no boxes is all
``NEGATIVE``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .boxes import check_boxes, iou_family

__all__ = [
    "IGNORE",
    "NEGATIVE",
    "YOLO_RULES",
    "batch_iou",
    "match",
    "match_atss",
    "match_boxes",
    "match_ssd",
    "match_yolo",
    "pad_batch",
    "relative_iou",
    "sample_balanced",
]

NEGATIVE = -1
"""Anchor matched to no box: it trains as background."""
IGNORE = -2
"""Anchor whose best IoU falls between the thresholds: no classification loss."""

_PAD_IOU = -1.0


def pad_batch(tensors: Sequence[Tensor], fill: float = 0) -> tuple[Tensor, Tensor]:
    """Stack per-image tensors ``[G_i, ...]`` (boxes, labels) into ``[B, G, ...]``, ``G = max(1, max G_i)``.

    Returns the padded tensor and ``valid [B, G]`` (True for real entries). Entry ``j`` of
    image ``i`` stays at ``padded[i, j]``.
    """
    if len(tensors) == 0:
        raise ValueError("expected one tensor per image, got an empty sequence")
    ref = tensors[0]
    counts = torch.tensor([t.shape[0] for t in tensors], device=ref.device)
    padded = torch.nn.utils.rnn.pad_sequence(list(tensors), batch_first=True, padding_value=fill)
    if padded.shape[1] == 0:  # no image has an entry: keep one padding slot so shapes stay simple
        padded = ref.new_full((len(tensors), 1, *ref.shape[1:]), fill)
    valid = torch.arange(padded.shape[1], device=ref.device)[None, :] < counts[:, None]
    return padded, valid


def batch_iou(boxes: Sequence[Tensor], anchors: Tensor) -> Tensor:
    """IoU of each image's ground-truth boxes with the anchors, padded to ``[B, G, A]``.

    Args:
        boxes: per image, ``[G_i, 4]`` xyxy boxes in pixels (``G_i`` may be 0).
        anchors: ``[A, 4]`` xyxy anchors in the same pixels.

    Returns:
        ``[B, G, A]`` with ``G = max(1, max G_i)``; rows past ``G_i`` hold ``-1`` so that the
        matchers never pick them.
    """
    _check_batch(boxes, anchors)
    padded, valid = pad_batch(boxes)
    iou = iou_family(padded[:, :, None, :], anchors[None, None, :, :], "iou")  # [B, G, A]
    return iou.masked_fill_(~valid[:, :, None], _PAD_IOU)


def _check_batch(boxes: Sequence[Tensor], anchors: Tensor) -> None:
    if anchors.ndim != 2:
        raise ValueError(f"anchors must have shape [A, 4], got shape {list(anchors.shape)}")
    check_boxes(anchors, "anchors")
    if len(boxes) == 0:
        raise ValueError("boxes must hold one [G, 4] tensor per image, got an empty sequence")
    for i, b in enumerate(boxes):
        if b.ndim != 2:
            raise ValueError(f"boxes[{i}] must have shape [G, 4], got shape {list(b.shape)}")
        check_boxes(b, f"boxes[{i}]")


def _check_iou(iou: Tensor) -> None:
    if iou.ndim not in (2, 3):
        raise ValueError(f"iou must have shape [G, A] or [B, G, A], got shape {list(iou.shape)}")


def match(iou: Tensor, pos_iou: float = 0.5, neg_iou: float = 0.4, allow_low_quality: bool = True) -> Tensor:
    """Assign each anchor a ground-truth index, :data:`NEGATIVE` or :data:`IGNORE` (RetinaNet, Faster R-CNN).

    An anchor whose best IoU is ``>= pos_iou`` takes that box; ``< neg_iou`` is NEGATIVE; in
    between, IGNORE. With ``allow_low_quality``, every anchor that has a box's highest IoU
    (ties included) is matched too, to its own best box, as torchvision's ``Matcher`` does;
    unlike it, a box that overlaps no anchor at all (highest IoU 0) forces nothing. Where two
    boxes tie for an anchor, the first wins.

    Args:
        iou: ``[G, A]``, or ``[B, G, A]`` padded as by :func:`batch_iou`.
        pos_iou: lowest IoU of a positive match.
        neg_iou: IoU below which an anchor is background; ``neg_iou <= pos_iou``.
        allow_low_quality: give each box at least its best anchor(s).

    Returns:
        ``LongTensor [A]`` (or ``[B, A]``) of box indices, NEGATIVE or IGNORE.
    """
    _check_iou(iou)
    _check_thresholds(pos_iou, neg_iou)
    if iou.shape[-2] == 0:
        return torch.full(iou.shape[:-2] + iou.shape[-1:], NEGATIVE, dtype=torch.long, device=iou.device)
    best_iou, best_box = iou.max(dim=-2)  # [..., A]
    forced = None
    if allow_low_quality:
        highest = iou.max(dim=-1, keepdim=True).values  # [..., G, 1]
        forced = ((iou == highest) & (highest > 0)).any(dim=-2)
    return _assign(best_iou, best_box, forced, pos_iou, neg_iou)


def _check_thresholds(pos_iou: float, neg_iou: float) -> None:
    if neg_iou > pos_iou:
        raise ValueError(f"neg_iou ({neg_iou}) must not exceed pos_iou ({pos_iou})")


def _assign(best_iou: Tensor, best_box: Tensor, forced: Tensor | None, pos_iou: float, neg_iou: float) -> Tensor:
    """Thresholds on each anchor's best IoU, then the low-quality anchors ``forced`` onto their best box."""
    matches = best_box.masked_fill(best_iou < pos_iou, IGNORE)
    matches.masked_fill_(best_iou < neg_iou, NEGATIVE)
    if forced is not None:
        matches = torch.where(forced, best_box, matches)
    return matches


# IoU entries that match_boxes holds at once ([B, G, columns]): a block that stays in cache.
_BLOCK_ELEMENTS = 1 << 18


def match_boxes(
    boxes: Sequence[Tensor],
    anchors: Tensor,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    allow_low_quality: bool = True,
) -> Tensor:
    """:func:`match` of each image's boxes to the anchors, without the ``[B, G, A]`` IoU tensor.

    Same result as ``match(batch_iou(boxes, anchors), pos_iou, neg_iou, allow_low_quality)``,
    vectorised over the batch. The IoU of all boxes with a block of anchors is computed into
    reused buffers and reduced at once (each anchor's best box; each box's best IoU in the
    block); the few blocks that hold a box's overall best IoU are then revisited to find its
    tied best anchors. On a CPU this is several times faster than materialising the IoU.

    Args:
        boxes: per image, ``[G_i, 4]`` xyxy boxes in pixels (``G_i`` may be 0).
        anchors: ``[A, 4]`` xyxy anchors in the same pixels.

    Returns:
        ``LongTensor [B, A]`` of box indices, NEGATIVE or IGNORE.
    """
    _check_batch(boxes, anchors)
    _check_thresholds(pos_iou, neg_iou)
    # Padding rows are the box (0, 0, 0, 0): IoU 0 with every anchor and after every real box,
    # so they never win an anchor (ties go to the first box) and never force one (IoU 0).
    padded, _ = pad_batch(boxes)  # [B, G, 4]
    batch, num_boxes, num_anchors = padded.shape[0], padded.shape[1], anchors.shape[0]
    gt = _Corners(padded[:, :, None, :])  # [B, G, 1]
    cols = max(1, _BLOCK_ELEMENTS // (batch * num_boxes))
    buffers = [anchors.new_empty((batch, num_boxes, cols)) for _ in range(3)]
    best_iou = anchors.new_empty((batch, num_anchors))
    best_box = torch.empty((batch, num_anchors), dtype=torch.long, device=anchors.device)
    block_highest = []
    for start in range(0, num_anchors, cols):
        block = slice(start, start + cols)
        iou = _iou(gt, _Corners(anchors[block]), [b[..., : anchors[block].shape[0]] for b in buffers])  # [B, G, n]
        best_iou[:, block], best_box[:, block] = iou.max(dim=1)  # on ties, the first box
        if allow_low_quality:
            block_highest.append(iou.amax(dim=2))  # [B, G]
    forced = None
    if allow_low_quality:
        forced = _tied_best_anchors(padded, anchors, torch.stack(block_highest), cols)
    return _assign(best_iou, best_box, forced, pos_iou, neg_iou)


class _Corners:
    """Coordinates and area of boxes ``[..., 4]`` as separate broadcastable tensors."""

    def __init__(self, boxes: Tensor):
        self.x1, self.y1, self.x2, self.y2 = boxes.unbind(-1)
        # A positive area keeps every union positive; no IoU changes (degenerate boxes stay at 0).
        self.area = ((self.x2 - self.x1) * (self.y2 - self.y1)).clamp(min=torch.finfo(boxes.dtype).tiny)


def _iou(a: _Corners, b: _Corners, out: Sequence[Tensor]) -> Tensor:
    """IoU of broadcastable corners, written into three ``out`` buffers of the result's shape."""
    w, h, tmp = out
    torch.minimum(a.x2, b.x2, out=w).sub_(torch.maximum(a.x1, b.x1, out=tmp)).clamp_(min=0)
    torch.minimum(a.y2, b.y2, out=h).sub_(torch.maximum(a.y1, b.y1, out=tmp)).clamp_(min=0)
    inter = w.mul_(h)
    return inter.div_(torch.add(a.area, b.area, out=tmp).sub_(inter))


def _tied_best_anchors(padded: Tensor, anchors: Tensor, block_highest: Tensor, cols: int) -> Tensor:
    """``[B, A]``: anchors whose IoU with some box equals that box's highest IoU (> 0), ties included.

    ``block_highest [blocks, B, G]`` holds each box's highest IoU within each block of ``cols``
    anchors; only the blocks that reach the overall highest are computed again.
    """
    batch, num_anchors = padded.shape[0], anchors.shape[0]
    highest = block_highest.amax(dim=0)  # [B, G]
    block, image, box = ((block_highest == highest) & (highest > 0)).nonzero(as_tuple=True)  # [T]
    anchor = block[:, None] * cols + torch.arange(cols, device=anchors.device)  # [T, cols]
    inside = anchor < num_anchors
    anchor = anchor.clamp(max=num_anchors - 1)
    shape = anchor.shape
    buffers = [anchors.new_empty(shape) for _ in range(3)]
    iou = _iou(_Corners(padded[image, box][:, None, :]), _Corners(anchors[anchor]), buffers)  # [T, cols]
    tied = (iou == highest[image, box][:, None]) & inside
    forced = torch.zeros((batch, num_anchors), dtype=torch.bool, device=anchors.device)
    forced[image[:, None].expand(shape)[tied], anchor[tied]] = True
    return forced


def match_ssd(iou: Tensor, threshold: float = 0.5) -> Tensor:
    """SSD's matching (fastai ``map_to_ground_truth``, torchvision ``SSDMatcher``).

    First every box takes its single best anchor (a later box wins an anchor two boxes both
    chose); then every other anchor whose best IoU is ``>= threshold`` takes its best box; the
    rest are NEGATIVE. There is no IGNORE band.

    Args:
        iou: ``[G, A]``, or ``[B, G, A]`` padded as by :func:`batch_iou`.
        threshold: lowest IoU of a positive match.

    Returns:
        ``LongTensor [A]`` (or ``[B, A]``) of box indices or NEGATIVE.
    """
    _check_iou(iou)
    if iou.shape[-2] == 0:
        return torch.full(iou.shape[:-2] + iou.shape[-1:], NEGATIVE, dtype=torch.long, device=iou.device)
    best_iou, best_box = iou.max(dim=-2)  # [..., A]
    matches = best_box.masked_fill(best_iou < threshold, NEGATIVE)
    highest, best_anchor = iou.max(dim=-1)  # [..., G]
    box_index = torch.arange(iou.shape[-2], device=iou.device).expand_as(best_anchor)
    box_index = box_index.masked_fill(highest <= 0, NEGATIVE)  # padding and non-overlapping boxes
    forced = torch.full_like(matches, NEGATIVE)
    forced.scatter_reduce_(-1, best_anchor, box_index, reduce="amax")
    return torch.where(forced >= 0, forced, matches)


def relative_iou(iou: Tensor, matched: Tensor) -> Tensor:
    """``[B, A]``: each positive anchor's IoU with its matched box over that box's best anchor
    IoU (1 for the box's best anchor), 0 for the others.

    Args:
        iou: ``[B, G, A]`` box-anchor IoU, as :func:`~multibox.matching.batch_iou`.
        matched: ``[B, A]`` box index per anchor or a negative value, as
            :func:`~multibox.matching.match_ssd`.
    """
    image, anchor = (matched >= 0).nonzero(as_tuple=True)
    box = matched[image, anchor]
    relative = torch.zeros(matched.shape, dtype=iou.dtype, device=iou.device)
    relative[image, anchor] = iou[image, box, anchor] / iou.amax(dim=-1)[image, box]
    return relative


def match_atss(boxes: Tensor, anchors: Tensor, level_sizes: Sequence[int], k: int = 9) -> Tensor:
    """ATSS (Zhang et al. 2020): each box sets its own IoU threshold from its nearest anchors.

    Per box and pyramid level, the ``k`` anchors whose centres are nearest the box's centre are
    its candidates; its threshold is the mean plus the (unbiased) standard deviation of their IoU
    with it. Candidates reaching it, their centre inside the box, are its positives; an anchor
    positive for several boxes takes the one it overlaps most. Every other anchor is NEGATIVE:
    no IGNORE band. Small objects, which reach IoU 0.5 with few anchors, get positives too.

    Args:
        boxes: ``[G, 4]`` xyxy boxes of one image (``G`` may be 0).
        anchors: ``[A, 4]`` xyxy anchors, level-major as ``level_sizes`` counts them.
        level_sizes: anchors per pyramid level.
        k: candidates per level.

    Returns:
        ``LongTensor [A]`` of box indices or NEGATIVE.
    """
    check_boxes(boxes, "boxes")
    matches = torch.full((len(anchors),), NEGATIVE, dtype=torch.long, device=anchors.device)
    if len(boxes) == 0:
        return matches
    iou = iou_family(boxes[:, None, :], anchors[None, :, :], "iou")  # [G, A]
    box_centres, anchor_centres = (boxes[:, :2] + boxes[:, 2:]) / 2, (anchors[:, :2] + anchors[:, 2:]) / 2
    distance = torch.cdist(box_centres, anchor_centres)  # [G, A]
    candidates, start = [], 0
    for size in level_sizes:
        nearest = distance[:, start : start + size].topk(min(k, size), dim=1, largest=False).indices
        candidates.append(nearest + start)
        start += size
    candidates = torch.cat(candidates, dim=1)  # [G, k * L]
    candidate_iou = iou.gather(1, candidates)
    threshold = candidate_iou.mean(dim=1) + candidate_iou.std(dim=1).nan_to_num(0.0)  # [G]
    centre = anchor_centres[candidates]  # [G, k * L, 2]
    inside = ((centre - boxes[:, None, :2]).min(dim=-1).values > 0.01) & (
        (boxes[:, None, 2:] - centre).min(dim=-1).values > 0.01
    )
    positive = (candidate_iou >= threshold[:, None]) & inside  # [G, k * L]
    overlap = torch.full_like(iou, -1.0)
    rows = torch.arange(len(boxes), device=boxes.device)[:, None].expand_as(candidates)
    overlap[rows[positive], candidates[positive]] = candidate_iou[positive]
    best_iou, best_box = overlap.max(dim=0)  # [A]
    return torch.where(best_iou >= 0, best_box, matches)


YOLO_RULES = ("best", "ratio")


def match_yolo(boxes: Tensor, anchors: Tensor, strides: Tensor, rule: str = "ratio", max_ratio: float = 4.0) -> Tensor:
    """YOLO's assignment of one image's boxes to anchors: by cell and by shape, not by IoU.

    A box is a candidate for the anchors of the cell holding its centre. ``rule="best"``
    (YOLOv3) keeps the one anchor shape of the 9 (all levels) whose shape IoU with the box
    (:func:`~multibox.anchors.wh_iou`) is highest. ``rule="ratio"`` (YOLOv5) keeps every shape
    whose width and height ratios with the box are within ``max_ratio`` either way, plus the best
    shape, in the centre cell and in the two neighbouring cells nearest the centre (one across,
    one up or down), which :class:`~multibox.coding.YOLOCoder`'s reach of one cell can still
    serve. An anchor that is a candidate for several boxes takes the one of highest shape IoU.

    Args:
        boxes: ``[G, 4]`` xyxy boxes in pixels (``G`` may be 0).
        anchors: ``[A, 4]`` xyxy anchors centred on their cells.
        strides: ``[A]`` cell side of each anchor's level.
        rule: ``"best"`` or ``"ratio"``.
        max_ratio: YOLOv5's ``anchor_t``.

    Returns:
        ``[A]`` index of each anchor's box, or ``NEGATIVE``.
    """
    if rule not in YOLO_RULES:
        raise ValueError(f"rule must be one of {YOLO_RULES}, got {rule!r}")
    check_boxes(boxes, "boxes", allow_empty_extent=False)
    matched = torch.full((len(anchors),), NEGATIVE, dtype=torch.long, device=anchors.device)
    if len(boxes) == 0:
        return matched
    a_ctr, a_wh = (anchors[:, :2] + anchors[:, 2:]) / 2, anchors[:, 2:] - anchors[:, :2]
    b_ctr, b_wh = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    offset = (b_ctr[None] - a_ctr[:, None]) / strides[:, None, None]  # [A, G, 2], in cells
    inside = (offset >= -0.5) & (offset < 0.5)  # the centre cell, per axis
    inter = torch.minimum(a_wh[:, None], b_wh[None]).prod(dim=-1)  # shape IoU [A, G]
    shape_iou = inter / (a_wh.prod(dim=-1)[:, None] + b_wh.prod(dim=-1)[None] - inter)
    best_shape = shape_iou == shape_iou.max(dim=0, keepdim=True).values  # ties: every cell of that shape
    if rule == "best":
        candidate = inside.all(dim=-1) & best_shape
    else:
        near = offset.abs() < 1  # the centre cell and its nearest neighbour, per axis
        cells = (near[..., 0] & inside[..., 1]) | (inside[..., 0] & near[..., 1])
        ratio = b_wh[None] / a_wh[:, None]
        fits = torch.maximum(ratio, 1 / ratio).amax(dim=-1) < max_ratio
        candidate = cells & (fits | best_shape)
    score = torch.where(candidate, shape_iou, -1.0)
    value, index = score.max(dim=1)
    return torch.where(value >= 0, index, matched)


def sample_balanced(matched: Tensor, batch: int, positive_fraction: float) -> tuple[Tensor, Tensor]:
    """Faster R-CNN's sampler: indices of up to ``batch`` entries of one image's ``matched``, at
    most ``int(batch * positive_fraction)`` of them positive (``matched >= 0``), the rest
    :data:`NEGATIVE` (fewer when there are not enough), each drawn uniformly at random without
    replacement (torch's generator); :data:`IGNORE` never. Returns ``(positives, negatives)``."""
    positive = torch.where(matched >= 0)[0]
    negative = torch.where(matched == NEGATIVE)[0]
    num_positive = min(int(batch * positive_fraction), positive.numel())
    num_negative = min(batch - num_positive, negative.numel())
    positive = positive[torch.randperm(positive.numel(), device=matched.device)[:num_positive]]
    negative = negative[torch.randperm(negative.numel(), device=matched.device)[:num_negative]]
    return positive, negative
