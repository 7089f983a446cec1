"""Anchors fitted to a dataset's boxes: RetinaNet's sizes and ratios, YOLO's shapes, SSD's scales,
the grid SSDs' zooms and ratios."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..anchors import kmeans_anchors
from ..data.records import DetectionSet
from ..models.retinanet import AnchorConfig
from .coverage import FixedAnchors, _box_sizes, _check, _covered, _input_boxes

__all__ = ["fit_grid_shapes", "fit_ssd_scales", "fit_yolo_anchors", "suggest_anchors"]


def _kmeans_1d(values: Tensor, k: int, iters: int = 100) -> Tensor:
    """``k`` sorted centres of 1-D ``values`` (Lloyd's algorithm from the quantiles; deterministic)."""
    values = values.double().sort().values
    centres = torch.quantile(values, (torch.arange(k, dtype=torch.float64) + 0.5) / k)
    for _ in range(iters):
        assign = (values[:, None] - centres[None]).abs().argmin(dim=1)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, assign, values)
        counts = torch.bincount(assign, minlength=k)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        if torch.allclose(updated, centres):
            break
        centres = updated
    return centres.sort().values


def _sample(groups: dict, limit: int, seed: int) -> dict:
    """At most ``limit`` boxes of ``groups``, drawn at random (seeded) across all input sizes."""
    total = sum(len(b) for b, _ in groups.values())
    if total <= limit:
        return groups
    keep = torch.zeros(total, dtype=torch.bool)
    keep[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:limit]] = True
    sampled, start = {}, 0
    for size, (boxes, index) in groups.items():
        mask = keep[start : start + len(boxes)]
        start += len(boxes)
        if mask.any():
            sampled[size] = (boxes[mask], index[mask])
    return sampled


def suggest_anchors(
    data: DetectionSet,
    anchors: AnchorConfig,
    image_size: Sequence[int],
    resize: str = "squish",
    pos_iou: float = 0.5,
    sample: int = 2000,
    seed: int = 0,
) -> AnchorConfig:
    """Anchor sizes and aspect ratios fitted to the boxes of ``data``; strides and scales kept.

    Ratios (h / w): k-means on the boxes' log aspect ratios, one centre per ratio of
    ``anchors``. Sizes: k-means on the boxes' log sizes ``sqrt(w * h)`` with one centre per
    level for the ``n`` finest levels, each centre the level's middle octave scale; coarser
    levels double the size per level (the paper's spacing). Objects too few or too small for
    the coarse levels' strides would put anchors where their grid cannot place them, so every
    ``n`` from 1 to the number of levels is tried and the fit whose best anchors reach
    ``pos_iou`` for the most boxes (of a seeded sample of ``sample``) is returned.
    """
    groups = _input_boxes(data, image_size, resize)
    _check(pos_iou, pos_iou, groups)
    wh = _box_sizes(groups)
    levels = len(anchors.strides)
    if len(wh) < max(levels, len(anchors.ratios)):
        raise ValueError(f"need at least {max(levels, len(anchors.ratios))} boxes to fit anchors, got {len(wh)}")
    ratios = tuple(round(float(r), 2) for r in _kmeans_1d(torch.log(wh[:, 1] / wh[:, 0]), len(anchors.ratios)).exp())
    middle = math.exp(float(np.mean(np.log(anchors.scales))))  # geometric mean of the octave scales
    log_sizes = 0.5 * torch.log(wh[:, 0] * wh[:, 1])
    subset = _sample(groups, sample, seed)
    best, best_score = None, -1.0
    for active in range(1, levels + 1):
        fitted = [float(s) for s in _kmeans_1d(log_sizes, active).exp() / middle]
        sizes = fitted + [fitted[-1] * 2.0 ** (i + 1) for i in range(levels - active)]
        candidate = AnchorConfig(
            tuple(anchors.strides), tuple(round(s, 1) for s in sizes), tuple(anchors.scales), ratios
        )
        score = _covered(subset, candidate, pos_iou)
        if score > best_score:
            best, best_score = candidate, score
    return best


def fit_yolo_anchors(
    data: DetectionSet, image_size: Sequence[int], resize: str = "squish", k: int = 9, seed: int = 0
) -> tuple[tuple[float, float], ...]:
    """YOLO's anchors for ``data``: :func:`~multibox.anchors.kmeans_anchors` (``1 - IoU`` k-means)
    on the boxes' widths and heights in network-input pixels, small to large, rounded to 0.1."""
    groups = _input_boxes(data, image_size, resize)
    if not groups:
        raise ValueError("the dataset has no boxes to fit anchors to; give model.yolo.anchors")
    wh = _box_sizes(groups)
    if len(wh) < k:
        raise ValueError(f"{len(wh)} boxes are too few to fit {k} anchors; give model.yolo.anchors")
    shapes = kmeans_anchors(wh, k, seed=seed)
    return tuple((round(float(w), 1), round(float(h), 1)) for w, h in shapes)


