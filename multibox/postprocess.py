"""From dense head outputs to detections: score, select, decode, clip, NMS; batched over images.

:func:`postprocess` gives the detections of torchvision's ``RetinaNet.postprocess_detections``
(score threshold, top-k candidates per pyramid level, class-aware NMS, ``max_det``), computed
for the whole batch at once:

* candidates are chosen on the raw logits of each level for all images together (the
  sigmoid is monotonic): the entries above the threshold are compacted, then ranked, so the
  sigmoid runs on the few thousand candidates only;
* only candidates are decoded and clipped;
* greedy NMS runs as matrix iterations over the top candidates of every image at once and
  stops as soon as ``max_det`` boxes per image are settled: greedy NMS decides a box from the
  boxes scored above it alone, so the first ``max_det`` survivors among the top ``m``
  candidates are final. Images that need more candidates fall back to exact per-class NMS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import nms as _nms

from .coding import Coder
from .structures import Detections

__all__ = ["ACTIVATIONS", "SoftNMS", "class_scores", "nms_iou_matrix", "postprocess", "soft_nms"]


ACTIVATIONS = ("sigmoid", "softmax", "objectness")


def class_scores(cls_logits: Tensor, activation: str) -> Tensor:
    """Class probabilities ``[..., K]`` from a dense head's logits.

    ``sigmoid``: independent classes, ``[..., K]`` logits; ``softmax``: ``[..., K + 1]`` with the
    background in column 0, dropped after the softmax; ``objectness`` (YOLO): ``[..., K + 1]``
    with the objectness logit in column 0, a class scoring ``sigmoid(obj) * sigmoid(class)``.
    """
    if activation == "sigmoid":
        return torch.sigmoid(cls_logits)
    if activation == "softmax":
        return cls_logits.softmax(dim=-1)[..., 1:]
    if activation == "objectness":
        return torch.sigmoid(cls_logits[..., :1]) * torch.sigmoid(cls_logits[..., 1:])
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


@dataclass(frozen=True)
class SoftNMS:
    """Soft-NMS (Bodla et al. 2017): decay the scores of overlapping boxes instead of removing them.

    Attributes:
        method: ``"gaussian"`` (``s *= exp(-iou^2 / sigma)``) or ``"linear"`` (``s *= 1 - iou``
            where ``iou > nms_iou``).
        sigma: Gaussian width.
        min_score: boxes whose decayed score falls to this or below are dropped.
    """

    method: str = "gaussian"
    sigma: float = 0.5
    min_score: float = 0.001

    def __post_init__(self) -> None:
        if self.method not in ("gaussian", "linear"):
            raise ValueError(f"SoftNMS method must be 'gaussian' or 'linear', got {self.method!r}")
        if self.sigma <= 0:
            raise ValueError(f"SoftNMS sigma must be positive, got {self.sigma}")


# Greedy NMS first looks at this many top candidates per image (at least 2 x max_det), and at
# 4x more in each later round, up to _DENSE_LIMIT ([B, m, m] IoU matrices); beyond, per-class NMS.
_FIRST_ROUND = 128
_DENSE_LIMIT = 2048


def postprocess(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    image_sizes: Sequence[Sequence[int]] | Tensor,
    *,
    coder: Coder,
    level_sizes: Sequence[int] | None = None,
    activation: str = "sigmoid",
    score_thresh: float = 0.05,
    topk: int = 1000,
    nms_iou: float = 0.5,
    max_det: int = 100,
    soft_nms: SoftNMS | None = None,
) -> list[Detections]:
    """Detections for a batch of images from a dense head's outputs.

    Args:
        cls_logits: ``[B, A, K]`` raw class scores; for ``activation="softmax"``, ``[B, A, K + 1]``
            with the background in column 0; for ``"objectness"``, ``[B, A, K + 1]`` with the
            objectness logit in column 0.
        box_deltas: ``[B, A, 4]`` regression outputs.
        anchors: ``[A, 4]`` xyxy anchors in input pixels.
        image_sizes: ``(height, width)`` of each image in input pixels, for clipping.
        coder: decodes deltas into boxes (``DeltaCoder``, ``TanhCoder``, ``YOLOCoder``).
        level_sizes: anchors per pyramid level, in anchor order; top-k is taken per level.
            ``None`` treats all anchors as one level.
        activation: ``"sigmoid"`` (independent classes), ``"softmax"``, or ``"objectness"``
            (YOLO: a class scores ``sigmoid(objectness) * sigmoid(class)``).
        score_thresh: candidates must score above this.
        topk: candidates kept per level and image before NMS.
        nms_iou: class-aware NMS discards a box whose IoU with a better box of its class is
            above this (``1.0`` disables NMS).
        max_det: detections kept per image.
        soft_nms: a :class:`SoftNMS` to use instead of hard NMS.

    Returns:
        One :class:`Detections` per image: boxes ``[N, 4]`` xyxy pixels clipped to the image,
        scores ``[N]`` highest first, labels ``[N]`` in ``0..K-1``; ``N <= max_det``.
    """
    _check_inputs(cls_logits, box_deltas, anchors, image_sizes, level_sizes, activation)
    num_images = cls_logits.shape[0]
    if num_images == 0:
        return []
    sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=cls_logits.device).reshape(num_images, 2)

    scores, labels, anchor_index = _candidates(cls_logits, level_sizes, activation, score_thresh, topk)
    if not bool(torch.isfinite(scores).any()):
        return [Detections.empty(cls_logits.device) for _ in range(num_images)]
    deltas = box_deltas.gather(1, anchor_index[..., None].expand(-1, -1, 4))
    boxes = coder.decode(anchors, deltas, anchor_index=anchor_index)  # [B, C, 4]
    boxes = _clip(boxes, sizes)

    if soft_nms is not None:
        return _soft_nms_batched(boxes, scores, labels, soft_nms, nms_iou, max_det)
    keep = _greedy_nms_topn(boxes, scores, labels, nms_iou, max_det)
    return [Detections(boxes[i, k], scores[i, k], labels[i, k]) for i, k in enumerate(keep)]


def _check_inputs(cls_logits, box_deltas, anchors, image_sizes, level_sizes, activation) -> None:
    if cls_logits.ndim != 3:
        raise ValueError(f"cls_logits must have shape [B, A, K], got shape {list(cls_logits.shape)}")
    batch, num_anchors = cls_logits.shape[:2]
    if box_deltas.shape != (batch, num_anchors, 4):
        raise ValueError(f"box_deltas must have shape [{batch}, {num_anchors}, 4], got {list(box_deltas.shape)}")
    if anchors.shape != (num_anchors, 4):
        raise ValueError(f"anchors must have shape [{num_anchors}, 4], got {list(anchors.shape)}")
    if len(image_sizes) != batch:
        raise ValueError(f"image_sizes needs one (height, width) per image: {batch}, got {len(image_sizes)}")
    if level_sizes is not None and sum(level_sizes) != num_anchors:
        raise ValueError(f"level_sizes {list(level_sizes)} must add up to the {num_anchors} anchors")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be 'sigmoid', 'softmax' or 'objectness', got {activation!r}")
    if activation != "sigmoid" and cls_logits.shape[-1] < 2:
        raise ValueError(f"a {activation} head needs its column 0 (background or objectness) and at least one class")


def _candidates(
    cls_logits: Tensor, level_sizes: Sequence[int] | None, activation: str, score_thresh: float, topk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k candidates above ``score_thresh`` per level and image, as padded ``[B, C]`` tensors.

    Returns ``scores`` (``-inf`` where a slot holds no candidate), ``labels`` and
    ``anchor_index``; candidates of one image are in no particular order.
    """
    if activation == "sigmoid":
        # The sigmoid is monotonic: select on raw logits (with a hair of margin below the
        # threshold's logit), activate the candidates only, then apply the exact threshold.
        ranking = cls_logits
        bound = math.log(score_thresh / (1 - score_thresh)) - 1e-4 if 0 < score_thresh < 1 else None
    else:
        ranking = class_scores(cls_logits, activation)
        bound = score_thresh if score_thresh > 0 else None
    batch, num_anchors, num_classes = ranking.shape
    values, flat_index = [], []
    start = 0
    for size in level_sizes if level_sizes is not None else [num_anchors]:
        level = ranking[:, start : start + size].reshape(batch, size * num_classes)
        v, i = _level_topk(level, topk, bound)
        values.append(v)
        flat_index.append(i + start * num_classes)
        start += size
    values, flat_index = torch.cat(values, dim=1), torch.cat(flat_index, dim=1)
    scores = values.sigmoid() if activation == "sigmoid" else values
    scores = scores.masked_fill(~(scores > score_thresh), float("-inf"))
    return scores, flat_index % num_classes, flat_index // num_classes


