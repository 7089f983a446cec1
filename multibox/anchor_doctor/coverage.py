"""How well anchors cover a dataset's boxes, as the network sees them: :func:`anchor_coverage`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..anchors import pyramid_anchors
from ..boxes import box_iou
from ..data.io import read_image, write_image
from ..data.preprocess import Preprocess
from ..data.records import DetectionSet
from ..models.retinanet import AnchorConfig

__all__ = ["SIZE_BUCKETS", "Coverage", "FixedAnchors", "anchor_coverage", "draw_missed"]

# COCO's object sizes by area, here in network-input pixels (what the anchors see)
SIZE_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, math.inf))

_CHUNK = 256  # boxes per IoU block (256 x 49,104 anchors of a 512 input: 100 MB in float64)
# Boxes are compared with the anchors near them, a block of this many input pixels at a time: on a
# 2048-px image (774,144 anchors) comparing every box with every anchor took minutes.
_BLOCK = 256


def _mean(values: Tensor) -> float | None:
    return float(values.float().mean()) if values.numel() else None


@dataclass(frozen=True)
class FixedAnchors:
    """The anchors of a network built for one input size (the SSD family, YOLOv3).

    Attributes:
        boxes: ``[A, 4]`` xyxy anchors in input pixels (``model.anchors()``).
        image_size: the ``(height, width)`` they are for.
        description: what they are, for the table's first line.
    """

    boxes: Tensor
    image_size: tuple[int, int]
    description: str


@dataclass
class Coverage:
    """Per ground-truth box: its best anchor's IoU, its count of positive anchors, where it is.

    Attributes:
        anchors: the anchor settings measured.
        pos_iou: the matcher's positive threshold (the headline, the positives, the missed boxes).
        neg_iou: the table's second threshold: the matcher's background one (RetinaNet), or any
            other figure for a matcher with one threshold (the SSD family; may exceed ``pos_iou``).
        best_iou: ``[N]`` highest IoU of each box with any anchor.
        best_anchor: ``[N, 4]`` that anchor (xyxy, input pixels).
        positives: ``[N]`` anchors with IoU >= ``pos_iou``.
        boxes: ``[N, 4]`` the boxes in input pixels.
        images: ``[N]`` index of each box's record in the dataset.
    """

    anchors: AnchorConfig | FixedAnchors
    pos_iou: float
    neg_iou: float
    best_iou: Tensor
    best_anchor: Tensor
    positives: Tensor
    boxes: Tensor
    images: Tensor
    rows: list[dict] = field(init=False)

    def __post_init__(self) -> None:
        wh = (self.boxes[:, 2:] - self.boxes[:, :2]).clamp(min=0)
        area = wh[:, 0] * wh[:, 1]
        self.rows = []
        for name, low, high in (*SIZE_BUCKETS, ("all", 0.0, math.inf)):
            inside = (area >= low) & (area < high)
            self.rows.append(
                {
                    "objects": name,
                    "count": int(inside.sum()),
                    f"iou>={self.pos_iou:g}": _mean(self.best_iou[inside] >= self.pos_iou),
                    f"iou>={self.neg_iou:g}": _mean(self.best_iou[inside] >= self.neg_iou),
                    "positives_per_object": _mean(self.positives[inside]),
                    "no_positive": int((self.positives[inside] == 0).sum()),
                }
            )

    @property
    def matched(self) -> float:
        """Fraction of all boxes whose best anchor reaches ``pos_iou`` (the headline figure)."""
        return self.rows[-1][f"iou>={self.pos_iou:g}"] or 0.0

    def missed(self, limit: int | None = None) -> list[int]:
        """Indices of the boxes no anchor reaches ``pos_iou`` on, worst first."""
        order = torch.argsort(self.best_iou, stable=True)
        order = order[self.best_iou[order] < self.pos_iou]
        return order[:limit].tolist()

    def table(self) -> str:
        """The coverage table as aligned text."""
        c = self.anchors
        header = (
            f"anchors: {c.description}"
            if isinstance(c, FixedAnchors)
            else f"anchors: strides {list(c.strides)}, sizes {[round(s, 1) for s in c.sizes]}, "
            f"scales {[round(s, 3) for s in c.scales]}, ratios (h/w) {[round(r, 2) for r in c.ratios]}"
        )
        lines = [
            header,
            f"{'objects':<8} {'count':>7} {'IoU>=' + format(self.pos_iou, 'g'):>9} "
            f"{'IoU>=' + format(self.neg_iou, 'g'):>9} {'positives':>10} {'none':>6}",
        ]
        for row in self.rows:
            if row["count"] == 0:
                lines.append(f"{row['objects']:<8} {0:>7} {'-':>9} {'-':>9} {'-':>10} {0:>6}")
                continue
            lines.append(
                f"{row['objects']:<8} {row['count']:>7} {row[f'iou>={self.pos_iou:g}']:>9.1%} "
                f"{row[f'iou>={self.neg_iou:g}']:>9.1%} {row['positives_per_object']:>10.2f} {row['no_positive']:>6}"
            )
        return "\n".join(lines)

    def to_dict(self, dataset: DetectionSet | None = None, limit: int = 50) -> dict:
        """JSON-ready: the settings, the table rows and up to ``limit`` missed boxes."""
        missed = []
        for i in self.missed(limit):
            entry = {
                "image": int(self.images[i]),
                "box": [round(float(v), 2) for v in self.boxes[i]],
                "best_iou": round(float(self.best_iou[i]), 4),
                "best_anchor": [round(float(v), 2) for v in self.best_anchor[i]],
            }
            if dataset is not None:
                entry["image"] = str(dataset.records[entry["image"]].image_path)
            missed.append(entry)
        c = self.anchors
        if isinstance(c, FixedAnchors):
            settings = {"description": c.description, "count": len(c.boxes)}
        else:
            settings = {key: list(getattr(c, key)) for key in ("strides", "sizes", "scales", "ratios")}
        return {
            "anchors": settings,
            "rows": self.rows,
            "missed": missed,
        }


def _input_boxes(data: DetectionSet, image_size: Sequence[int], resize: str):
    """Per network-input size: the boxes of every record in input pixels and their record indices."""
    preprocess = Preprocess(tuple(image_size), resize)
    groups: dict[tuple[int, int], tuple[list[Tensor], list[Tensor]]] = {}
    for index, record in enumerate(data.records):
        if len(record.boxes) == 0:
            continue
        orig = (record.height, record.width)
        size = preprocess.input_size(orig)
        boxes = preprocess.to_input(torch.from_numpy(record.boxes).double(), orig)
        group = groups.setdefault(size, ([], []))
        group[0].append(boxes)
        group[1].append(torch.full((len(boxes),), index))
    return {size: (torch.cat(b), torch.cat(i)) for size, (b, i) in groups.items()}


def _grid(anchors: AnchorConfig | FixedAnchors, size: tuple[int, int]) -> Tensor:
    if isinstance(anchors, FixedAnchors):
        if tuple(size) != tuple(anchors.image_size):
            raise ValueError(
                f"these anchors are for {anchors.image_size[0]}x{anchors.image_size[1]} inputs, and resizing makes "
                f"{size[0]}x{size[1]} ones: networks built for one input size take input.resize squish or letterbox"
            )
        return anchors.boxes.double()
    return pyramid_anchors(size, anchors.strides, anchors.sizes, anchors.scales, anchors.ratios).double()


def _neighbourhoods(boxes: Tensor, grid: Tensor):
    """``(rows, near)`` pairs covering every box of ``boxes`` once: the boxes whose centre falls in
    one :data:`_BLOCK`-pixel block, and the indices (ascending) of the anchors of ``grid`` that
    overlap any of them. An anchor left out overlaps none of the block's boxes (IoU 0), so the
    best IoU, the best anchor (the first of equals, as over the whole grid) and the positives are
    those of the whole grid wherever a box's best IoU is above 0."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    block = torch.div(centres, _BLOCK, rounding_mode="floor").long()
    keys = block[:, 0] * (1 << 20) + block[:, 1]
    for key in keys.unique():
        rows = (keys == key).nonzero().squeeze(1)
        lo, hi = boxes[rows, :2].amin(dim=0), boxes[rows, 2:].amax(dim=0)
        overlaps = (grid[:, 0] < hi[0]) & (grid[:, 2] > lo[0]) & (grid[:, 1] < hi[1]) & (grid[:, 3] > lo[1])
        near = overlaps.nonzero().squeeze(1)
        yield rows, near if len(near) else torch.arange(len(grid))


