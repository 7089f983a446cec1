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

from .boxes import _iou_family, check_boxes

__all__ = ["IGNORE", "NEGATIVE", "batch_iou", "match", "match_boxes", "match_ssd", "pad_batch"]

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
    counts = [int(t.shape[0]) for t in tensors]
    width = max(1, *counts)
    ref = tensors[0]
    padded = ref.new_full((len(tensors), width, *ref.shape[1:]), fill)
    for i, t in enumerate(tensors):
        padded[i, : counts[i]] = t
    valid = torch.arange(width, device=ref.device)[None, :] < torch.tensor(counts, device=ref.device)[:, None]
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
    iou = _iou_family(padded[:, :, None, :], anchors[None, None, :, :], "iou")  # [B, G, A]
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


# Rows of the IoU matrix that match_boxes holds at once: small enough to stay in cache.
_ROWS_PER_BLOCK = 8


def match_boxes(
    boxes: Sequence[Tensor],
    anchors: Tensor,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    allow_low_quality: bool = True,
) -> Tensor:
    """:func:`match` of each image's boxes to the anchors, without the ``[B, G, A]`` IoU tensor.

    Same result as ``match(batch_iou(boxes, anchors), pos_iou, neg_iou, allow_low_quality)``;
    the IoU matrix is computed a few rows at a time into reused buffers and reduced at once,
    which on a CPU is several times faster than materialising it.

    Args:
        boxes: per image, ``[G_i, 4]`` xyxy boxes in pixels (``G_i`` may be 0).
        anchors: ``[A, 4]`` xyxy anchors in the same pixels.

    Returns:
        ``LongTensor [B, A]`` of box indices, NEGATIVE or IGNORE.
    """
    _check_batch(boxes, anchors)
    _check_thresholds(pos_iou, neg_iou)
    num_anchors = anchors.shape[0]
    ax1, ay1, ax2, ay2 = anchors.unbind(-1)
    # A positive anchor area keeps every union positive; it changes no IoU (degenerate anchors stay at 0).
    anchor_area = ((ax2 - ax1) * (ay2 - ay1)).clamp(min=torch.finfo(anchors.dtype).tiny)
    rows = _ROWS_PER_BLOCK
    w_buf, h_buf, tmp = (anchors.new_empty((rows, num_anchors)) for _ in range(3))
    hit = torch.empty((rows, num_anchors), dtype=torch.bool, device=anchors.device)
    results = []
    for gt in boxes:
        best_iou = anchors.new_full((num_anchors,), -1.0)
        best_box = torch.zeros(num_anchors, dtype=torch.long, device=anchors.device)
        forced = torch.zeros(num_anchors, dtype=torch.bool, device=anchors.device)
        gx1, gy1, gx2, gy2 = (t[:, None] for t in gt.unbind(-1))
        gt_area = (gx2 - gx1) * (gy2 - gy1)
        for start in range(0, gt.shape[0], rows):
            stop = min(start + rows, gt.shape[0])
            n, block = stop - start, slice(start, stop)
            w = torch.minimum(gx2[block], ax2, out=w_buf[:n]).sub_(torch.maximum(gx1[block], ax1, out=tmp[:n]))
            h = torch.minimum(gy2[block], ay2, out=h_buf[:n]).sub_(torch.maximum(gy1[block], ay1, out=tmp[:n]))
            inter = w.clamp_(min=0).mul_(h.clamp_(min=0))
            iou = inter.div_(torch.add(gt_area[block], anchor_area, out=tmp[:n]).sub_(inter))  # [n, A]
            block_best, block_box = iou.max(dim=0)
            better = block_best > best_iou  # strict: on ties the earlier box keeps the anchor
            best_iou = torch.where(better, block_best, best_iou)
            best_box = torch.where(better, block_box + start, best_box)
            if allow_low_quality:
                highest = iou.max(dim=1, keepdim=True).values
                highest = torch.where(highest > 0, highest, float("nan"))  # nothing equals NaN
                forced |= torch.eq(iou, highest, out=hit[:n]).any(dim=0)
        results.append(_assign(best_iou, best_box, forced if allow_low_quality else None, pos_iou, neg_iou))
    return torch.stack(results)


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