def _level_topk(level: Tensor, k: int, bound: float | None) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries above ``bound`` of each row of ``level [B, N]``, padded with ``-inf``.

    Entries above ``bound`` are usually a small share of a level: compacting them first and
    ranking only those costs about half of a ``topk`` over the whole row.
    """
    if bound is None:
        return level.topk(min(k, level.shape[1]), dim=1, sorted=False)
    image, index = (level > bound).nonzero(as_tuple=True)  # sorted by image
    counts = torch.bincount(image, minlength=level.shape[0])
    width = int(counts.max()) if len(image) else 0
    slot = torch.arange(len(image), device=level.device) - (counts.cumsum(0) - counts)[image]
    padded_index = torch.zeros((level.shape[0], width), dtype=torch.long, device=level.device)
    padded_index[image, slot] = index
    empty = torch.arange(width, device=level.device)[None, :] >= counts[:, None]
    values = level.gather(1, padded_index).masked_fill_(empty, float("-inf"))
    if width <= k:
        return values, padded_index
    values, picked = values.topk(k, dim=1, sorted=False)
    return values, padded_index.gather(1, picked)


def _clip(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Clip ``[B, C, 4]`` boxes to per-image ``(height, width)`` sizes ``[B, 2]``."""
    height, width = sizes[:, 0, None], sizes[:, 1, None]
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(
        (
            x1.clamp(min=0).minimum(width),
            y1.clamp(min=0).minimum(height),
            x2.clamp(min=0).minimum(width),
            y2.clamp(min=0).minimum(height),
        ),
        dim=-1,
    )


