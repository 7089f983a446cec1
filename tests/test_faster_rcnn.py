"""Faster R-CNN: torchvision's weights give torchvision's proposals and detections; RoIAlign and
its levels against torchvision's; the samplers' counts; the losses against torchvision's and by
hand; images without boxes; the presets."""

import math

import pytest
import torch
import torchvision
from conftest import assert_same_detections
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import LevelMapper

from multibox.coding import DeltaCoder
from multibox.config import load_config
from multibox.criterion_faster_rcnn import FasterRCNNCriterion
from multibox.kinds import build_model
from multibox.losses import SMOOTH_L1_BETA
from multibox.matching import NEGATIVE, match, sample_balanced
from multibox.models import RoIConfig, build_faster_rcnn
from multibox.models.faster_rcnn import ROI_CODER, match_rois, sample_rois
from multibox.models.roi_align import multilevel_roi_align, roi_levels
from multibox.structures import TwoStageOutput


def _torchvision_model(classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=classes + 1, min_size=256, max_size=256,
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
    ).eval()  # fmt: skip
    with torch.no_grad():  # random weights that give detections above the score threshold
        model.roi_heads.box_predictor.cls_score.bias.normal_(0, 2)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(10)
    return model


@pytest.mark.parametrize("frozen_bn", [False, True])  # True: FrozenBN folded into the convs, same keys
def test_torchvision_faster_rcnn_weights_give_the_same_proposals_and_detections(frozen_bn):
    theirs = _torchvision_model(5)
    ours = build_faster_rcnn(5, pretrained="none", frozen_bn=frozen_bn).eval()
    ours.load_state_dict(theirs.state_dict())  # same module names: loads strictly, unchanged
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        expected = theirs(list(images))
        batch = theirs.transform(list(images))[0]
        proposals, _ = theirs.rpn(batch, theirs.backbone(batch.tensors))
        output = ours(images)
        found = ours.detect(output, (256, 256))
    anchors = ours.anchors((256, 256))
    assert output.objectness.shape == (2, len(anchors)) and output.rpn_deltas.shape == (2, len(anchors), 4)
    assert output.cls_logits.shape == (len(output.rois), 6) and output.box_deltas.shape == (len(output.rois), 6, 4)
    # the same convs: the same proposals to the bit (measured); our RoIAlign sums its 16 taps a bin
    # in another order (pooled values within 1e-6): scores within 1e-5, boxes (deltas x10) 1e-3 px.
    # Folding BN reorders the sums of a random ResNet-50's large activations: measured on AVX-512,
    # proposals moved by up to 4.3e-3 px, detections' scores by 7.3e-5 and boxes by 1.1e-2 px (the
    # deltas x10 amplify): 1e-2, 2e-4 and 3e-2 there, room for another kernel's rounding
    proposal_atol, score_atol, box_atol = (1e-2, 2e-4, 3e-2) if frozen_bn else (1e-4, 1e-5, 1e-3)
    for image, (mine, ref, their_proposals) in enumerate(zip(found, expected, proposals, strict=True)):
        my_proposals = output.rois[output.rois[:, 0] == image, 1:]
        assert my_proposals.shape == their_proposals.shape and len(my_proposals) > 100
        assert (my_proposals - their_proposals).abs().max() <= proposal_atol
        ref = {**ref, "labels": ref["labels"] - 1}  # torchvision's class 0 is the background
        assert len(mine) >= 5
        assert_same_detections(mine, ref, score_atol=score_atol, box_atol=box_atol)


def test_faster_rcnn_r50_fpn_preset_is_torchvisions_layout():
    config = load_config("faster_rcnn_r50_fpn")
    ours = build_model(config.model, 5, "none").state_dict()
    theirs = _torchvision_model(5).state_dict()
    # without weights torchvision builds BatchNorm2d, whose num_batches_tracked its COCO weights
    # (FrozenBatchNorm2d, as multibox's frozen_bn) do not have
    theirs = {k: v for k, v in theirs.items() if not k.endswith("num_batches_tracked")}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    build_model(config.model, 5, "none").load_state_dict(theirs)  # strictly


