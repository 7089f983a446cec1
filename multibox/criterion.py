"""RetinaNet's training criterion, batched over images: match, encode, focal loss, box loss.

``criterion(outputs, anchors, targets) -> {"cls", "box", "total"}``: a plain callable apart from
the model, so that a validation loss is one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .boxes import box_area
from .coding import Coder, DeltaCoder, YOLOCoder
from .losses import (
    SMOOTH_L1_BETA,
    check_targets,
    hard_negative_mining,
    iou_loss,
    positive_normalizer,
    sigmoid_focal_loss_dense,
    smooth_l1_loss,
    soft_target_bce,
    softmax_focal_loss,
)
from .matching import (
    NEGATIVE,
    YOLO_RULES,
    batch_iou,
    match_atss,
    match_boxes,
    match_ssd,
    match_yolo,
    pad_batch,
    relative_iou,
)
from .structures import DenseOutput

__all__ = [
    "CLS_LOSSES",
    "RetinaNetCriterion",
    "SSDCriterion",
    "SingleObjectCriterion",
    "YOLOCriterion",
    "largest_objects",
]

_BOX_LOSSES = ("l1", "smooth_l1", "giou", "diou", "ciou")


@dataclass
class RetinaNetCriterion:
    """Focal loss for classes plus a box loss on positive anchors (Lin et al. 2017).

    Anchors with IoU ``>= pos_iou`` to a box are positive, ``< neg_iou`` negative (background),
    in between ignored; with ``allow_low_quality`` each box also takes its best anchors. The
    focal loss is summed over all non-ignored anchors and classes, the box loss over positive
    anchors, and both are divided by the number of positive anchors (at least 1).

    Attributes:
        coder: box coder for the regression targets.
        pos_iou, neg_iou, allow_low_quality: the matching policy (see :func:`multibox.matching.match`).
        alpha, gamma: focal loss parameters.
        box_loss: ``"l1"`` or ``"smooth_l1"`` (on deltas), or ``"giou"``, ``"diou"``, ``"ciou"``
            (on decoded boxes).
        box_weight: weight of the box loss in ``total``.
        smooth_l1_beta: smooth L1 switch point.
        normalize: ``"batch"`` divides the batch sums by the batch's positives (the paper,
            detectron2); ``"image"`` divides each image by its own positives and averages the
            images (torchvision).
        assigner: ``"iou"`` (the thresholds above) or ``"atss"`` (:func:`~multibox.matching.match_atss`,
            with ``level_sizes`` the anchors per level and ``atss_k`` candidates per level).
    """

    coder: DeltaCoder = field(default_factory=DeltaCoder)
    pos_iou: float = 0.5
    neg_iou: float = 0.4
    allow_low_quality: bool = True
    alpha: float = 0.25
    gamma: float = 2.0
    box_loss: str = "l1"
    box_weight: float = 1.0
    smooth_l1_beta: float = SMOOTH_L1_BETA
    normalize: str = "batch"
    assigner: str = "iou"
    level_sizes: Sequence[int] = ()
    atss_k: int = 9

    def __post_init__(self) -> None:
        if self.box_loss not in _BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {_BOX_LOSSES}, got {self.box_loss!r}")
        if self.normalize not in ("batch", "image"):
            raise ValueError(f"normalize must be 'batch' or 'image', got {self.normalize!r}")
        if self.assigner not in ("iou", "atss"):
            raise ValueError(f"loss.assigner must be 'iou' or 'atss', got {self.assigner!r}")
        if self.assigner == "atss" and not self.level_sizes:
            raise ValueError("the atss assigner needs the anchors per pyramid level (level_sizes)")

    def match(self, anchors: Tensor, targets: Sequence[dict[str, Tensor]]) -> Tensor:
        """Per image and anchor: the box index, NEGATIVE or IGNORE ``[B, A]``, by the assigner."""
        boxes = [t["boxes"] for t in targets]
        if self.assigner == "iou":
            return match_boxes(boxes, anchors, self.pos_iou, self.neg_iou, self.allow_low_quality)
        if sum(self.level_sizes) != len(anchors):
            raise ValueError(f"level_sizes {list(self.level_sizes)} do not add up to the {len(anchors)} anchors")
        return torch.stack([match_atss(b, anchors, self.level_sizes, self.atss_k) for b in boxes])

    def __call__(
        self, outputs: DenseOutput | tuple[Tensor, Tensor], anchors: Tensor, targets: Sequence[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            outputs: ``cls_logits [B, A, K]`` and ``box_deltas [B, A, 4]``.
            anchors: ``[A, 4]`` xyxy anchors in input pixels.
            targets: per image, ``{"boxes": [G, 4] xyxy pixels, "labels": [G] in 0..K-1}``;
                ``G`` may be 0.

        Returns:
            ``{"cls": scalar, "box": scalar, "total": cls + box_weight * box}``.
        """
        cls_logits, box_deltas = outputs
        check_targets(targets, cls_logits.shape[0])
        boxes, _ = pad_batch([t["boxes"] for t in targets])
        classes, _ = pad_batch([t["labels"] for t in targets])
        matched = self.match(anchors, targets)  # [B, A]
        positive = matched >= 0
        box_index = matched.clamp(min=0)
        labels = torch.where(positive, classes.gather(1, box_index), matched)  # class, NEGATIVE or IGNORE
        cls_per_image = sigmoid_focal_loss_dense(cls_logits, labels, self.alpha, self.gamma)  # [B]

        image, anchor = positive.nonzero(as_tuple=True)  # [P]
        matched_boxes = boxes[image, box_index[image, anchor]]  # [P, 4]
        deltas = box_deltas[image, anchor]  # [P, 4]
        if self.box_loss in ("giou", "diou", "ciou"):
            predicted = self.coder.decode(anchors, deltas, anchor_index=anchor)
            per_positive = iou_loss(predicted, matched_boxes, self.box_loss)
        else:
            beta = 0.0 if self.box_loss == "l1" else self.smooth_l1_beta
            target = self.coder.encode(anchors, matched_boxes, anchor_index=anchor)
            per_positive = smooth_l1_loss(deltas, target, beta=beta, reduction="none").sum(dim=-1)
        box_per_image = cls_per_image.new_zeros(cls_per_image.shape).index_add(0, image, per_positive)

        num_positive = positive.sum(dim=1)  # [B]
        if self.normalize == "image":
            norm = positive_normalizer(num_positive).to(cls_per_image)
            cls, box = (cls_per_image / norm).mean(), (box_per_image / norm).mean()
        else:
            norm = positive_normalizer(num_positive.sum(), across_processes=True).to(cls_per_image)
            cls, box = cls_per_image.sum() / norm, box_per_image.sum() / norm
        return {"cls": cls, "box": box, "total": cls + self.box_weight * box}


