import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tvops
from conftest import random_boxes

from multibox.boxes import box_iou
from multibox.losses import (
    hard_negative_mining,
    iou_loss,
    l1_loss,
    positive_normalizer,
    sigmoid_focal_loss,
    sigmoid_focal_loss_dense,
    smooth_l1_loss,
    softmax_focal_loss,
)
from multibox.matching import IGNORE, NEGATIVE


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.5)])
def test_sigmoid_focal_loss_equals_torchvision(reduction, alpha, gamma):
    logits = torch.randn(40, 7) * 4
    targets = (torch.rand(40, 7) > 0.8).float()
    ours = sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
    theirs = tvops.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
    torch.testing.assert_close(ours, theirs)


def test_sigmoid_focal_loss_hand_computed():
    # p = sigmoid(0) = 0.5, positive: 0.25 * 0.5^2 * log 2
    value = sigmoid_focal_loss(torch.zeros(1), torch.ones(1), reduction="sum")
    assert value.item() == pytest.approx(0.25 * 0.25 * math.log(2))


def _dense_reference(logits, labels, alpha, gamma):
    """One-hot targets + torchvision's focal loss summed over non-ignored anchors, per image."""
    out = []
    for x, lab in zip(logits, labels, strict=True):
        onehot = torch.zeros_like(x)
        pos = lab >= 0
        onehot[pos, lab[pos]] = 1.0
        keep = lab != IGNORE
        out.append(tvops.sigmoid_focal_loss(x[keep], onehot[keep], alpha, gamma, reduction="sum"))
    return torch.stack(out)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.75, 1.0)])
def test_dense_focal_loss_equals_one_hot_reference_with_gradients(alpha, gamma):
    logits = (torch.randn(3, 50, 6) * 3).requires_grad_()
    labels = torch.randint(-2, 6, (3, 50))
    labels[1] = NEGATIVE  # an image with no positives
    ours = sigmoid_focal_loss_dense(logits, labels, alpha, gamma)
    (grad_ours,) = torch.autograd.grad(ours.sum(), logits)
    theirs = _dense_reference(logits, labels, alpha, gamma)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-4, atol=1e-6)
    single = sigmoid_focal_loss_dense(logits[0], labels[0], alpha, gamma)
    torch.testing.assert_close(single, ours[0])


@pytest.mark.parametrize("gamma", [2.0, 1.5, 0.0])
def test_dense_focal_loss_backward_passes_gradcheck(gamma):
    """The hand-written backward against finite differences, in float64, ignored anchors included."""
    logits = (torch.randn(2, 7, 3, dtype=torch.float64) * 3).requires_grad_()
    labels = torch.tensor([[0, 2, -1, -2, -1, 1, -2], [-1, -1, -1, -1, -2, -1, -1]])
    assert torch.autograd.gradcheck(lambda x: sigmoid_focal_loss_dense(x, labels, 0.25, gamma), (logits,))


def test_dense_focal_loss_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels hold class 6"):
        sigmoid_focal_loss_dense(torch.zeros(1, 4, 6), torch.tensor([[0, 6, -1, -2]]))
    with pytest.raises(ValueError, match="must match cls_logits"):
        sigmoid_focal_loss_dense(torch.zeros(1, 4, 6), torch.zeros(1, 5, dtype=torch.long))


