"""Empty tensors (no boxes, no anchors selected, no positives) work everywhere."""

import torch

from multibox.anchors import grid_anchors, pyramid_anchors
from multibox.boxes import box_area, box_convert, box_iou, clip_boxes
from multibox.coding import DeltaCoder, TanhCoder
from multibox.criterion import RetinaNetCriterion
from multibox.losses import (
    hard_negative_mining,
    iou_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_dense,
    smooth_l1_loss,
    softmax_focal_loss,
)
from multibox.matching import NEGATIVE, match_boxes, match_ssd

EMPTY = torch.zeros(0, 4)


def test_boxes_functions_accept_empty():
    assert box_convert(EMPTY, "xyxy", "cxcywh").shape == (0, 4)
    assert box_area(EMPTY).shape == (0,)
    assert clip_boxes(EMPTY, (10, 10)).shape == (0, 4)
    assert box_iou(EMPTY, EMPTY).shape == (0, 0)


def test_coders_accept_empty():
    assert DeltaCoder().encode(EMPTY, EMPTY).shape == (0, 4)
    assert DeltaCoder().decode(EMPTY, EMPTY).shape == (0, 4)
    anchors = grid_anchors(grids=(1,), zooms=(1.0,), ratios=((1.0, 1.0),))
    coder = TanhCoder(torch.ones(1))
    index = torch.zeros(0, dtype=torch.long)
    assert coder.decode(anchors, EMPTY, anchor_index=index).shape == (0, 4)


def test_losses_accept_empty():
    assert sigmoid_focal_loss(torch.zeros(0, 3), torch.zeros(0, 3), reduction="sum").item() == 0.0
    dense = sigmoid_focal_loss_dense(torch.zeros(2, 0, 3), torch.zeros(2, 0, dtype=torch.long))
    assert dense.tolist() == [0.0, 0.0]
    assert softmax_focal_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), reduction="mean").item() == 0.0
    assert smooth_l1_loss(EMPTY, EMPTY).item() == 0.0
    assert iou_loss(EMPTY, EMPTY, "ciou", "sum").item() == 0.0
    assert hard_negative_mining(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_batch_without_any_box():
    anchors = pyramid_anchors(64, strides=(16,), sizes=(16,))
    matched = match_boxes([EMPTY, EMPTY], anchors)
    assert matched.shape == (2, len(anchors)) and (matched == NEGATIVE).all()
    assert (match_ssd(torch.zeros(2, 0, len(anchors))) == NEGATIVE).all()
    logits = torch.randn(2, len(anchors), 3, requires_grad=True)
    no_boxes = {"boxes": EMPTY, "labels": torch.zeros(0, dtype=torch.long)}
    losses = RetinaNetCriterion()((logits, torch.zeros(2, len(anchors), 4)), anchors, [no_boxes, no_boxes])
    assert losses["box"].item() == 0.0 and losses["cls"].item() > 0  # background still trains
    losses["total"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
