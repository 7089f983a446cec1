"""Faster R-CNN's loss: the region proposal network's and the second stage's, each on samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import box_iou
from .config_model import FasterRCNNConfig
from .losses import SMOOTH_L1_BETA, check_targets, smooth_l1_loss
from .matching import NEGATIVE, match, sample_balanced
from .models.faster_rcnn import ROI_CODER, RPN_CODER, match_rois
from .structures import TwoStageOutput

__all__ = ["FasterRCNNCriterion"]

_DEFAULTS = FasterRCNNConfig()  # the defaults, once: torchvision's


@dataclass
class FasterRCNNCriterion:
    """``criterion(output, anchors, targets) -> {"obj", "rpn_box", "cls", "box", "total"}``.

    The RPN: each image's anchors are matched to its boxes (positive at IoU >= ``rpn_pos_iou``,
    background under ``rpn_neg_iou``, and each box's best anchors positive whatever their IoU),
    ``rpn_batch`` of them sampled with at most ``rpn_positive_fraction`` positives; ``obj`` is the
    binary cross-entropy of the sampled anchors' objectness (mean), ``rpn_box`` the smooth L1
    (beta 1/9) of the positives' deltas summed over the sampled count. The second stage: each
    region the network classified (its ``rois``) is its best box's class at IoU >=
    ``roi_pos_iou``, background otherwise; ``cls`` is the cross-entropy over C + 1 classes (mean),
    ``box`` the smooth L1 of the positives' deltas of their own class over the regions' count.
    As torchvision's ``fastrcnn_loss`` and RPN losses, with ``box_weight`` on both box terms.
    """

    rpn_batch: int = _DEFAULTS.rpn_batch
    rpn_positive_fraction: float = _DEFAULTS.rpn_positive_fraction
    rpn_pos_iou: float = _DEFAULTS.rpn_pos_iou
    rpn_neg_iou: float = _DEFAULTS.rpn_neg_iou
    roi_pos_iou: float = _DEFAULTS.roi_pos_iou
    box_weight: float = 1.0

    def __call__(self, output: TwoStageOutput, anchors: Tensor, targets: Sequence[dict]) -> dict[str, Tensor]:
        check_targets(targets, output.objectness.shape[0])
        obj, rpn_box = self.rpn_losses(output, anchors, targets)
        cls, box = self.roi_losses(output, targets)
        losses = {"obj": obj, "rpn_box": rpn_box, "cls": cls, "box": box}
        losses["total"] = obj + cls + self.box_weight * (rpn_box + box)
        return losses

    def sample_anchors(self, anchors: Tensor, targets: Sequence[dict]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The RPN's training anchors: ``(image, anchor, positive, deltas)``, the image and anchor
        index of each sampled anchor, whether it is positive, and the positives' target deltas."""
        images, chosen, flags, deltas = [], [], [], []
        for image, target in enumerate(targets):
            boxes = target["boxes"]
            if len(boxes):
                matched = match(box_iou(boxes, anchors), self.rpn_pos_iou, self.rpn_neg_iou, allow_low_quality=True)
            else:
                matched = torch.full((len(anchors),), NEGATIVE, dtype=torch.long, device=anchors.device)
            positive, negative = sample_balanced(matched, self.rpn_batch, self.rpn_positive_fraction)
            images.append(torch.full((len(positive) + len(negative),), image, device=anchors.device))
            chosen.append(torch.cat([positive, negative]))
            flags.append(torch.arange(len(chosen[-1]), device=anchors.device) < len(positive))
            deltas.append(RPN_CODER.encode(anchors[positive], boxes[matched[positive]]))
        return torch.cat(images), torch.cat(chosen), torch.cat(flags), torch.cat(deltas)

    def rpn_losses(self, output: TwoStageOutput, anchors: Tensor, targets: Sequence[dict]) -> tuple[Tensor, Tensor]:
        """The RPN's objectness and box losses on its sampled anchors."""
        image, anchor, positive, deltas = self.sample_anchors(anchors, targets)
        logits = output.objectness[image, anchor]
        obj = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype)) if len(logits) else logits.sum()
        predicted = output.rpn_deltas[image[positive], anchor[positive]]
        box = smooth_l1_loss(predicted, deltas, SMOOTH_L1_BETA, reduction="sum") / max(len(anchor), 1)
        return obj, box

    def roi_losses(self, output: TwoStageOutput, targets: Sequence[dict]) -> tuple[Tensor, Tensor]:
        """The second stage's class and box losses on the regions it classified."""
        rois = output.rois
        labels = torch.zeros(len(rois), dtype=torch.long, device=rois.device)
        matched_boxes = torch.zeros((len(rois), 4), dtype=rois.dtype, device=rois.device)
        for image, target in enumerate(targets):
            mine = torch.where(rois[:, 0] == image)[0]
            matched = match_rois(rois[mine, 1:], target["boxes"], self.roi_pos_iou)
            hit = matched >= 0
            labels[mine[hit]] = target["labels"][matched[hit]] + 1
            matched_boxes[mine[hit]] = target["boxes"][matched[hit]].to(rois.dtype)
        count = max(len(rois), 1)
        cls = F.cross_entropy(output.cls_logits, labels, reduction="sum") / count
        positive = torch.where(labels > 0)[0]
        predicted = output.box_deltas[positive, labels[positive]]
        wanted = ROI_CODER.encode(rois[positive, 1:], matched_boxes[positive])
        return cls, smooth_l1_loss(predicted, wanted, SMOOTH_L1_BETA, reduction="sum") / count
