"""The one record shape every parser produces, and validation at the boundary.

A :class:`Record` is one image: its path, size and boxes (xyxy, 0-based pixels of the image
on disk) with class indices ``0..C-1``. Parsers attach to every box where it came from (file
and line, XML object or annotation id), so that a problem found later names the place.
:func:`validate` applies a policy to the problems and reports what it changed: nothing is
dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import DataError
from .io import damage

__all__ = [
    "POLICIES",
    "DataError",
    "DetectionSet",
    "Problem",
    "Record",
    "ValidationReport",
    "box_problems",
    "validate",
]

POLICIES = ("error", "clip", "skip")


@dataclass(frozen=True)
class Problem:
    """One problem in a dataset: where (file, line / object / annotation id) and what."""

    where: str
    message: str
    fixable: bool = False  # a box partly outside the image: ``clip`` can repair it

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Record:
    """One image and its boxes.

    Attributes:
        image_path: the image file.
        height, width: image size in pixels.
        boxes: ``[N, 4]`` float32 xyxy boxes, 0-based pixels of the image on disk.
        labels: ``[N]`` int64 class indices ``0..C-1``.
        difficult: ``[N]`` bool, VOC's "difficult" flag (ignored by the VOC metric).
        ignore_boxes: ``[M, 4]`` regions to ignore (COCO ``iscrowd``), not training targets.
        ignore_labels: ``[M]`` class of each ignore region (COCO ignores it for that class only).
        image_id: the dataset's id of the image (COCO id, file stem, ...).
        box_sources: where each box came from, for messages.
    """

    image_path: Path
    height: int
    width: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    difficult: np.ndarray | None = None
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    image_id: int | str | None = None
    box_sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.difficult = (
            np.zeros(len(self.labels), bool) if self.difficult is None else np.asarray(self.difficult, bool)
        )
        self.ignore_boxes = np.asarray(self.ignore_boxes, dtype=np.float32).reshape(-1, 4)
        self.ignore_labels = np.asarray(self.ignore_labels, dtype=np.int64).reshape(-1)
        if len(self.ignore_labels) != len(self.ignore_boxes):
            raise ValueError(f"{self.image_path}: every ignore box needs a label")
        if not (len(self.boxes) == len(self.labels) == len(self.difficult)):
            raise ValueError(
                f"{self.image_path}: {len(self.boxes)} boxes, {len(self.labels)} labels and "
                f"{len(self.difficult)} difficult flags must be as many"
            )
        if not self.box_sources:
            self.box_sources = [f"{self.image_path.name} box {i}" for i in range(len(self.boxes))]

    def select(self, keep: np.ndarray) -> Record:
        """The same image with only the boxes where ``keep`` is True."""
        keep = np.asarray(keep, bool)
        return replace(
            self,
            boxes=self.boxes[keep],
            labels=self.labels[keep],
            difficult=self.difficult[keep],
            box_sources=[s for s, k in zip(self.box_sources, keep, strict=True) if k],
        )


@dataclass
class DetectionSet:
    """What a parser returns: records, class names and the problems it could not turn into boxes.

    Attributes:
        records: one per image, images without boxes included.
        class_names: names of classes ``0..C-1``.
        problems: problems found while parsing (unknown class names, malformed lines, ...).
        category_ids: for COCO sources, the original category id of each class, so that
            writers and result files map back.
    """

    records: list[Record]
    class_names: list[str]
    problems: list[Problem] = field(default_factory=list)
    category_ids: list[int] | None = None

    def one_class(self, name: str) -> DetectionSet:
        """The same images with every box (and ignore region) of one class ``name``: class-agnostic
        detection, such as the toy SSD's one-class scenes."""
        if not name:
            raise ValueError("the one class needs a name")
        records = [
            replace(r, labels=np.zeros_like(r.labels), ignore_labels=np.zeros_like(r.ignore_labels))
            for r in self.records
        ]
        return replace(self, records=records, class_names=[name], category_ids=None)

    def summary(self) -> dict:
        """Counts: images, boxes, per-class boxes, empty images, COCO small/medium/large."""
        boxes = np.concatenate([r.boxes for r in self.records]) if self.records else np.zeros((0, 4))
        labels = np.concatenate([r.labels for r in self.records]) if self.records else np.zeros(0, int)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        counts = Counter(labels.tolist())
        return {
            "images": len(self.records),
            "boxes": len(boxes),
            "empty_images": sum(len(r.boxes) == 0 for r in self.records),
            "classes": {name: counts.get(i, 0) for i, name in enumerate(self.class_names)},
            "small": int((area < 32**2).sum()),
            "medium": int(((area >= 32**2) & (area < 96**2)).sum()),
            "large": int((area >= 96**2).sum()),
        }


