"""YOLOv1's sum-squared loss (Redmon et al. 2016, equation 3), on the network's sigmoids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .boxes import box_iou
from .losses import check_targets
from .models.yolov1 import YOLOv1Coder
from .structures import DenseOutput

__all__ = ["YOLOv1Criterion", "responsible"]


def responsible(boxes: Tensor, cells: Tensor, predicted: Tensor, grid: int, count: int) -> tuple[Tensor, Tensor]:
    """Which predictor answers for each object: ``(object index, anchor index)`` pairs.

    An object belongs to the cell holding its centre; a cell answers for one object, its largest
    (the paper's grid sees one object a cell); of the cell's ``count`` boxes the one whose
    prediction ``predicted [A, 4]`` overlaps the object most is responsible (the first on a tie).
    ``cells [A, 4]`` are the cells' boxes in output order (``count`` rows a cell).
    """
    if not len(boxes):
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty
    side_w, side_h = cells[-1, 2] / grid, cells[-1, 3] / grid
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    col = (cx / side_w).floor().long().clamp(0, grid - 1)
    row = (cy / side_h).floor().long().clamp(0, grid - 1)
    cell = row * grid + col
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = torch.argsort(area, descending=True, stable=True)
    first = torch.ones_like(order, dtype=torch.bool)
    seen: set[int] = set()
    for rank, index in enumerate(order.tolist()):  # the largest object of each cell
        first[rank] = int(cell[index]) not in seen
        seen.add(int(cell[index]))
    objects = order[first]
    candidates = cell[objects, None] * count + torch.arange(count, device=boxes.device)  # [M, count]
    overlap = box_iou(boxes[objects], predicted).gather(1, candidates)  # each object against its cell's boxes
    return objects, candidates.gather(1, overlap.argmax(dim=1, keepdim=True)).squeeze(1)


@dataclass
class YOLOv1Criterion:
    """YOLOv1's loss, summed and divided by the images: for each responsible box (see
    :func:`responsible`) ``box_weight x`` the squared errors of its centre offsets and of its
    square-rooted width and height (``lambda_coord``, 5) and ``obj_weight x (conf - IoU)^2`` (the
    IoU of its prediction with the object, detached); ``noobj_weight x conf^2`` for every other
    box (``lambda_noobj``, 0.5); ``cls_weight x`` the squared error of the class sigmoids against
    the one-hot class in each cell with an object. Returns ``{"box", "obj", "cls", "total"}``.
    """

    coder: YOLOv1Coder
    grid: int
    boxes: int
    box_weight: float = 5.0
    obj_weight: float = 1.0
    noobj_weight: float = 0.5
    cls_weight: float = 1.0

    def __call__(
        self, outputs: DenseOutput | tuple[Tensor, Tensor], anchors: Tensor, targets: Sequence[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        cls_logits, box_deltas = outputs
        check_targets(targets, cls_logits.shape[0])
        confidence = torch.sigmoid(cls_logits[..., 0])
        classes = torch.sigmoid(cls_logits[..., 1:])
        box_sum = obj_sum = cls_sum = cls_logits.new_zeros(())
        noobj = torch.ones_like(confidence, dtype=torch.bool)
        for image, target in enumerate(targets):
            with torch.no_grad():
                predicted = self.coder.decode(anchors, box_deltas[image].float())
                objects, chosen = responsible(target["boxes"], anchors, predicted, self.grid, self.boxes)
                iou = box_iou(target["boxes"][objects], predicted[chosen]).diagonal() if len(objects) else None
            if not len(objects):
                continue
            noobj[image, chosen] = False
            wanted = self.coder.targets(anchors[chosen], target["boxes"][objects])
            box_sum = box_sum + ((torch.sigmoid(box_deltas[image, chosen]) - wanted) ** 2).sum()
            obj_sum = obj_sum + ((confidence[image, chosen] - iou) ** 2).sum()
            one_hot = torch.nn.functional.one_hot(target["labels"][objects], classes.shape[-1]).to(classes.dtype)
            cls_sum = cls_sum + ((classes[image, chosen] - one_hot) ** 2).sum()
        images = max(len(targets), 1)
        box = box_sum / images
        obj = (self.obj_weight * obj_sum + self.noobj_weight * (confidence[noobj] ** 2).sum()) / images
        cls = cls_sum / images
        return {"box": box, "obj": obj, "cls": cls, "total": self.box_weight * box + obj + self.cls_weight * cls}