def _float_threshold(threshold: float, dtype: torch.dtype) -> float:
    """The ``dtype`` value ``t`` with ``x > t  <=>  x > threshold`` for every ``dtype`` value ``x``.

    torchvision's NMS kernel compares ``float`` IoUs with a ``double`` threshold.
    """
    t = torch.tensor(threshold, dtype=dtype)
    if float(t) > threshold:
        t = torch.nextafter(t, torch.tensor(float("-inf"), dtype=dtype))
    return float(t)


def nms_iou_matrix(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU ``[..., N, 4] x [..., M, 4] -> [..., N, M]``, computed as torchvision's NMS kernel does.

    The same operations (not just the same formula) as the kernel, so that threshold
    decisions agree bit for bit; 0/0 (two degenerate boxes) gives NaN, which never suppresses.
    """
    ax1, ay1, ax2, ay2 = (t[..., :, None] for t in boxes1.unbind(-1))
    bx1, by1, bx2, by2 = (t[..., None, :] for t in boxes2.unbind(-1))
    w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
    h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
    inter = w.mul_(h)
    return inter / (((ax2 - ax1) * (ay2 - ay1)) + ((bx2 - bx1) * (by2 - by1)) - inter)


def _greedy_nms_topn(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, max_det: int) -> list[Tensor]:
    """Class-aware greedy NMS per image; returns kept candidate indices per image, best first.

    ``scores`` is ``[B, C]`` with ``-inf`` for empty slots. Equal to torchvision's
    ``batched_nms`` followed by ``[:max_det]``. Works in rounds on the top ``m`` candidates of
    each image still unsettled, ``m`` growing 4x a round; past ``_DENSE_LIMIT`` the rest go to
    exact per-class NMS over all their candidates.
    """
    num_images, num_cand = scores.shape
    order = scores.argsort(dim=1, descending=True, stable=True)  # [B, C]
    num_valid = torch.isfinite(scores).sum(dim=1).tolist()
    results: list[Tensor | None] = [None] * num_images
    pending = list(range(num_images))
    m = min(num_cand, max(_FIRST_ROUND, 2 * max_det))
    while pending:
        if m > _DENSE_LIMIT:
            for i in pending:
                cand = order[i, : num_valid[i]]
                results[i] = _exact_class_nms(boxes[i], scores[i], labels[i], iou_threshold, cand)[:max_det]
            break
        rows = torch.tensor(pending, device=scores.device)
        idx = order[rows, :m]
        keep = _dense_greedy_nms(
            boxes[rows].gather(1, idx[..., None].expand(-1, -1, 4)),
            labels[rows].gather(1, idx),
            torch.tensor([num_valid[i] for i in pending], device=scores.device),
            iou_threshold,
        )
        still = []
        for row, i in enumerate(pending):
            kept = idx[row][keep[row]]
            if len(kept) >= max_det or m >= num_valid[i]:
                results[i] = kept[:max_det]
            else:
                still.append(i)
        pending, m = still, min(num_cand, 4 * m)
    return results


def _dense_greedy_nms(boxes: Tensor, labels: Tensor, num_valid: Tensor, iou_threshold: float) -> Tensor:
    """Greedy class-aware NMS of ``[B, m]`` candidates sorted best first; ``[B, m]`` keep mask.

    Slots at or past ``num_valid[b]`` are empty.
    """
    m = boxes.shape[1]
    valid = torch.arange(m, device=boxes.device)[None, :] < num_valid[:, None]  # [B, m]
    overlap = nms_iou_matrix(boxes, boxes) > _float_threshold(iou_threshold, boxes.dtype)  # [B, m, m]
    overlap &= labels[:, :, None] == labels[:, None, :]
    overlap &= torch.ones(m, m, dtype=torch.bool, device=boxes.device).triu_(diagonal=1)
    overlap &= valid[:, :, None]
    suppressor = overlap.to(boxes.dtype)
    # keep[j] = valid[j] and no kept i < j overlaps j. Iterating from "all kept" reaches the
    # unique solution, greedy NMS's result, in at most as many steps as the longest chain.
    keep = valid
    while True:
        suppressed = torch.bmm(keep.to(boxes.dtype)[:, None, :], suppressor)[:, 0] > 0
        new_keep = valid & ~suppressed
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep


def _exact_class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, candidates: Tensor) -> Tensor:
    """Per-class ``torchvision.ops.nms`` over ``candidates`` (indices, best first); kept indices, best first."""
    kept = []
    cand_labels = labels[candidates]
    for label in cand_labels.unique():
        members = candidates[cand_labels == label]
        kept.append(members[_nms(boxes[members], scores[members], iou_threshold)])
    kept = torch.cat(kept)
    return kept[scores[kept].argsort(descending=True, stable=True)]


def _soft_nms_batched(
    boxes: Tensor, scores: Tensor, labels: Tensor, config: SoftNMS, nms_iou: float, max_det: int
) -> list[Detections]:
    """Class-aware soft-NMS of padded candidates ``[B, C]`` (``-inf`` = empty), all images at once."""
    num_images = scores.shape[0]
    valid = torch.isfinite(scores)
    image = torch.arange(num_images, device=scores.device)[:, None].expand_as(scores)[valid]
    flat_boxes, flat_scores, flat_labels = boxes[valid], scores[valid], labels[valid]
    index, decayed = soft_nms(flat_boxes, flat_scores, image * (int(labels.max()) + 1) + flat_labels, config, nms_iou)
    kept_image = image[index]
    results = []
    for i in range(num_images):
        mine = (kept_image == i).nonzero()[:, 0]
        mine = mine[decayed[mine].argsort(descending=True, stable=True)][:max_det]
        results.append(Detections(flat_boxes[index[mine]], decayed[mine], flat_labels[index[mine]]))
    return results


def soft_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, config: SoftNMS = SoftNMS(), nms_iou: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Soft-NMS of boxes ``[N, 4]`` with ``scores [N]``, separately within each of ``groups [N]``.

    All groups advance together: each step takes every group's highest remaining box, keeps
    it, and decays the scores of the rest of its group by their IoU with it; boxes that decay
    to ``config.min_score`` or below are dropped.

    Returns:
        ``(index [M], scores [M])``: the kept boxes' indices into the inputs and their decayed
        scores, in keeping order within each group.
    """
    empty = (scores.new_zeros((0,), dtype=torch.long), scores[:0])
    if boxes.shape[0] == 0:
        return empty
    order = groups.argsort(stable=True)
    unique, counts = torch.unique_consecutive(groups[order], return_counts=True)
    num_groups, width = len(unique), int(counts.max())
    row = torch.arange(num_groups, device=groups.device).repeat_interleave(counts)
    slot = torch.arange(len(order), device=groups.device) - (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
    padded = boxes.new_zeros((num_groups, width, 4))
    padded[row, slot] = boxes[order]
    live = scores.new_full((num_groups, width), float("-inf"))
    live[row, slot] = scores[order]
    source = torch.full((num_groups, width), -1, dtype=torch.long, device=groups.device)
    source[row, slot] = order

    kept_index, kept_score = [], []
    rows = torch.arange(num_groups, device=groups.device)
    for _ in range(width):
        best_score, best = live.max(dim=1)  # [G]
        active = best_score > config.min_score
        if not bool(active.any()):
            break
        kept_index.append(source[rows[active], best[active]])
        kept_score.append(best_score[active])
        live[rows, best] = float("-inf")
        iou = nms_iou_matrix(padded[rows, best][:, None, :], padded)[:, 0].nan_to_num_(0.0)  # [G, W]
        if config.method == "gaussian":
            decay = torch.exp(-(iou * iou) / config.sigma)
        else:
            decay = torch.where(iou > nms_iou, 1 - iou, torch.ones_like(iou))
        # -inf marks removed boxes; -inf * 0 would be NaN, so they are left alone
        live = torch.where(active[:, None] & torch.isfinite(live), live * decay, live)
        live.masked_fill_(live <= config.min_score, float("-inf"))
    if not kept_index:
        return empty
    return torch.cat(kept_index), torch.cat(kept_score)
