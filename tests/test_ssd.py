"""The SSD family: networks and their anchors, the SSD criterion against hand-worked cases,
training that lowers the loss, and each preset end to end through the engine."""

import math

import pytest
import torch
import torch.nn.functional as F
from data_helpers import fit_one_batch

from multibox.anchors import TOY_SSD, grid_anchors, grid_cell_sizes, ssd_default_boxes
from multibox.coding import DeltaCoder, TanhCoder
from multibox.config import load_config
from multibox.criterion import SSDCriterion
from multibox.data.records import DetectionSet, Record
from multibox.engine import Trainer
from multibox.kinds import build_criterion, build_model
from multibox.matching import NEGATIVE, batch_iou, match_ssd, relative_iou
from multibox.models import SSD_KINDS, GridSSD, MobileNetSSD, ToySSD
from multibox.structures import DenseOutput

# anchors per preset at its input size (the toy SSD's 5,444 are at 256x256; its preset runs at 192)
ANCHORS = {"ssd_grid": 16, "ssd_multihead": 189, "toyssd": 3064, "ssd300": 8732, "ssdlite": 9602}


def _targets():
    return [
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [60.0, 60.0, 120.0, 110.0]]), "labels": torch.tensor([2, 0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]


def _preset_model(kind: str, classes: int = 3):
    config = load_config(kind, ["model.pretrained=none"])
    return config, build_model(config.model, classes, image_size=config.input.size)


@pytest.mark.parametrize("kind", SSD_KINDS)
def test_each_preset_gives_its_anchors_outputs_and_a_finite_loss(kind):
    torch.manual_seed(0)
    config, model = _preset_model(kind)
    side = config.input.size[0]
    anchors = model.anchors((side, side))
    assert anchors.shape == (ANCHORS[kind], 4) and sum(model.level_sizes()) == ANCHORS[kind]
    out = model(torch.randn(2, 3, side, side))
    assert isinstance(out, DenseOutput)
    assert out.cls_logits.shape == (2, ANCHORS[kind], 4) and out.box_deltas.shape == (2, ANCHORS[kind], 4)
    targets = [{k: v * side / 128 if k == "boxes" else v for k, v in t.items()} for t in _targets()]
    losses = build_criterion(config, model)(out, anchors, targets)
    assert all(bool(torch.isfinite(v)) for v in losses.values()) and losses["box"] > 0
    losses["total"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        found = model.detect(model(torch.randn(2, 3, side, side)), (side, side), score_thresh=0.0, max_det=7)
    assert [len(d) for d in found] == [7, 7]
    assert all(bool((d.boxes >= 0).all() and (d.boxes <= side).all() and (d.labels < 3).all()) for d in found)
    with pytest.raises(ValueError, match=f"built for {side}x{side} inputs"):
        model(torch.randn(1, 3, side + 32, side + 32))


def test_grid_networks_use_the_course_anchors_and_tanh_coder():
    model = GridSSD(5, (256, 256), pretrained="none")
    assert model.grids == (4, 2, 1)
    assert torch.equal(model.anchors(), grid_anchors((4, 2, 1)) * 256)
    assert torch.equal(model.coder.cell_sizes[:, 0], grid_cell_sizes((4, 2, 1), 9) * 256)
    assert GridSSD(5, (224, 224), grids=1, pretrained="none").grids == (4,)  # C5 7x7 -> 4x4, as the course
    with pytest.raises(ValueError, match="square"):
        GridSSD(5, (256, 320), pretrained="none")


def test_the_grid_head_takes_mobilenet_c5_as_it_is():
    """MobileNetV2's C5 is a linear bottleneck: no ReLU may drop its negative half before the head."""
    model = GridSSD(3, (256, 256), pretrained="none").eval()
    seen = {}
    model.sconv0.register_forward_hook(lambda module, inputs, output: seen.update(c5=inputs[0]))
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        model(images)
        c5 = list(model.backbone(images).values())[-1]
    assert torch.equal(seen["c5"], c5) and bool((c5 < 0).any())


def test_the_p4_grid_head_reads_c5_merged_into_c4():
    """``grid_from="p4"``: the head reads lateral(C4) + lateral(C5) upsampled 2x by nearest
    neighbour (written out here with ``repeat_interleave``), then reaches the same grids and anchors."""
    torch.manual_seed(0)
    model = GridSSD(3, (224, 224), grid_from="p4", pretrained="none").eval()
    course = GridSSD(3, (224, 224), pretrained="none")
    assert model.grids == course.grids == (4, 2, 1) and torch.equal(model.anchors(), course.anchors())
    assert GridSSD(3, (256, 256), grid_from="p4", pretrained="none").grids == (4, 2, 1)  # P4 16x16 -> 8 -> 4
    seen = {}
    model.sconv0.register_forward_hook(lambda module, inputs, output: seen.update(p4=inputs[0]))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        model(images)
        _, c4, c5 = model.backbone(images).values()
        top = model.lateral5(c5).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        expected = model.lateral4(c4) + top
    assert c4.shape[-1] == 14 and c5.shape[-1] == 7
    torch.testing.assert_close(seen["p4"], expected)
    with pytest.raises(ValueError, match="grid_from must be one of"):
        GridSSD(3, (224, 224), grid_from="c4", pretrained="none")


def _grid_feature_offsets(model: GridSSD) -> list[list[float]]:
    """Per grid, how far (input pixels, along x) the map position each cell's features are
    centred on lies from its anchors' centre. Every 3x3 conv is made to pass its centre tap
    only, and the map the head reads is replaced by each position's column index + 1."""
    model = model.eval()
    with torch.no_grad():
        for module in [model.sconv0, *model.sconvs]:
            for conv in module.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    conv.weight.zero_()
                    conv.weight[:, 0, 1, 1] = 1.0
                    conv.bias.zero_()
    side, read = model.image_size[0], model.read_side

    def columns(module, inputs):
        index = torch.arange(1.0, read + 1).expand(1, inputs[0].shape[1], read, read)
        return (index,)

    model.sconv0.register_forward_pre_hook(columns)
    grids = []
    for sconv in model.sconvs:
        sconv.register_forward_hook(lambda module, inputs, output: grids.append(output[0, 0, 0]))
    with torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    offsets = []
    for row, g in zip(grids, model.grids, strict=True):
        position = row.round() - 1  # eval BatchNorm divides by sqrt(1 + 1e-5): round it off
        centres = (position + 0.5) * side / read
        offsets.append((centres - (torch.arange(g) + 0.5) * side / g).tolist())
    return offsets


def test_aligned_grids_read_their_anchors_from_the_same_place():
    """``align``: the map the head reads is resized (bilinear) to a side that the stride-2
    convs halve exactly, 16 for P4 at 224x224; each cell's features then sit at the same offset
    from its anchors, where from 14 -> 7 -> 4 they sit 20, 12, 4 px before and 4 px after."""
    torch.manual_seed(0)
    course = GridSSD(3, (224, 224), grid_from="p4", pretrained="none")
    aligned = GridSSD(3, (224, 224), grid_from="p4", pretrained="none", align=True)
    aligned.load_state_dict(course.state_dict())  # the same parameters
    assert (course.read_side, aligned.read_side) == (14, 16)
    assert aligned.grids == course.grids == (4, 2, 1) and torch.equal(aligned.anchors(), course.anchors())
    seen = {}
    course.eval().sconv0.register_forward_pre_hook(lambda module, inputs: seen.update(course=inputs[0]))
    aligned.eval().sconv0.register_forward_pre_hook(lambda module, inputs: seen.update(aligned=inputs[0]))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        course(images), aligned(images)
    resized = F.interpolate(seen["course"], size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(seen["aligned"], resized)

    assert _grid_feature_offsets(course)[0] == [-20.0, -12.0, -4.0, 4.0]
    for offsets in _grid_feature_offsets(aligned):
        assert len(set(offsets)) == 1, offsets  # 4x4: -21 px each; 2x2: -49; 1x1: -105
    assert _grid_feature_offsets(aligned)[0] == [-21.0] * 4
    # C5 at 224x224 (7x7) is resized to 8x8; at 256x256 both maps already halve exactly
    assert GridSSD(3, (224, 224), pretrained="none", align=True).read_side == 8
    assert GridSSD(3, (256, 256), grid_from="p4", pretrained="none", align=True).read_side == 16
    assert GridSSD(3, (256, 256), pretrained="none", align=True).read_side == 8


def test_toy_and_ssd300_anchors_are_the_papers():
    assert torch.equal(ToySSD(1).anchors(), ssd_default_boxes(**TOY_SSD)) and len(ToySSD(1).anchors()) == 5444
    maps = (38, 19, 10, 5, 3, 1)
    assert torch.equal(MobileNetSSD(2, pretrained="none").anchors(), ssd_default_boxes(300, maps, steps=None))


def test_ssd_scales_replace_the_papers():
    scales = (0.06, 0.14, 0.3, 0.5, 0.75, 1.0)
    toy = ToySSD(1, (192, 192), scales=scales)
    maps = (24, 12, 6, 3, 1)
    expected = ssd_default_boxes(192, maps, steps=None, scales=scales, ratios=TOY_SSD["ratios"], clip=False)
    assert torch.equal(toy.anchors(), expected) and len(expected) == 4 * sum(m * m for m in maps)
    smallest = expected[0]
    assert (smallest[2] - smallest[0]).item() == pytest.approx(0.06 * 192)
    with pytest.raises(ValueError, match="6 increasing positive fractions"):
        ToySSD(1, scales=(0.1, 0.2))
    lite = MobileNetSSD(2, (320, 320), lite=True, pretrained="none", scales=(0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0))
    assert (lite.anchors()[0, 2] - lite.anchors()[0, 0]).item() == pytest.approx(0.05 * 320)


def test_head_outputs_line_up_with_their_anchors():
    """Output ``(row * W + col) * k + type`` of a grid comes from that cell's channels ``type * n ...``."""
    torch.manual_seed(0)
    model = GridSSD(2, (256, 256), grids=1, zooms=(1.0, 0.5), ratios=((1.0, 1.0),), pretrained="none").eval()
    head = model.outs[0]
    captured = {}
    head.box.register_forward_hook(lambda module, args, out: captured.setdefault("map", out))
    boxes = model(torch.randn(1, 3, 256, 256)).box_deltas[0]  # [4 * 4 * 2, 4]
    raw = captured["map"][0]  # [2 * 4, 4, 4]
    row, col, kind = 2, 3, 1
    assert torch.equal(boxes[(row * 4 + col) * 2 + kind], raw[kind * 4 : kind * 4 + 4, row, col])
    centre = model.anchors()[(row * 4 + col) * 2 + kind]
    assert ((centre[0] + centre[2]) / 2).item() == 64 * col + 32
    assert ((centre[1] + centre[3]) / 2).item() == 64 * row + 32


def test_class_biases_start_at_the_prior():
    model = ToySSD(3)
    bias = model.outs[0].cls.bias.view(4, 4)
    assert torch.all(bias[:, 0] == 0)
    assert torch.allclose(torch.sigmoid(bias[:, 1:]), torch.full((4, 3), 0.01))


# ---- the criterion, by hand -------------------------------------------------------------------

_ANCHORS = torch.tensor(
    [[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [0.0, 10.0, 10.0, 20.0], [5.0, 5.0, 15.0, 15.0]]
)


def _one_box(label: int = 1):
    return [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 9.0]]), "labels": torch.tensor([label])}]