def test_softmax_focal_loss():
    logits = torch.randn(20, 5)
    targets = torch.randint(0, 5, (20,))
    torch.testing.assert_close(
        softmax_focal_loss(logits, targets, gamma=0.0), F.cross_entropy(logits, targets, reduction="none")
    )
    # hand-computed: uniform over 4 columns, p_t = 1/4: -(3/4)^2 log(1/4)
    value = softmax_focal_loss(torch.zeros(1, 4), torch.tensor([2]), gamma=2.0, reduction="sum")
    assert value.item() == pytest.approx((0.75**2) * math.log(4))
    targets[:5] = IGNORE
    mean = softmax_focal_loss(logits, targets, gamma=0.0, reduction="mean")
    torch.testing.assert_close(mean, F.cross_entropy(logits, targets, ignore_index=IGNORE))
    alpha = torch.tensor([0.1, 1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(
        softmax_focal_loss(logits, targets, gamma=0.0, alpha=alpha, reduction="sum"),
        F.cross_entropy(logits, targets, weight=alpha, ignore_index=IGNORE, reduction="sum"),
    )
    with pytest.raises(ValueError, match=r"targets must lie in 0\.\.4"):
        softmax_focal_loss(logits, torch.full((20,), 5))


@pytest.mark.parametrize("beta", [1.0, 1 / 9, 0.5])
def test_smooth_l1_equals_torch(beta):
    pred, target = torch.randn(30, 4), torch.randn(30, 4)
    torch.testing.assert_close(
        smooth_l1_loss(pred, target, beta=beta, reduction="none"),
        F.smooth_l1_loss(pred, target, beta=beta, reduction="none"),
    )
    torch.testing.assert_close(l1_loss(pred, target), F.l1_loss(pred, target, reduction="sum"))


def test_masked_l1_counts_only_masked_entries():
    pred = torch.tensor([[1.0, 2.0], [5.0, 5.0]])
    target = torch.zeros(2, 2)
    mask = torch.tensor([[True], [False]])
    assert l1_loss(pred, target, mask=mask).item() == 3.0
    assert l1_loss(pred, target, mask=mask, reduction="mean").item() == 1.5
    with pytest.raises(ValueError, match="reduction"):
        l1_loss(pred, target, reduction="avg")


@pytest.mark.parametrize(
    "kind,theirs",
    [
        ("giou", tvops.generalized_box_iou_loss),
        ("diou", tvops.distance_box_iou_loss),
        ("ciou", tvops.complete_box_iou_loss),
    ],
)
def test_iou_losses_equal_torchvision(kind, theirs):
    pred, target = random_boxes(25), random_boxes(25)
    pred[0] = target[0]
    for reduction in ("none", "sum", "mean"):
        torch.testing.assert_close(
            iou_loss(pred, target, kind, reduction), theirs(pred, target, reduction=reduction), rtol=1e-5, atol=1e-5
        )


def test_iou_loss_plain_and_gradients():
    pred, target = random_boxes(6).requires_grad_(), random_boxes(6)
    loss = iou_loss(pred, target, "iou")
    torch.testing.assert_close(loss, 1 - box_iou(pred.detach(), target).diagonal())
    iou_loss(pred, target, "ciou").sum().backward()
    assert torch.isfinite(pred.grad).all()
    with pytest.raises(ValueError, match="kind"):
        iou_loss(pred, target, "siou")
    bad = target.clone()
    bad[3, 0] = math.nan
    with pytest.raises(ValueError, match="target row 3"):
        iou_loss(pred, bad)


def test_hard_negative_mining_hand_computed():
    loss = torch.tensor([[0.1, 0.9, 0.8, 0.7, 0.2, 0.95, 0.3, 0.6]])
    labels = torch.tensor([[3, NEGATIVE, NEGATIVE, NEGATIVE, NEGATIVE, IGNORE, NEGATIVE, NEGATIVE]])
    # 1 positive -> 3 negatives with the largest loss: 0.9, 0.8, 0.7 (the ignored 0.95 never counts)
    keep = hard_negative_mining(loss, labels, neg_pos_ratio=3)
    assert keep.tolist() == [[True, True, True, True, False, False, False, False]]
    assert hard_negative_mining(loss[0], labels[0]).tolist() == keep[0].tolist()


def test_hard_negative_mining_invariants():
    loss = torch.rand(4, 200)
    labels = torch.full((4, 200), NEGATIVE)
    labels[0, :5] = 1
    labels[1, :100] = 0  # more positives than a 3:1 quota of negatives exists
    labels[3, 10:20] = IGNORE
    keep = hard_negative_mining(loss, labels, 3)
    negatives_kept = (keep & (labels == NEGATIVE)).sum(dim=1)
    assert negatives_kept.tolist() == [15, 100, 0, 0]  # image 2, 3: no positives, no negatives (SSD)
    chosen = loss[0][keep[0] & (labels[0] == NEGATIVE)]
    rest = loss[0][~keep[0] & (labels[0] == NEGATIVE)]
    assert chosen.min() >= rest.max()
    assert (hard_negative_mining(loss, labels, 3, min_negatives=4) & (labels == NEGATIVE)).sum(dim=1).tolist() == [
        15,
        100,
        4,
        4,
    ]
    assert not (keep & (labels == IGNORE)).any()


def test_positive_normalizer():
    assert positive_normalizer(0).item() == 1.0
    assert positive_normalizer(torch.tensor(7)).item() == 7.0