def fit_ssd_scales(
    data: DetectionSet,
    anchors_for: Callable[[tuple[float, ...]], Tensor],
    levels: int,
    image_size: Sequence[int],
    resize: str = "squish",
    pos_iou: float = 0.5,
    sample: int = 2000,
    seed: int = 0,
) -> tuple[float, ...]:
    """``model.ssd.scales`` fitted to ``data``: SSD's ``levels + 1`` default-box scales (fractions
    of the side).

    As :func:`suggest_anchors` does for RetinaNet's sizes: k-means on the boxes' log sizes
    ``sqrt(w h)`` gives one scale per level for the ``n`` finest levels, coarser levels double
    the scale per level; every ``n`` is tried on the anchors that ``anchors_for(scales)`` builds
    (``[A, 4]`` for ``image_size``) and the fit whose best anchors reach ``pos_iou`` for the most
    boxes of a seeded sample of ``sample`` is returned.
    """
    groups = _input_boxes(data, image_size, resize)
    _check(pos_iou, pos_iou, groups)
    wh = _box_sizes(groups)
    if len(wh) < levels:
        raise ValueError(f"need at least {levels} boxes to fit {levels} scales, got {len(wh)}")
    side = math.sqrt(float(image_size[0]) * float(image_size[1]))
    log_sizes = 0.5 * torch.log(wh[:, 0] * wh[:, 1])
    subset = _sample(groups, sample, seed)
    size = (int(image_size[0]), int(image_size[1]))
    best, best_score = None, -1.0
    for active in range(1, levels + 1):
        fitted = [float(v) / side for v in _kmeans_1d(log_sizes, active).exp()]
        for k in range(1, active):  # k-means on few distinct sizes may tie: keep them increasing
            fitted[k] = max(fitted[k], fitted[k - 1] * 1.05)
        scales = fitted + [fitted[-1] * 2.0 ** (i + 1) for i in range(levels + 1 - active)]
        scales = tuple(round(v, 3) for v in scales)
        fixed = FixedAnchors(anchors_for(scales), size, "")
        score = _covered(subset, fixed, pos_iou)
        if score > best_score:
            best, best_score = scales, score
    return best


def fit_grid_shapes(
    data: DetectionSet,
    anchors_for: Callable[[tuple[float, ...], tuple[float, ...]], Tensor],
    grids: Sequence[int],
    zooms: Sequence[float],
    ratios: Sequence[float],
    image_size: Sequence[int],
    resize: str = "squish",
    pos_iou: float = 0.5,
    sample: int = 2000,
    seed: int = 0,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``model.grid.zooms`` and ``model.grid.ratios`` of the course's grid SSDs fitted to ``data``.

    Ratios (h / w): k-means on the boxes' log aspect ratios, one centre per ratio of ``ratios``.
    Zooms: an anchor of zoom ``z`` is ``z`` cells long (see
    :func:`~multibox.anchors.grid_ratios`), so each box's longer side is measured in cells of
    the grid nearest its size (in log scale) and k-means on those logs gives one zoom per zoom
    of ``zooms``. The given zooms with fitted ratios and the fitted zooms with fitted ratios are
    built by ``anchors_for(zooms, ratios)`` (``[A, 4]`` for ``image_size``), and the pair whose
    best anchors reach ``pos_iou`` for the most boxes of a seeded sample of ``sample`` is returned.
    """
    groups = _input_boxes(data, image_size, resize)
    _check(pos_iou, pos_iou, groups)
    wh = _box_sizes(groups)
    if len(wh) < max(len(zooms), len(ratios)):
        raise ValueError(f"need at least {max(len(zooms), len(ratios))} boxes to fit anchor shapes, got {len(wh)}")
    fitted_ratios = _kmeans_1d(torch.log(wh[:, 1] / wh[:, 0]), len(ratios)).exp()
    side = math.sqrt(float(image_size[0]) * float(image_size[1]))
    cells = torch.log(torch.tensor([side / g for g in grids], dtype=torch.float64))  # [G]
    in_cells = torch.log(wh.max(dim=1).values)[:, None] - cells[None]  # [n, G]
    nearest = in_cells.gather(1, in_cells.abs().argmin(dim=1, keepdim=True)).squeeze(1)
    fitted_zooms = _kmeans_1d(nearest, len(zooms)).exp()
    ratios_out = tuple(round(float(r), 2) for r in fitted_ratios)
    zooms_out = [round(float(z), 2) for z in fitted_zooms]
    for k in range(1, len(zooms_out)):  # k-means on few distinct sizes may tie: keep them increasing
        zooms_out[k] = max(zooms_out[k], round(zooms_out[k - 1] * 1.05, 2))
    subset = _sample(groups, sample, seed)
    size = (int(image_size[0]), int(image_size[1]))
    best, best_score = None, -1.0
    for candidate in ((tuple(zooms), ratios_out), (tuple(zooms_out), ratios_out)):
        fixed = FixedAnchors(anchors_for(*candidate), size, "")
        score = _covered(subset, fixed, pos_iou)
        if score > best_score:
            best, best_score = candidate, score
    return best