def _match_quality(groups: dict, anchors: AnchorConfig | FixedAnchors, pos_iou: float):
    """Best IoU, best anchor and positive count of every box of ``groups`` (see :func:`_input_boxes`)."""
    best_iou, best_anchor, positives = [], [], []
    for size, (boxes, _) in groups.items():
        grid = _grid(anchors, size)
        best = torch.zeros(len(boxes), dtype=boxes.dtype)
        where, count = torch.zeros(len(boxes), dtype=torch.long), torch.zeros(len(boxes), dtype=torch.long)
        for rows, near in _neighbourhoods(boxes, grid):
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                iou = box_iou(boxes[chunk], grid[near])  # [n, nearby anchors]
                best[chunk], index = iou.max(dim=1)
                where[chunk], count[chunk] = near[index], (iou >= pos_iou).sum(dim=1)
        best_iou.append(best.float())
        best_anchor.append(grid[where].float())
        positives.append(count)
    return torch.cat(best_iou), torch.cat(best_anchor), torch.cat(positives)


def _box_sizes(groups: dict) -> Tensor:
    """Widths and heights ``[n, 2]`` of the boxes of ``groups`` (see :func:`_input_boxes`), empty ones left out."""
    boxes = torch.cat([b for b, _ in groups.values()])
    wh = boxes[:, 2:] - boxes[:, :2]
    return wh[(wh > 0).all(dim=1)]