def test_forced_match_then_threshold_and_background_columns():
    crit = SSDCriterion(DeltaCoder(), iou_threshold=0.5)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 9.0], [6.0, 6.0, 14.0, 14.0]]), "labels": torch.tensor([1, 0])}]
    matched, columns, _ = crit.match(_ANCHORS, targets)
    # box 0: IoU 0.9 with anchor 0; box 1 (64 px inside anchor 3's 100): IoU 0.64 with anchor 3
    assert matched.tolist() == [[0, NEGATIVE, NEGATIVE, 1]]
    assert columns.tolist() == [[2, 0, 0, 1]]  # class + 1; background in column 0


def test_forced_match_ties_go_to_the_later_box_and_first_anchor():
    crit = SSDCriterion(DeltaCoder(), iou_threshold=0.99)
    # two identical boxes: both pick anchor 0 (first of its tied best anchors 0 and 1 for a box
    # straddling them equally); the later box keeps it
    box = [10.0 - 5.0, 0.0, 10.0 + 5.0, 10.0]
    targets = [{"boxes": torch.tensor([box, box]), "labels": torch.tensor([0, 1])}]
    matched, columns, _ = crit.match(_ANCHORS, targets)
    assert matched.tolist() == [[1, NEGATIVE, NEGATIVE, NEGATIVE]] and columns.tolist() == [[2, 0, 0, 0]]