def test_roi_levels_equal_torchvisions_level_mapper():
    torch.manual_seed(0)
    corner = torch.rand(2000, 2) * 500
    boxes = torch.cat([corner, corner + torch.rand(2000, 2).pow(3) * 900 + 0.01], 1)
    boxes[:4] = torch.tensor([[0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 448, 448], [0, 0, 56, 56]])  # exact powers
    for k_min, k_max, scale, level in [(2, 5, 224.0, 4), (3, 5, 64.0, 4), (3, 6, 224.0, 4)]:
        theirs = LevelMapper(k_min, k_max, scale, level)([boxes])
        assert torch.equal(roi_levels(boxes, k_min, k_max, scale, level), theirs)
    assert roi_levels(boxes[:4], 2, 5).tolist() == [1, 2, 3, 0]  # from P2: 112 px on P3, 224 P4, 448 P5, 56 P2


def _regions(count: int, images: int, side: float) -> torch.Tensor:
    """Random regions in ``images`` images of ``side`` px: tiny (under a pixel) to whole-image, some on edges."""
    corner = torch.rand(count, 2) * side
    size = torch.rand(count, 2).pow(2) * side + 0.1
    boxes = torch.cat([corner, (corner + size).clamp(max=side)], 1)
    boxes[: count // 8, :2] = 0.0  # touching the top-left edge
    boxes[count // 8 : count // 4, 2:] = side  # and the bottom-right one
    return torch.cat([torch.randint(0, images, (count, 1)).float(), boxes], 1)


def test_multilevel_roi_align_equals_torchvisions_with_gradients():
    torch.manual_seed(0)
    strides, size = (4, 8, 16, 32), 64
    features = [torch.randn(3, 8, size // s, size // s, requires_grad=True) for s in strides]
    rois = _regions(300, 3, float(size))
    ours = multilevel_roi_align(features, rois, strides, 7, 2, canonical_scale=16.0, canonical_level=4)
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2, canonical_scale=16, canonical_level=4)
    named = {str(i): f for i, f in enumerate(features)}
    theirs = pooler(named, [rois[rois[:, 0] == i, 1:] for i in range(3)], [(size, size)] * 3)
    order = torch.argsort(rois[:, 0], stable=True)  # torchvision's regions come image by image
    # the same 16 products a bin summed in another order: within a few float32 ulps of values ~1
    assert (ours[order] - theirs).abs().max() <= 1e-5
    levels = roi_levels(rois[:, 1:], 2, 5, 16.0, 4)
    assert set(levels.tolist()) == {0, 1, 2, 3}  # every level used
    grad = torch.randn_like(ours)
    mine = torch.autograd.grad(ours, features, grad)
    reference = torch.zeros_like(ours)
    for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
        index = torch.where(levels == level)[0]
        reference[index] = roi_align(feature, rois[index], 7, 1.0 / stride, 2)
    expected = torch.autograd.grad(reference, features, grad)
    for a, b in zip(mine, expected, strict=True):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, float(b.abs().max()))


def test_multilevel_roi_align_of_no_regions_and_channels_last():
    features = [torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last), torch.randn(2, 4, 4, 4)]
    assert multilevel_roi_align(features, torch.zeros((0, 5)), (8, 16)).shape == (0, 4, 7, 7)
    rois = torch.tensor([[1.0, 3.0, 5.0, 40.0, 60.0]])
    expected = roi_align(features[0].contiguous(), rois, 7, 1 / 8, 2)  # 37 x 55 px: P3 at scale 224 clamped
    assert (multilevel_roi_align(features, rois, (8, 16), canonical_scale=224.0) - expected).abs().max() <= 1e-6


def test_sample_balanced_counts():
    torch.manual_seed(0)
    matched = torch.full((1000,), NEGATIVE)
    matched[:300] = 0  # 300 positives
    matched[300:350] = -2  # ignored
    positive, negative = sample_balanced(matched, 256, 0.5)
    assert len(positive) == 128 and len(negative) == 128  # RPN: 256 at 1:1
    assert bool((matched[positive] >= 0).all()) and bool((matched[negative] == NEGATIVE).all())
    assert len(set(positive.tolist())) == 128  # without replacement
    positive, negative = sample_balanced(matched[250:], 256, 0.5)  # 50 positives: negatives fill
    assert len(positive) == 50 and len(negative) == 206
    positive, negative = sample_balanced(torch.full((100,), NEGATIVE), 256, 0.5)  # too few: all there are
    assert len(positive) == 0 and len(negative) == 100


def test_rpn_samples_256_anchors_an_image_at_most_half_positive():
    torch.manual_seed(0)
    config = load_config("faster_rcnn", ["model.backbone.pretrained=none"])
    anchors = build_model(config.model, 3, "none", (256, 256)).anchors((256, 256))
    many = anchors[torch.randperm(len(anchors))[:200]]  # 200 boxes that are anchors: 200 positives and more
    one = torch.tensor([[100.0, 100, 113, 118]])  # small: its best anchors alone
    empty = torch.zeros((0, 4))
    targets = [{"boxes": b, "labels": torch.zeros(len(b), dtype=torch.long)} for b in (many, one, empty)]
    image, anchor, positive, deltas = FasterRCNNCriterion().sample_anchors(anchors, targets)
    counts = torch.bincount(image, minlength=3).tolist()
    positives = torch.bincount(image[positive], minlength=3).tolist()
    assert positives[0] == 128  # capped at half of 256
    assert counts == [256, 256, 256] and 1 <= positives[1] <= 4 and positives[2] == 0
    assert len(deltas) == int(positive.sum()) and len(set(anchor[image == 0].tolist())) == 256  # no repeats


def test_roi_sampling_takes_a_quarter_positives_and_the_boxes_themselves():
    torch.manual_seed(0)
    box = torch.tensor([[100.0, 100.0, 160.0, 180.0]])
    near = box + torch.randn(400, 4) * 2  # IoU > 0.5 with the box
    far = torch.cat([torch.rand(1000, 2) * 50, torch.rand(1000, 2) * 50 + 60], 1)  # in the top-left corner
    targets = [{"boxes": box, "labels": torch.tensor([3])}, {"boxes": box, "labels": torch.tensor([3])}]
    config = RoIConfig()
    rois = sample_rois([torch.cat([near, far]), torch.cat([near[:9], far])], targets, config)
    for image, positives in [(0, 128), (1, 10)]:  # a quarter of 512; or the 9 near ones and the box itself
        mine = rois[rois[:, 0] == image, 1:]
        matched = match_rois(mine, box, 0.5)
        assert len(mine) == 512 and int((matched >= 0).sum()) == positives
    assert bool((rois[rois[:, 0] == 1, 1:] == box).all(1).any())  # the ground-truth box is a region
    no_boxes = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)}]
    rois = sample_rois([far[:100]], no_boxes, config)  # an image without boxes: all its regions background
    assert len(rois) == 100