def largest_objects(targets: Sequence[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Per image, its largest box ``[B, 4]``, that box's class ``[B]``, and whether it has one
    ``[B]`` (an image without boxes gets a zero box and class 0, masked out)."""
    boxes, labels, present = [], [], []
    for target in targets:
        if len(target["boxes"]) == 0:
            boxes.append(target["boxes"].new_zeros(4))
            labels.append(target["labels"].new_zeros(()))
            present.append(False)
            continue
        largest = box_area(target["boxes"]).argmax()  # the first of equal areas
        boxes.append(target["boxes"][largest])
        labels.append(target["labels"][largest])
        present.append(True)
    return torch.stack(boxes), torch.stack(labels), torch.tensor(present, device=boxes[0].device)


@dataclass
class SingleObjectCriterion:
    """The single-object steps' losses, from the same detection targets as RetinaNet's.

    ``largest_cls``: cross-entropy on the largest object's class. ``largest_box``: L1 between
    the predicted box and the largest box, in input pixels (mean over coordinates).
    ``single_object``: that L1 plus ``cls_weight`` x the cross-entropy (the course's lambda,
    20 by default: the L1 in pixels is about 20 times the cross-entropy); ``cls`` and ``box``
    are reported apart so that their balance can be checked. Images without boxes are left
    out of these. ``multilabel``: binary cross-entropy over the classes present in the image
    (every image counts; one without boxes has no class present).
    """

    task: str
    cls_weight: float = 20.0

    def __call__(self, outputs, targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        cls_logits, boxes = outputs
        reference = cls_logits if cls_logits is not None else boxes
        check_targets(targets, reference.shape[0])
        zero = reference.new_zeros(())
        if self.task == "multilabel":
            present = torch.zeros_like(cls_logits)
            for i, target in enumerate(targets):
                present[i, target["labels"]] = 1.0
            cls = torch.nn.functional.binary_cross_entropy_with_logits(cls_logits, present)
            return {"cls": cls, "box": zero, "total": cls}
        box_t, label_t, has = largest_objects(targets)
        count = has.sum().clamp(min=1)
        cls = box = zero
        if cls_logits is not None:
            per_image = torch.nn.functional.cross_entropy(cls_logits, label_t, reduction="none")
            cls = (per_image * has).sum() / count
        if boxes is not None:
            box = ((boxes - box_t).abs().mean(dim=1) * has).sum() / count
        weight = self.cls_weight if self.task == "single_object" else 1.0
        return {"cls": cls, "box": box, "total": box + weight * cls}


# Class losses of SSDCriterion; the first two train sigmoid heads (no background column)
CLS_LOSSES = ("bce", "focal", "softmax", "softmax_focal")
_SSD_BOX_LOSSES = ("l1", "smooth_l1", "l1_boxes", "giou", "diou", "ciou")


@dataclass
class SSDCriterion:
    """The SSD family's losses over ``K + 1`` class columns (background in column 0), batched.

    Matching is SSD's (:func:`~multibox.matching.match_ssd`, the course's
    ``map_to_ground_truth``): every box first takes its best anchor, then every anchor whose
    best IoU reaches ``iou_threshold`` takes its best box; the rest are background.

    Class losses (``cls_loss``):

    * ``"bce"``: binary cross-entropy on the foreground columns only, a background anchor
      being all zeros (the course: no background column to learn);
    * ``"focal"``: the same with the sigmoid focal loss (``alpha``, ``gamma``);
    * ``"softmax"``: softmax cross-entropy over all ``K + 1`` columns on the positives and the
      ``neg_pos_ratio`` x as many highest-loss negatives per image (SSD's hard negative mining);
    * ``"softmax_focal"``: the softmax focal loss (``gamma``) over every anchor (the d2l.ai
      toy SSD's exercise).

    With ``soft_targets`` (``"bce"`` only), a positive's target in its class column is its
    anchor's IoU with its box divided by the box's best anchor IoU, instead of 1: the box's own
    best anchor still learns 1, an anchor half as well placed learns 0.5. Where many loosely
    overlapping anchors are positives (a low ``iou_threshold``), the class score then ranks the
    well-placed ones first, so that NMS keeps their boxes.

    Box losses (``box_loss``) on positive anchors: ``"l1"`` or ``"smooth_l1"`` on the coder's
    deltas; ``"l1_boxes"`` on the decoded corners in units of the anchor's width and height
    (the course's L1 on ``actn_to_bb`` boxes, for the bounded :class:`~multibox.coding.TanhCoder`,
    whose deltas of an out-of-reach box are infinite); or ``"giou"``, ``"diou"``, ``"ciou"``.
    Both sums are divided by the number of positive anchors in the batch (at least 1).

    Attributes:
        coder: the network's box coder (``model.coder``).
        iou_threshold: lowest IoU of a threshold match.
        cls_loss, box_loss: as above.
        alpha, gamma: focal loss parameters (``alpha`` for the sigmoid form only).
        neg_pos_ratio: negatives kept per positive by ``"softmax"``.
        box_weight: weight of the box loss in ``total``.
        smooth_l1_beta: smooth L1 switch point.
        soft_targets: positives' class targets relative to their box's best anchor IoU (see above).
    """

    coder: Coder
    iou_threshold: float = 0.5
    cls_loss: str = "softmax"
    box_loss: str = "smooth_l1"
    alpha: float = 0.25
    gamma: float = 2.0
    neg_pos_ratio: float = 3.0
    box_weight: float = 1.0
    smooth_l1_beta: float = 1.0
    soft_targets: bool = False

    def __post_init__(self) -> None:
        if self.cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {CLS_LOSSES}, got {self.cls_loss!r}")
        if self.soft_targets and self.cls_loss != "bce":
            raise ValueError(f"soft_targets needs cls_loss='bce', got {self.cls_loss!r}")
        if self.box_loss not in _SSD_BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {_SSD_BOX_LOSSES}, got {self.box_loss!r}")
        if not 0 < self.iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")

    def match(self, anchors: Tensor, targets: Sequence[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        """Per anchor: matched box index or NEGATIVE ``[B, A]``, its column (0 background, class + 1)
        ``[B, A]``, and the padded boxes ``[B, G, 4]``."""
        matched, columns, boxes, _ = self._match(anchors, targets)
        return matched, columns, boxes

    def _match(self, anchors: Tensor, targets: Sequence[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`match`, and the IoU ``[B, G, A]`` it matched on."""
        boxes, _ = pad_batch([t["boxes"] for t in targets])
        classes, _ = pad_batch([t["labels"] for t in targets])
        iou = batch_iou([t["boxes"] for t in targets], anchors)
        matched = match_ssd(iou, self.iou_threshold)
        positive = matched >= 0
        columns = torch.where(positive, classes.gather(1, matched.clamp(min=0)) + 1, 0)
        return matched, columns, boxes, iou

    def __call__(
        self, outputs: DenseOutput | tuple[Tensor, Tensor], anchors: Tensor, targets: Sequence[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Losses of a batch: ``{"cls", "box", "total"}`` (see the class)."""
        cls_logits, box_deltas = outputs
        check_targets(targets, cls_logits.shape[0])
        matched, columns, boxes, iou = self._match(anchors, targets)
        positive = matched >= 0
        norm = positive_normalizer(positive.sum(), across_processes=True).to(cls_logits)
        if self.soft_targets:
            cls = soft_target_bce(cls_logits[..., 1:], columns - 1, relative_iou(iou, matched))
        else:
            cls = self._cls_loss(cls_logits, columns, positive)
        cls = cls / norm

        image, anchor = positive.nonzero(as_tuple=True)  # [P]
        matched_boxes = boxes[image, matched[image, anchor]]  # [P, 4]
        deltas = box_deltas[image, anchor]
        if self.box_loss in ("l1", "smooth_l1"):
            beta = 0.0 if self.box_loss == "l1" else self.smooth_l1_beta
            target = self.coder.encode(anchors, matched_boxes, anchor_index=anchor)
            box = smooth_l1_loss(deltas, target, beta=beta, reduction="sum")
        else:
            predicted = self.coder.decode(anchors, deltas, anchor_index=anchor)
            if self.box_loss == "l1_boxes":
                size = (anchors[anchor, 2:] - anchors[anchor, :2]).repeat(1, 2)
                box = ((predicted - matched_boxes).abs() / size).sum()
            else:
                box = iou_loss(predicted, matched_boxes, self.box_loss, reduction="sum")
        box = box / norm
        return {"cls": cls, "box": box, "total": cls + self.box_weight * box}

    def _cls_loss(self, cls_logits: Tensor, columns: Tensor, positive: Tensor) -> Tensor:
        if self.cls_loss in ("bce", "focal"):
            labels = torch.where(positive, columns - 1, NEGATIVE)  # foreground class or background
            if self.cls_loss == "bce":
                return sigmoid_focal_loss_dense(cls_logits[..., 1:], labels, alpha=None, gamma=0.0).sum()
            return sigmoid_focal_loss_dense(cls_logits[..., 1:], labels, self.alpha, self.gamma).sum()
        flat_logits, flat_columns = cls_logits.flatten(0, 1), columns.flatten()
        if self.cls_loss == "softmax_focal":
            return softmax_focal_loss(flat_logits, flat_columns, gamma=self.gamma, reduction="sum")
        loss = torch.nn.functional.cross_entropy(flat_logits, flat_columns, reduction="none").view(columns.shape)
        keep = hard_negative_mining(loss, torch.where(positive, columns - 1, NEGATIVE), self.neg_pos_ratio)
        return (loss * keep).sum()


@dataclass
class YOLOCriterion:
    """YOLO's losses: box IoU loss and class BCE on the assigned anchors, objectness BCE on all.

    Anchors are assigned to boxes by :func:`~multibox.matching.match_yolo` (``rule``). On the
    assigned anchors: ``box`` is the mean ``1 - CIoU`` (``box_loss``) of the decoded boxes and
    ``cls`` the mean binary cross-entropy of the class logits against the one-hot class. On
    every anchor: ``obj`` is the binary cross-entropy of the objectness logit (column 0)
    against the IoU of the anchor's decoded box with its box (``objectness="iou"``, YOLOv5;
    detached, at least 0) or 1 (``"one"``, YOLOv3), 0 for the unassigned anchors, averaged per
    level and weighted by ``balance`` (YOLOv5's 4, 1, 0.4: the fine levels have more anchors,
    almost all background). ``total`` is ``box_weight box + obj_weight obj + cls_weight cls``
    (YOLOv5's 0.05, 1, 0.5 for COCO at 640; it scales ``cls`` by ``K / 80`` and ``obj`` by
    ``(S / 640)^2``, as the ``yolov3`` preset does).

    Attributes:
        coder: the network's :class:`~multibox.coding.YOLOCoder` (its strides place the cells).
        level_sizes: anchors per level, in anchor order (``model.level_sizes()``).
        rule, max_ratio: the assignment (see :func:`~multibox.matching.match_yolo`).
        box_loss: ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"``.
        objectness: ``"iou"`` or ``"one"``.
        balance: objectness weight per level (empty: 1 for every level).
        box_weight, obj_weight, cls_weight: weights in ``total``.
    """

    coder: YOLOCoder
    level_sizes: Sequence[int]
    rule: str = "ratio"
    max_ratio: float = 4.0
    box_loss: str = "ciou"
    objectness: str = "iou"
    balance: Sequence[float] = (4.0, 1.0, 0.4)
    box_weight: float = 0.05
    obj_weight: float = 1.0
    cls_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.rule not in YOLO_RULES:
            raise ValueError(f"rule must be one of {YOLO_RULES}, got {self.rule!r}")
        if self.box_loss not in ("iou", "giou", "diou", "ciou"):
            raise ValueError(f"box_loss must be iou, giou, diou or ciou for YOLO, got {self.box_loss!r}")
        if self.objectness not in ("iou", "one"):
            raise ValueError(f"objectness must be 'iou' or 'one', got {self.objectness!r}")
        if self.balance and len(self.balance) != len(self.level_sizes):
            raise ValueError(f"balance needs one weight per level ({len(self.level_sizes)}), got {list(self.balance)}")

    def match(self, anchors: Tensor, targets: Sequence[dict[str, Tensor]]) -> Tensor:
        """``[B, A]`` index of each anchor's box in its image, or ``NEGATIVE``."""
        strides = self.coder.strides.to(anchors)
        return torch.stack([match_yolo(t["boxes"], anchors, strides, self.rule, self.max_ratio) for t in targets])

    def __call__(
        self, outputs: DenseOutput | tuple[Tensor, Tensor], anchors: Tensor, targets: Sequence[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Losses of a batch: ``{"box", "obj", "cls", "total"}`` (see the class)."""
        cls_logits, box_deltas = outputs
        check_targets(targets, cls_logits.shape[0])
        if sum(self.level_sizes) != anchors.shape[0]:
            raise ValueError(f"level_sizes {list(self.level_sizes)} do not add up to the {anchors.shape[0]} anchors")
        matched = self.match(anchors, targets)
        boxes, _ = pad_batch([t["boxes"] for t in targets])
        classes, _ = pad_batch([t["labels"] for t in targets])
        image, anchor = (matched >= 0).nonzero(as_tuple=True)  # [P]
        index = matched[image, anchor]
        target_boxes = boxes[image, index]
        predicted = self.coder.decode(anchors, box_deltas[image, anchor], anchor_index=anchor)
        zero = cls_logits.sum() * 0  # keeps the graph when no anchor is assigned
        box = iou_loss(predicted, target_boxes, self.box_loss, reduction="mean") if len(image) else zero

        logits = cls_logits[image, anchor, 1:]  # [P, K]
        one_hot = torch.zeros_like(logits)
        one_hot[torch.arange(len(image), device=logits.device), classes[image, index]] = 1.0
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        cls = bce(logits, one_hot) if logits.numel() else zero

        objectness = torch.zeros_like(cls_logits[..., 0])
        if self.objectness == "iou":
            with torch.no_grad():
                quality = (1 - iou_loss(predicted.detach(), target_boxes, "iou")).clamp(min=0)
            objectness[image, anchor] = quality.to(objectness.dtype)
        else:
            objectness[image, anchor] = 1.0
        per_anchor = bce(cls_logits[..., 0], objectness, reduction="none")
        weights = self.balance or [1.0] * len(self.level_sizes)
        obj = sum(
            weight * level.mean()
            for weight, level in zip(weights, per_anchor.split(list(self.level_sizes), dim=1), strict=True)
        )
        total = self.box_weight * box + self.obj_weight * obj + self.cls_weight * cls
        return {"cls": cls, "box": box, "obj": obj, "total": total}