def test_bce_leaves_the_background_column_out():
    logits = torch.tensor([[[9.0, 0.5, -1.0], [-7.0, 0.2, 0.3], [3.0, -0.4, 1.5], [0.0, 2.0, -2.0]]])
    deltas = torch.zeros(1, 4, 4)
    crit = SSDCriterion(TanhCoder(torch.full((4,), 10.0)), cls_loss="bce", box_loss="l1_boxes")
    losses = crit(DenseOutput(logits, deltas), _ANCHORS, _one_box(label=1))  # anchor 0, class 1 (column 2)

    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = sum(bce(x, 1.0 if (a, c) == (0, 1) else 0.0) for a, row in enumerate(logits[0, :, 1:].tolist())
                   for c, x in enumerate(row))  # fmt: skip
    assert losses["cls"].item() == pytest.approx(expected, rel=1e-6)  # one positive: divided by 1
    moved = logits.clone()
    moved[..., 0] = torch.randn(4) * 10  # the background column does not count
    assert crit(DenseOutput(moved, deltas), _ANCHORS, _one_box(1))["cls"].item() == pytest.approx(expected, rel=1e-6)
    # zero deltas decode to the anchor (0, 0, 10, 10); the box is (0, 0, 10, 9): |1| / 10 on y2
    assert losses["box"].item() == pytest.approx(0.1, rel=1e-6)
    focal = SSDCriterion(crit.coder, cls_loss="focal", box_loss="l1_boxes", gamma=0.0, alpha=0.5)
    assert focal(DenseOutput(logits, deltas), _ANCHORS, _one_box(1))["cls"].item() == pytest.approx(expected / 2)