@dataclass
class ValidationReport:
    """What :func:`validate` found and changed."""

    problems: list[Problem] = field(default_factory=list)
    clipped: int = 0
    skipped_boxes: int = 0
    skipped_images: int = 0

    def __str__(self) -> str:
        lines = [
            f"{len(self.problems)} problem(s); {self.clipped} box(es) clipped, "
            f"{self.skipped_boxes} box(es) and {self.skipped_images} image(s) skipped"
        ]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def box_problems(record: Record) -> list[tuple[int, Problem]]:
    """Problems of each box of ``record``: NaN, zero or negative size, outside the image."""
    boxes = record.boxes
    finite = np.isfinite(boxes).all(axis=1)
    with np.errstate(invalid="ignore"):
        empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        outside = (boxes[:, :2] < 0).any(axis=1) | (boxes[:, 2] > record.width) | (boxes[:, 3] > record.height)
    found = []
    for i in np.flatnonzero(~finite | empty | outside):
        x1, y1, x2, y2 = boxes[i].tolist()
        shown = f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
        source = record.box_sources[i]
        if not finite[i]:
            found.append((int(i), Problem(source, f"{shown} has a NaN or infinite coordinate")))
        elif empty[i]:
            found.append((int(i), Problem(source, f"{shown} has zero or negative width or height")))
        else:
            inside = x2 > 0 and y2 > 0 and x1 < record.width and y1 < record.height
            where = "partly outside" if inside else "outside"
            message = f"{shown} lies {where} the {record.width}x{record.height} image"
            found.append((int(i), Problem(source, message, fixable=inside)))
    return found


# Boxes past an image edge by less than this (pixels) are rounding, not annotation errors:
# YOLO's six-decimal normalised coordinates alone are off by up to 0.5e-6 of the image side.
EDGE_TOLERANCE = 0.01


def _snap_to_edges(record: Record) -> Record:
    """``record`` with coordinates within :data:`EDGE_TOLERANCE` outside the image moved onto its edge."""
    boxes = record.boxes
    limit = np.array([record.width, record.height] * 2, np.float32)
    with np.errstate(invalid="ignore"):
        near = ((boxes < 0) & (boxes > -EDGE_TOLERANCE)) | ((boxes > limit) & (boxes < limit + EDGE_TOLERANCE))
    if not near.any():
        return record
    return replace(record, boxes=np.where(near, np.clip(boxes, 0, limit), boxes).astype(np.float32))


def validate(
    dataset: DetectionSet, policy: str = "error", *, check_files: bool = True
) -> tuple[DetectionSet, ValidationReport]:
    """Apply ``policy`` to every problem of ``dataset``; return the clean set and a report.

    Policies: ``error`` raises :class:`DataError` listing the problems; ``clip`` clips boxes
    partly outside the image and skips what cannot be repaired; ``skip`` drops every box
    (and every missing image) with a problem. Problems found by the parser (unknown class
    names, malformed lines) have no box to keep: ``clip`` and ``skip`` count them as skipped.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    report = ValidationReport(problems=list(dataset.problems))
    report.skipped_boxes += len(dataset.problems)
    records = []
    for record in dataset.records:
        if check_files:
            problem = "image file not found" if not record.image_path.is_file() else damage(record.image_path)
            if problem:
                report.problems.append(Problem(str(record.image_path), problem))
                report.skipped_images += 1
                continue
        record = _snap_to_edges(record)
        found = box_problems(record)
        report.problems += [p for _, p in found]
        if found and policy != "error":
            keep = np.ones(len(record.boxes), bool)
            boxes = record.boxes.copy()
            for i, problem in found:
                if policy == "clip" and problem.fixable:
                    boxes[i] = np.clip(boxes[i], 0, [record.width, record.height] * 2)
                    report.clipped += 1
                else:
                    keep[i] = False
            record = replace(record, boxes=boxes).select(keep)
            report.skipped_boxes += int((~keep).sum())
        records.append(record)
    if policy == "error" and report.problems:
        shown = "\n".join(f"  {p}" for p in report.problems[:20])
        more = f"\n  ... and {len(report.problems) - 20} more" if len(report.problems) > 20 else ""
        raise DataError(
            f"{len(report.problems)} problem(s) in the dataset:\n{shown}{more}\n"
            "Fix the annotations or files, or repair what can be: data.policy=clip for `multibox train` (--policy clip "
            "for `multibox data convert`) clips boxes partly outside the image and skips the rest; data.policy=skip "
            "drops every box and image with a problem. `multibox data check DATASET` lists them all."
        )
    return replace(dataset, records=records, problems=[]), report