def test_rpn_loss_by_hand():
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60], [0, 50, 10, 60]])
    box = torch.tensor([[20.0, 20, 40, 42]])  # IoU 20x20 / 20x22 = 0.909 with anchor 1
    objectness = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    deltas = torch.zeros(1, 4, 4)
    deltas[0, 1] = torch.tensor([0.5, 0.0, 0.0, 1.0])
    output = TwoStageOutput(objectness, deltas, torch.zeros((0, 5)), torch.zeros((0, 3)), torch.zeros((0, 3, 4)))
    targets = [{"boxes": box, "labels": torch.tensor([1])}]
    obj, rpn_box = FasterRCNNCriterion().rpn_losses(output, anchors, targets)
    # every anchor sampled (4 < 256): anchor 1 positive, the rest background
    bce = [math.log1p(math.exp(2.0)), math.log1p(math.exp(1.0)), math.log1p(math.exp(0.5)), math.log(2.0)]
    assert obj.item() == pytest.approx(sum(bce) / 4, rel=1e-6)
    target = DeltaCoder().encode(anchors[1], box[0])  # (0, 0.05, 0, log(1.1))

    def huber(d):
        return 0.5 * d * d / SMOOTH_L1_BETA if d < SMOOTH_L1_BETA else d - 0.5 * SMOOTH_L1_BETA

    expected = sum(huber(abs(p - t)) for p, t in zip([0.5, 0.0, 0.0, 1.0], target.tolist(), strict=True)) / 4
    assert rpn_box.item() == pytest.approx(expected, rel=1e-6)