def test_soft_targets_scale_each_positive_by_its_anchor_iou_over_the_best():
    # the box (0, 0, 10, 9): IoU 0.9 with anchor 0 (its best) and 20 / 170 with anchor 3
    anchors, box = _ANCHORS, torch.tensor([[0.0, 0.0, 10.0, 9.0]])
    iou3 = 20 / 170
    matched = match_ssd(batch_iou([box], anchors), 0.1)
    assert matched.tolist() == [[0, NEGATIVE, NEGATIVE, 0]]
    relative = relative_iou(batch_iou([box], anchors), matched)
    assert relative[0].tolist() == pytest.approx([1.0, 0.0, 0.0, iou3 / 0.9])

    torch.manual_seed(3)
    logits, deltas = torch.randn(1, 4, 3), torch.zeros(1, 4, 4)

    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    def expected(target_of_anchor3):
        targets = {(0, 1): 1.0, (3, 1): target_of_anchor3}  # class 1: column 2, foreground column 1
        rows = logits[0, :, 1:].tolist()
        total = sum(bce(x, targets.get((a, c), 0.0)) for a, row in enumerate(rows) for c, x in enumerate(row))
        return total / 2  # two positives

    coder = TanhCoder(torch.full((4,), 10.0))
    soft = SSDCriterion(coder, iou_threshold=0.1, cls_loss="bce", box_loss="l1_boxes", soft_targets=True)
    hard = SSDCriterion(coder, iou_threshold=0.1, cls_loss="bce", box_loss="l1_boxes")
    output = DenseOutput(logits, deltas)
    assert soft(output, anchors, _one_box(1))["cls"].item() == pytest.approx(expected(iou3 / 0.9), rel=1e-6)
    assert hard(output, anchors, _one_box(1))["cls"].item() == pytest.approx(expected(1.0), rel=1e-6)
    assert soft(output, anchors, _one_box(1))["box"].item() == hard(output, anchors, _one_box(1))["box"].item()
    with pytest.raises(ValueError, match="soft_targets needs cls_loss='bce'"):
        SSDCriterion(coder, cls_loss="focal", soft_targets=True)
    config = load_config("retinanet_r50_fpn", ["model.pretrained=none", "train.soft_targets=true"])
    with pytest.raises(ValueError, match=r"loss\.soft_targets is for the SSD family's bce class loss; retinanet"):
        build_criterion(config, torch.nn.Module())


