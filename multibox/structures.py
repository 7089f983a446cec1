"""The result types that cross module boundaries: a dense head's output, a two-stage detector's, detections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["DenseOutput", "Detections", "TwoStageOutput", "match_detections"]


class DenseOutput(NamedTuple):
    """What every dense detector returns, in training and in evaluation alike.

    Attributes:
        cls_logits: ``[B, A, K]`` raw class scores per anchor (``K + 1`` columns for a softmax
            head, background in column 0).
        box_deltas: ``[B, A, 4]`` box regression outputs per anchor, in the coder's units.
    """

    cls_logits: Tensor
    box_deltas: Tensor


class TwoStageOutput(NamedTuple):
    """What a two-stage detector (Faster R-CNN) returns, in training and in evaluation alike: its
    region proposal network's dense outputs over the anchors, and its second stage's outputs on
    the regions it classified.

    Attributes:
        objectness: ``[B, A]`` the RPN's object logits over the anchors (``model.anchors(size)``).
        rpn_deltas: ``[B, A, 4]`` the RPN's box deltas (``DeltaCoder()`` units).
        rois: ``[R, 5]`` the regions of interest, ``(image index, x1, y1, x2, y2)`` in input
            pixels, without gradient: each image's proposals; in training (the model given the
            targets) the proposals and ground-truth boxes sampled for the second stage.
        cls_logits: ``[R, K + 1]`` class logits of each region, background in column 0.
        box_deltas: ``[R, K + 1, 4]`` a box refinement of each region per class (column 0
            unused), in the second stage's coder's units.
    """

    objectness: Tensor
    rpn_deltas: Tensor
    rois: Tensor
    cls_logits: Tensor
    box_deltas: Tensor


@dataclass
class Detections:
    """Detections for one image.

    Attributes:
        boxes: ``[N, 4]`` xyxy boxes in pixels of the image they were predicted for.
        scores: ``[N]`` confidences in ``[0, 1]``, highest first.
        labels: ``[N]`` class indices ``0..C-1``.
        names: class names indexed by label, when known (a loaded model fills them in).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    names: list[str] | None = field(default=None)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls, device: torch.device | str | None = None) -> Detections:
        """No detections: ``boxes [0, 4]``, ``scores [0]``, ``labels [0]``."""
        return cls(
            boxes=torch.zeros((0, 4), device=device),
            scores=torch.zeros((0,), device=device),
            labels=torch.zeros((0,), dtype=torch.long, device=device),
        )

    def to(self, device: torch.device | str) -> Detections:
        """The same detections on ``device``."""
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device), self.names)


def match_detections(found: Detections, expected: Detections, *, score_atol: float, box_atol: float) -> Tensor:
    """For each found detection, the index of the expected one it stands for, or -1.

    Two runs of one detector on different kernels (another instruction set, onnxruntime, a tensor
    of another shape) round scores and boxes differently in the last bits, and detections whose
    scores tie to that rounding may come in either order; so they are compared one to one, not row
    by row. A pair matches when the labels are equal, the scores differ by at most ``score_atol``
    and every box coordinate by at most ``box_atol`` pixels; each expected detection is used once,
    the closest in score first.

    Returns:
        ``[N]`` long tensor (``N = len(found)``): an index into ``expected``, or -1 where none matches.
    """
    score_gap = (found.scores[:, None].double() - expected.scores[None].double()).abs()  # [N, M]
    box_gap = (found.boxes[:, None].double() - expected.boxes[None].double()).abs().amax(dim=-1)  # [N, M]
    close = (found.labels[:, None] == expected.labels[None]) & (score_gap <= score_atol) & (box_gap <= box_atol)
    cost = torch.where(close, score_gap, torch.inf)
    index = torch.full((len(found),), -1, dtype=torch.long)
    for i in range(len(found) if len(expected) else 0):
        j = int(cost[i].argmin())
        if torch.isfinite(cost[i, j]):
            index[i] = j
            cost[:, j] = torch.inf  # each expected detection stands for one found detection only
    return index