def _covered(groups: dict, anchors: AnchorConfig | FixedAnchors, pos_iou: float) -> float:
    """Share of the boxes of ``groups`` whose best anchor reaches ``pos_iou``: what the fits maximise."""
    return float((_match_quality(groups, anchors, pos_iou)[0] >= pos_iou).float().mean())


def _check(pos_iou: float, neg_iou: float, groups: dict) -> None:
    if not (0 < pos_iou <= 1 and 0 < neg_iou <= 1):
        raise ValueError(f"IoU thresholds must be in (0, 1], got pos_iou {pos_iou} and neg_iou {neg_iou}")
    if not groups:
        raise ValueError("the dataset has no boxes: there is nothing for anchors to cover")


def anchor_coverage(
    data: DetectionSet,
    anchors: AnchorConfig | FixedAnchors,
    image_size: Sequence[int],
    resize: str = "squish",
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
) -> Coverage:
    """How well ``anchors`` cover the boxes of ``data`` at network input ``image_size``.

    Every box is mapped to input pixels as the evaluation pipeline resizes its image
    (``resize``: squish, letterbox or minmax), then compared with every anchor of that
    input size (exact IoU, anchors at their grid positions, not only their shapes).
    ``anchors`` are RetinaNet's settings (anchors for any input size) or the
    :class:`FixedAnchors` of a network built for ``image_size``. ``pos_iou`` and ``neg_iou`` are
    the table's two thresholds (see :class:`Coverage`); positives count at ``pos_iou``.
    """
    groups = _input_boxes(data, image_size, resize)
    _check(pos_iou, neg_iou, groups)
    best_iou, best_anchor, positives = _match_quality(groups, anchors, pos_iou)
    boxes = torch.cat([b for b, _ in groups.values()]).float()
    images = torch.cat([i for _, i in groups.values()])
    return Coverage(anchors, pos_iou, neg_iou, best_iou, best_anchor, positives, boxes, images)


_MISSED, _ANCHOR = (230, 40, 40), (250, 210, 0)


def draw_missed(
    coverage: Coverage, data: DetectionSet, image_size: Sequence[int], resize: str, path, limit: int = 8
) -> int:
    """Write a grid of up to ``limit`` images holding boxes no anchor catches: each such box in
    red with its best IoU, its best anchor in yellow, on the image as the network sees it.
    Returns the number of images drawn (0: nothing missed, no file written)."""
    import cv2

    from ..viz import image_grid

    missed = coverage.missed()
    chosen: list[int] = []
    for i in missed:  # worst first, one tile per image
        image = int(coverage.images[i])
        if image not in chosen:
            chosen.append(image)
        if len(chosen) == limit:
            break
    if not chosen:
        return 0
    preprocess = Preprocess(tuple(image_size), resize)
    tiles = []
    for image_index in chosen:
        picture = np.ascontiguousarray(preprocess.resized(read_image(data.records[image_index].image_path)))
        scale = max(1, round(256 / max(picture.shape[:2])))  # small inputs drawn larger, lines stay thin
        if scale > 1:
            picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        for i in missed:
            if int(coverage.images[i]) != image_index:
                continue
            for box, colour, width in ((coverage.best_anchor[i], _ANCHOR, 1), (coverage.boxes[i], _MISSED, 2)):
                x1, y1, x2, y2 = (round(float(v) * scale) for v in box)
                cv2.rectangle(picture, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, width, cv2.LINE_AA)
            x1, y1 = (round(float(v) * scale) for v in coverage.boxes[i, :2])
            text, origin = f"IoU {float(coverage.best_iou[i]):.2f}", (x1, max(12, y1 - 4))
            cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (20, 20, 20), 3, cv2.LINE_AA)
            cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(picture)
    write_image(Path(path), image_grid(tiles))
    return len(tiles)