def test_relative_iou_per_box_and_image_with_padding():
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0], [20.0, 20.0, 25.0, 30.0]]
    )
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 28.0]]), torch.zeros(0, 4)]
    iou = batch_iou(boxes, anchors)
    matched = match_ssd(iou, 0.3)
    # box 0: anchors 0 (IoU 1) and 1 (0.5); box 1: anchors 2 (0.8, its best) and 3 (40 / 90)
    assert matched.tolist() == [[0, 0, 1, 1], [NEGATIVE] * 4]
    relative = relative_iou(iou, matched)
    assert relative[0].tolist() == pytest.approx([1.0, 0.5, 1.0, (40 / 90) / 0.8])
    assert relative[1].tolist() == [0.0] * 4
    # batched == per image
    alone = relative_iou(batch_iou(boxes[:1], anchors), match_ssd(batch_iou(boxes[:1], anchors), 0.3))
    assert torch.equal(alone[0], relative[0])


def test_hard_negative_mining_keeps_three_negatives_per_positive():
    torch.manual_seed(0)
    anchors = torch.cat([_ANCHORS, _ANCHORS + 40, _ANCHORS + 80])  # 12 anchors, the box matches anchor 0 only
    logits = torch.randn(1, 12, 3)
    deltas = torch.randn(1, 12, 4)
    losses = SSDCriterion(DeltaCoder(), cls_loss="softmax", box_loss="smooth_l1")(
        DenseOutput(logits, deltas), anchors, _one_box(label=0)
    )
    ce = F.cross_entropy(logits[0], torch.tensor([1] + [0] * 11), reduction="none")
    negatives = ce[1:].sort(descending=True).values[:3]  # 3:1, the highest-loss negatives
    assert losses["cls"].item() == pytest.approx((ce[0] + negatives.sum()).item(), rel=1e-6)
    target = DeltaCoder().encode(anchors[:1], torch.tensor([[0.0, 0.0, 10.0, 9.0]]))
    expected_box = F.smooth_l1_loss(deltas[0, :1], target, beta=1.0, reduction="sum")
    assert losses["box"].item() == pytest.approx(expected_box.item(), rel=1e-6)
    # an image without boxes has no positives, so no negatives are mined: zero loss
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    nothing = SSDCriterion(DeltaCoder(), cls_loss="softmax")(DenseOutput(logits, deltas), anchors, empty)
    assert nothing["cls"].item() == 0 and nothing["box"].item() == 0


def test_softmax_focal_counts_every_anchor():
    torch.manual_seed(1)
    logits, deltas = torch.randn(1, 4, 3), torch.zeros(1, 4, 4)
    losses = SSDCriterion(DeltaCoder(), cls_loss="softmax_focal", gamma=2.0)(
        DenseOutput(logits, deltas), _ANCHORS, _one_box(label=1)
    )
    p = logits[0].softmax(-1)[torch.arange(4), torch.tensor([2, 0, 0, 0])]
    assert losses["cls"].item() == pytest.approx((-((1 - p) ** 2) * p.log()).sum().item(), rel=1e-6)


def test_wrong_class_loss_for_the_head_is_a_clear_error():
    config = load_config("ssd_multihead", ["model.pretrained=none", "train.cls_loss=softmax"])
    model = build_model(config.model, 2, image_size=config.input.size)
    with pytest.raises(ValueError, match=r"GridSSD has a sigmoid head: loss.cls must be bce or focal"):
        build_criterion(config, model)
    with pytest.raises(ValueError, match="cls_loss must be one of"):
        SSDCriterion(DeltaCoder(), cls_loss="hinge")