def test_roi_losses_equal_torchvisions_fastrcnn_loss():
    torch.manual_seed(0)
    boxes = torch.tensor([[10.0, 10, 50, 60], [60, 20, 90, 90]])
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)}
    targets = [{"boxes": boxes, "labels": torch.tensor([0, 2])}, empty]
    regions = torch.cat([boxes.repeat(20, 1) + torch.randn(40, 4) * 4, _regions(60, 1, 100.0)[:, 1:]])
    rois = torch.cat([torch.cat([torch.zeros(100, 1), regions], 1), _regions(30, 1, 100.0)])
    rois[100:, 0] = 1
    rois[:, 3:] = torch.maximum(rois[:, 3:], rois[:, 1:3] + 1)
    cls_logits, box_deltas = torch.randn(130, 4), torch.randn(130, 4, 4)
    output = TwoStageOutput(torch.zeros(2, 1), torch.zeros(2, 1, 4), rois, cls_logits, box_deltas)
    cls, box = FasterRCNNCriterion().roi_losses(output, targets)
    # torchvision's: its matcher (IoU >= 0.5 positive) and box coder, labels 1..C
    labels, wanted = [], []
    for image, target in enumerate(targets):
        mine = rois[rois[:, 0] == image, 1:]
        matched = match(torchvision.ops.box_iou(target["boxes"], mine), 0.5, 0.5, allow_low_quality=False)
        hit = matched >= 0
        label = torch.zeros(len(mine), dtype=torch.long)
        label[hit] = target["labels"][matched[hit]] + 1
        goal = torch.zeros(len(mine), 4)
        goal[hit] = ROI_CODER.encode(mine[hit], target["boxes"][matched[hit]])
        labels.append(label)
        wanted.append(goal)
    assert 10 < int((torch.cat(labels) > 0).sum()) < 100
    their_cls, their_box = fastrcnn_loss(cls_logits, box_deltas.reshape(130, -1), labels, wanted)
    assert cls.item() == pytest.approx(their_cls.item(), rel=1e-6)
    assert box.item() == pytest.approx(their_box.item(), rel=1e-5)


def test_images_without_boxes_train_and_detect():
    torch.manual_seed(0)
    config = load_config("faster_rcnn", ["model.backbone.pretrained=none", "model.faster_rcnn.fpn_channels=16"])
    model = build_model(config.model, 3, "none", (64, 64))
    criterion = FasterRCNNCriterion()
    images = torch.randn(2, 3, 64, 64)
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)}
    for targets in ([empty, empty], [empty, {"boxes": torch.tensor([[8.0, 8, 40, 50]]), "labels": torch.tensor([2])}]):
        output = model(images, targets)
        losses = criterion(output, model.anchors((64, 64)), targets)
        assert all(torch.isfinite(v) for v in losses.values())
        losses["total"].backward()
        if targets[1]["labels"].numel() == 0:
            assert losses["rpn_box"].item() == 0 and losses["box"].item() == 0  # no positives anywhere
    with pytest.raises(ValueError, match="got 1 targets for a batch of 2 images"):
        criterion(model(images, [empty, empty]), model.anchors((64, 64)), [empty])
    model.eval()
    with torch.no_grad():
        found = model.detect(model(images), (64, 64), score_thresh=0.0)
    assert len(found) == 2 and all(bool((d.boxes >= 0).all() and (d.boxes <= 64).all()) for d in found)


def test_onnx_export_of_torchvisions_weights_gives_the_same_detections(tmp_path):
    """The whole two-stage graph (proposals, NMS, RoiAlign, the head, per-class NMS) in onnxruntime."""
    from multibox import load
    from multibox.export import export_onnx
    from multibox.inference import Predictor

    overrides = ["input.size=[128, 128]", "input.resize=squish", "model.backbone.pretrained=none"]
    config = load_config("faster_rcnn_r50_fpn", overrides)
    model = build_model(config.model, 5, "none").eval()
    weights = _torchvision_model(5).state_dict()
    model.load_state_dict({k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")})
    predictor = Predictor(model, config, [str(i) for i in range(5)], device="cpu")
    onnx = load(export_onnx(predictor, tmp_path / "frcnn.onnx"))
    image = torch.randint(0, 256, (128, 160, 3), dtype=torch.uint8).numpy()
    expected = predictor.predict(image)
    assert len(expected) >= 5
    # onnxruntime's convolutions round a random ResNet-50's large activations otherwise, and the
    # deltas x10 amplify it: measured scores within 2.9e-5, boxes 5.3e-3 px (without the x10:
    # 1.2e-7 and 1.3e-3 px); the MobileNetV2 preset in test_kinds.py holds 1e-5 and 1e-3 px
    assert_same_detections(onnx.predict(image), expected, score_atol=1e-4, box_atol=2e-2)
