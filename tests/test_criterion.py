import pytest
import torch
import torchvision

from multibox.anchors import pyramid_anchors
from multibox.criterion import RetinaNetCriterion
from multibox.matching import match_boxes


def _batch(num_classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    anchors = pyramid_anchors((96, 128), strides=(8, 16, 32), sizes=(16, 32, 64))
    counts = [5, 0, 12, 1]
    targets = []
    for n in counts:
        xy = torch.rand(n, 2, generator=gen) * 80
        wh = 6 + torch.rand(n, 2, generator=gen) * 50
        targets.append(
            {"boxes": torch.cat((xy, xy + wh), dim=1), "labels": torch.randint(0, num_classes, (n,), generator=gen)}
        )
    logits = torch.randn(len(counts), len(anchors), num_classes, generator=gen) - 2
    deltas = torch.randn(len(counts), len(anchors), 4, generator=gen) * 0.5
    return logits, deltas, anchors, targets


@pytest.mark.parametrize("box_loss", ["l1", "smooth_l1", "giou", "diou", "ciou"])
def test_equals_torchvision_retinanet_compute_loss(box_loss):
    logits, deltas, anchors, targets = _batch()
    model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    model.head.regression_head._loss_type = box_loss
    theirs = model.compute_loss(targets, {"cls_logits": logits, "bbox_regression": deltas}, [anchors] * len(targets))
    # torchvision's RetinaNet uses smooth L1 with beta 1.0
    ours = RetinaNetCriterion(box_loss=box_loss, smooth_l1_beta=1.0, normalize="image")(
        (logits, deltas), anchors, targets
    )
    torch.testing.assert_close(ours["cls"], theirs["classification"], rtol=1e-5, atol=0)
    torch.testing.assert_close(ours["box"], theirs["bbox_regression"], rtol=1e-5, atol=0)
    torch.testing.assert_close(ours["total"], ours["cls"] + ours["box"])


def test_batch_normalisation_divides_by_all_positives():
    logits, deltas, anchors, targets = _batch(seed=1)
    crit_img = RetinaNetCriterion(normalize="image")
    per_image = [crit_img((logits[i : i + 1], deltas[i : i + 1]), anchors, targets[i : i + 1]) for i in range(4)]
    matched = match_boxes([t["boxes"] for t in targets], anchors)
    positives = (matched >= 0).sum(dim=1).float()
    batch = RetinaNetCriterion(normalize="batch")((logits, deltas), anchors, targets)
    expected_cls = sum(p["cls"] * n.clamp(min=1) for p, n in zip(per_image, positives, strict=True)) / positives.sum()
    torch.testing.assert_close(batch["cls"], expected_cls)
    # the empty image still trains its anchors as background
    assert per_image[1]["cls"] > 0 and per_image[1]["box"] == 0


def test_gradients_reach_both_heads():
    logits, deltas, anchors, targets = _batch(seed=2)
    logits.requires_grad_(), deltas.requires_grad_()
    loss = RetinaNetCriterion(box_weight=2.0)((logits, deltas), anchors, targets)
    loss["total"].backward()
    assert logits.grad.abs().sum() > 0 and deltas.grad.abs().sum() > 0
    assert torch.isfinite(logits.grad).all() and torch.isfinite(deltas.grad).all()


def test_bad_targets():
    logits, deltas, anchors, targets = _batch()
    with pytest.raises(ValueError, match="got 3 targets for a batch of 4"):
        RetinaNetCriterion()((logits, deltas), anchors, targets[:3])
    targets[2]["labels"][0] = 9
    with pytest.raises(ValueError, match="labels hold class 9"):
        RetinaNetCriterion()((logits, deltas), anchors, targets)
    with pytest.raises(ValueError, match="box_loss"):
        RetinaNetCriterion(box_loss="l2")


def test_the_atss_assigner_trains_retinanet_from_the_config():
    from multibox.config import load_config
    from multibox.kinds import build_criterion, build_model

    config = load_config("cpu_digits", ["model.pretrained=none", "input.size=[64, 64]", "loss.assigner=atss"])
    model = build_model(config.model, 3, image_size=(64, 64))
    criterion = build_criterion(config, model)
    anchors = model.anchors((64, 64))
    assert criterion.assigner == "atss" and sum(criterion.level_sizes) == len(anchors)
    boxes = torch.tensor([[4.0, 6.0, 16.0, 22.0], [30.0, 30.0, 60.0, 50.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([0, 2])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)}]  # fmt: skip
    matched = criterion.match(anchors, targets)
    assert set(matched[0].unique().tolist()) == {-1, 0, 1} and bool((matched[1] == -1).all())  # no IGNORE band
    output = model(torch.randn(2, 3, 64, 64))
    losses = criterion(output, anchors, targets)
    losses["total"].backward()
    assert torch.isfinite(losses["total"]) and losses["box"] > 0
    with pytest.raises(ValueError, match="do not add up"):
        criterion.match(anchors[:-9], targets)
    wrong = load_config("ssd300", ["model.pretrained=none", "loss.assigner=atss"])
    with pytest.raises(ValueError, match=r"loss\.assigner=atss is RetinaNet's"):
        build_criterion(wrong, build_model(wrong.model, 2, image_size=(300, 300)))