# ---- data and training -------------------------------------------------------------------------


def test_one_class_view_keeps_boxes_and_names_one_class():
    records = [Record("a.jpg", 10, 10, [[0, 0, 5, 5], [1, 1, 4, 4]], [2, 0]), Record("b.jpg", 10, 10)]
    merged = DetectionSet(records, ["a", "b", "c"]).one_class("thing")
    assert merged.class_names == ["thing"] and merged.records[0].labels.tolist() == [0, 0]
    assert merged.records[0].boxes.tolist() == records[0].boxes.tolist() and len(merged.records[1].boxes) == 0


@pytest.mark.parametrize("kind", SSD_KINDS)
def test_a_few_steps_on_one_batch_lower_the_loss(digits, tmp_path, kind):
    # the smallest inputs each network is built for: the course's 4x4 grid needs 256 (C5 8x8),
    # SSD300's valid 3x3 extra layers 300; the others shrink
    size = {"toyssd": 64, "ssdlite": 96}.get(kind, load_config(kind).input.size[0])
    overrides = [f"data.path={digits}", f"output={tmp_path}", "model.pretrained=none", "model.dropout=0.0",
                 f"train.image_size=[{size}, {size}]", "train.batch_size=4", "model.frozen_bn=false",
                 "train.augment=none", "train.precompute=false"]  # fmt: skip
    run = Trainer(load_config(kind, overrides))
    first, last = fit_one_batch(run)
    assert last < 0.8 * first


def test_one_class_toy_ssd_trains_evaluates_and_predicts_through_the_cli(digits, tmp_path):
    import json

    from typer.testing import CliRunner

    from multibox import load
    from multibox.cli import app

    run = tmp_path / "run"
    args = [f"data.path={digits}", f"output={run}", "train.image_size=[64, 64]", "train.batch_size=4",
            "train.epochs=1", "train.warmup_steps=1"]  # fmt: skip
    result = CliRunner().invoke(app, ["train", "--preset", "toyssd", *args])
    assert result.exit_code == 0, result.output
    assert "final: AP" in result.output
    weights = run / "best.pt"
    assert load(weights).class_names == ["digit"]
    # the checkpoint's data.one_class applies to the ten-class dataset it is evaluated on
    result = CliRunner().invoke(app, ["eval", "--weights", str(weights), "--data", str(digits), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics["per_class_AP"]) == ["digit"] and 0 <= metrics["AP50"] <= 1
    image = next((digits / "JPEGImages").glob("val_*.jpg"))
    result = CliRunner().invoke(app, ["predict", "--weights", str(weights), str(image), "--out", str(tmp_path / "p"),
                                      "--conf", "0"])  # fmt: skip
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert found and {d["category_id"] for d in found} == {1}


def test_grid_shapes_train_and_come_back_with_the_checkpoint(digits, tmp_path):
    """A grid SSD trained with ``model.grid_zooms`` / ``model.grid_ratios`` / ``model.grid_from``
    is rebuilt by ``multibox.load`` with the same anchors and head (the checkpoint's config carries them)."""
    from multibox import load
    from multibox.anchors import grid_anchors, grid_ratios
    from multibox.engine import train

    overrides = [f"data.path={digits}", f"output={tmp_path}", "model.pretrained=none", "train.batch_size=4",
                 "train.epochs=1", "train.max_steps=2", "model.grid_zooms=[0.5, 0.9]",
                 "model.grid_ratios=[1.0, 2.5]", "model.grid_from=p4"]  # fmt: skip
    train(load_config("ssd_grid", overrides), progress=False)
    detector = load(tmp_path / "last.pt")  # the P4 head's lateral convs load only into a P4 head
    expected = grid_anchors((4,), (0.5, 0.9), grid_ratios([1.0, 2.5])) * 256
    assert torch.equal(detector.model.anchors(), expected) and detector.model.outs[0].k == 4
    assert detector.model.grid_from == "p4"
