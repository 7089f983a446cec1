"""The YOLOv3-style detector: its coder, anchors, assignment, objectness scores, criterion and preset."""

import numpy as np
import pytest
import torch
from data_helpers import fit_one_batch
from torchvision.ops import complete_box_iou_loss

from multibox.anchor_doctor import fit_yolo_anchors
from multibox.anchors import kmeans_anchors, yolo_anchors
from multibox.coding import YOLOCoder
from multibox.config import config_from_dict, load_config
from multibox.criterion import YOLOCriterion
from multibox.data import load_dataset
from multibox.data.transforms import mosaic
from multibox.engine import Trainer
from multibox.kinds import build_criterion, build_model
from multibox.matching import NEGATIVE, match_yolo
from multibox.models import YOLOv3
from multibox.postprocess import postprocess
from multibox.structures import DenseOutput

# Two levels of a 32x32 input: strides 8 (4x4 cells) and 16 (2x2), shapes 8x8 / 16x32 and 24x24
STRIDES = (8, 16)
SHAPES = [[(8, 8), (16, 32)], [(24, 24)]]


def _anchors():
    anchors = yolo_anchors(32, STRIDES, SHAPES)
    strides = torch.tensor([8.0] * 32 + [16.0] * 4)
    return anchors, strides


def _index(level: int, row: int, col: int, shape: int) -> int:
    """Position of an anchor in the level, row, column, shape order."""
    return [0, 32][level] + (row * [4, 2][level] + col) * len(SHAPES[level]) + shape


def test_yolo_anchors_sit_at_cell_centres_in_level_row_column_shape_order():
    anchors, _ = _anchors()
    assert anchors.shape == (36, 4)
    assert anchors[_index(0, 0, 0, 0)].tolist() == [0, 0, 8, 8]
    assert anchors[_index(0, 0, 0, 1)].tolist() == [-4, -12, 12, 20]  # 16 wide, 32 high around (4, 4)
    assert anchors[_index(0, 1, 2, 0)].tolist() == [16, 8, 24, 16]  # row 1, column 2: centre (20, 12)
    assert anchors[_index(1, 1, 0, 0)].tolist() == [-4, 12, 20, 36]  # centre (8, 24)
    with pytest.raises(ValueError, match="one list per level"):
        yolo_anchors(32, STRIDES, SHAPES[:1])


def test_yolo_coder_decodes_by_hand_and_round_trips():
    anchors = torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 40.0, 24.0]])
    coder = YOLOCoder(torch.tensor([8.0, 16.0]))
    # sigmoid(0) = 0.5: the anchor itself; sigmoid(+-inf): a cell away, 0 or 4 times the size
    # (centre (4, 4) moves to (12, -4); width 4 x 8, height 0)
    assert torch.allclose(coder.decode(anchors, torch.zeros(2, 4)), anchors)
    big = torch.tensor([[30.0, -30.0, 30.0, -30.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(coder.decode(anchors, big)[0], torch.tensor([-4.0, -4.0, 28.0, -4.0]), atol=1e-4)
    boxes = torch.tensor([[3.0, 1.0, 9.0, 12.0], [10.0, 6.0, 50.0, 30.0]])
    assert torch.allclose(coder.decode(anchors, coder.encode(anchors, boxes)), boxes, atol=1e-4)
    # post-processing decodes candidates only, by anchor index
    index = torch.tensor([[1, 0]])
    picked = coder.decode(anchors, coder.encode(anchors, boxes.flip(0)[None], anchor_index=index), anchor_index=index)
    assert torch.allclose(picked[0], boxes.flip(0), atol=1e-4)
    with pytest.raises(ValueError, match="built for 2 anchors"):
        coder.decode(anchors[:1], torch.zeros(1, 4))


def test_best_rule_takes_the_best_shape_in_the_centre_cell():
    anchors, strides = _anchors()
    # centre (13, 21): column 1, row 2 at stride 8; column 0, row 1 at stride 16. A 20x22 box is
    # closest in shape to the 24x24 anchor of the coarse level.
    boxes = torch.tensor([[3.0, 10.0, 23.0, 32.0]])
    matched = match_yolo(boxes, anchors, strides, rule="best")
    assert (matched == 0).nonzero().flatten().tolist() == [_index(1, 1, 0, 0)]
    assert (matched[matched != 0] == NEGATIVE).all()


def test_ratio_rule_adds_fitting_shapes_and_the_two_nearest_cells():
    anchors, strides = _anchors()
    # a 10x12 box centred at (13, 21): within 4x of every shape (8x8: 1.5, 16x32: 2.67, 24x24: 2.4)
    boxes = torch.tensor([[8.0, 15.0, 18.0, 27.0]])
    matched = match_yolo(boxes, anchors, strides, rule="ratio")
    # stride 8: centre cell row 2, column 1 (centre (12, 20)); the box's centre lies right of and
    # below that cell's centre, so the nearest neighbours are column 2 and row 3
    expected = [_index(0, r, c, s) for r, c in [(2, 1), (2, 2), (3, 1)] for s in (0, 1)]
    # stride 16: centre cell row 1, column 0 (centre (8, 24)): right of it, above it
    expected += [_index(1, r, c, 0) for r, c in [(1, 0), (1, 1), (0, 0)]]
    assert sorted((matched == 0).nonzero().flatten().tolist()) == sorted(expected)
    # a 2x32 box fits no shape within 4x; it keeps its best shape (8x8, shape IoU 16 / 112) in its
    # centre cell (row 2, column 1; its centre y 16 is on the cell's upper edge) and the neighbours
    thin = torch.tensor([[12.0, 0.0, 14.0, 32.0]])
    matched = match_yolo(thin, anchors, strides, rule="ratio", max_ratio=4.0)
    expected = [_index(0, r, c, 0) for r, c in [(2, 1), (2, 2), (1, 1)]]
    assert sorted((matched == 0).nonzero().flatten().tolist()) == sorted(expected)


def test_an_anchor_wanted_by_two_boxes_takes_the_closer_shape():
    anchors, strides = _anchors()
    boxes = torch.tensor([[0.5, 0.5, 7.5, 7.5], [1.0, 0.0, 7.0, 8.0]])  # 7x7 and 6x8 in cell (0, 0)
    matched = match_yolo(boxes, anchors, strides, rule="best")
    assert matched[_index(0, 0, 0, 0)] == 0  # 7x7 has shape IoU 49/64 with 8x8, 6x8 has 48/64
    assert (match_yolo(torch.zeros(0, 4), anchors, strides) == NEGATIVE).all()


def test_objectness_scores_multiply_objectness_and_class_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 4)
    anchors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]] * 2)
    coder = YOLOCoder(torch.full((6,), 8.0))
    found = postprocess(logits, torch.zeros(2, 6, 4), anchors, [(40, 40)] * 2, coder=coder,
                        activation="objectness", score_thresh=0.0, nms_iou=1.0)  # fmt: skip
    for image, det in enumerate(found):
        expected = (torch.sigmoid(logits[image, :, :1]) * torch.sigmoid(logits[image, :, 1:])).flatten()
        assert torch.allclose(det.scores, expected.sort(descending=True).values)
        assert len(det) == 18 and int(det.labels.max()) == 2


def _criterion(**kwargs):
    anchors, strides = _anchors()
    return anchors, YOLOCriterion(YOLOCoder(strides), [32, 4], balance=(), **kwargs)


def test_objectness_targets_are_the_iou_of_the_assigned_boxes_and_zero_elsewhere():
    anchors, criterion = _criterion(rule="best")
    box = torch.tensor([[0.5, 0.5, 7.5, 7.5]])  # best: the 8x8 anchor of cell (0, 0)
    targets = [{"boxes": box, "labels": torch.tensor([1])}]
    logits = torch.zeros(1, 36, 3)
    losses = criterion(DenseOutput(logits, torch.zeros(1, 36, 4)), anchors, targets)
    # the undeformed anchor predicts [0, 0, 8, 8]: IoU 49 / 64 with the box
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.zeros(()), torch.tensor(49 / 64))
    per_level = [(bce + 31 * np.log(2)) / 32, np.log(2)]  # a mean per level, each weighted 1 here
    assert losses["obj"].item() == pytest.approx(float(sum(per_level)), rel=1e-5)
    # 'one': YOLOv3's target 1 for the assigned anchor
    anchors, criterion = _criterion(rule="best", objectness="one")
    losses = criterion(DenseOutput(logits, torch.zeros(1, 36, 4)), anchors, targets)
    assert losses["obj"].item() == pytest.approx(2 * np.log(2), rel=1e-5)  # BCE(0, 1) = BCE(0, 0) = log 2
    # class BCE on the assigned anchor only: both columns at logit 0
    assert losses["cls"].item() == pytest.approx(np.log(2), rel=1e-5)


def test_box_loss_is_torchvisions_complete_iou_loss_of_the_decoded_boxes():
    torch.manual_seed(1)
    anchors, criterion = _criterion(rule="ratio")
    targets = [
        {"boxes": torch.tensor([[8.0, 15.0, 18.0, 27.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    deltas = torch.randn(2, 36, 4)
    losses = criterion(DenseOutput(torch.randn(2, 36, 3), deltas), anchors, targets)
    matched = criterion.match(anchors, targets)
    image, anchor = (matched >= 0).nonzero(as_tuple=True)
    assert (image == 0).all() and len(anchor) == 9
    predicted = criterion.coder.decode(anchors, deltas[image, anchor], anchor_index=anchor)
    reference = complete_box_iou_loss(predicted, targets[0]["boxes"].expand(len(anchor), 4), reduction="mean")
    assert losses["box"].item() == pytest.approx(reference.item(), rel=1e-4)
    total = 0.05 * losses["box"] + losses["obj"] + 0.5 * losses["cls"]
    assert losses["total"].item() == pytest.approx(total.item(), rel=1e-6)


def test_images_without_boxes_train_objectness_only():
    anchors, criterion = _criterion()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    logits = torch.zeros(1, 36, 3, requires_grad=True)
    losses = criterion(DenseOutput(logits, torch.zeros(1, 36, 4)), anchors, empty)
    assert losses["box"].item() == 0 and losses["cls"].item() == 0
    assert losses["obj"].item() == pytest.approx(2 * np.log(2), rel=1e-5)
    losses["total"].backward()
    assert logits.grad[..., 1:].abs().sum() == 0 and logits.grad[..., 0].abs().sum() > 0


def test_yolov3_outputs_line_up_with_anchors_and_start_at_its_priors():
    torch.manual_seed(0)
    model = YOLOv3(4, (128, 128), anchors=[(w, w) for w in range(8, 80, 8)], pretrained="none", width=8, spp=True)
    assert model.level_sizes() == [16 * 16 * 3, 8 * 8 * 3, 4 * 4 * 3]
    anchors = model.anchors((128, 128))
    assert anchors[0].tolist() == [0, 0, 8, 8] and anchors[-1].tolist() == [76, 76, 148, 148]
    assert model.coder.strides[:768].eq(8).all() and model.coder.strides[-48:].eq(32).all()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 128))
    assert out.cls_logits.shape == (2, 1008, 5) and out.box_deltas.shape == (2, 1008, 4)
    # every head starts at ~8 objects per image per level: objectness ~ 8 / cells
    objectness = torch.sigmoid(out.cls_logits[..., 0]).mean(dim=0)
    assert float(objectness[:768].mean()) == pytest.approx(8 / 256, rel=0.5)
    with pytest.raises(ValueError, match="9 anchor shapes"):
        YOLOv3(4, (128, 128), anchors=[(10, 10)] * 6, pretrained="none")


def test_yolov3_head_rows_follow_row_column_shape_order():
    torch.manual_seed(0)
    model = YOLOv3(2, (64, 64), pretrained="none", width=8).eval()
    head = model.heads[2][1]  # the stride-8 predictor (heads run from stride 32 down)
    captured = {}
    head.register_forward_hook(lambda module, inputs, output: captured.setdefault("y", output))
    out = model(torch.randn(1, 3, 64, 64))
    y = captured["y"]  # [1, 3 * 7, 8, 8]
    row, col, shape = 5, 2, 1
    expected = y[0, shape * 7 : (shape + 1) * 7, row, col]
    index = (row * 8 + col) * 3 + shape
    assert torch.equal(out.box_deltas[0, index], expected[:4])
    assert torch.equal(out.cls_logits[0, index], expected[4:])


def test_kmeans_anchors_of_the_digits_come_from_their_boxes(digits):
    data, _ = load_dataset(digits, "train")
    shapes = fit_yolo_anchors(data, (128, 128))
    assert len(shapes) == 9 and all(w > 0 and h > 0 for w, h in shapes)
    boxes = torch.cat([torch.from_numpy(r.boxes) for r in data.records]).double() * 2  # 64 -> 128
    expected = kmeans_anchors(boxes[:, 2:] - boxes[:, :2], 9)
    assert np.allclose(shapes, expected.numpy(), atol=0.051)


def test_mosaic_keeps_the_scale_of_the_objects():
    image = np.zeros((64, 64, 3), np.uint8)
    image[20:36, 24:32] = 255
    sample = (image, np.array([[24.0, 20.0, 32.0, 36.0]], np.float32), np.array([0]))
    whole = 0
    for seed in range(20):
        out = mosaic([sample] * 4, 64, np.random.default_rng(seed))
        assert out[0].shape == (64, 64, 3)
        wh = out[1][:, 2:] - out[1][:, :2]
        assert (wh <= [8, 16]).all()  # at most the 8x16 object, cut by the window
        whole += int((wh == [8, 16]).all(axis=1).sum())
    assert whole >= 10


def test_preset_trains_and_its_anchors_are_fitted_and_kept(digits, tmp_path):
    overrides = [f"data.path={digits}", f"output={tmp_path}", "model.pretrained=none", "train.image_size=[64, 64]",
                 "train.batch_size=4", "model.frozen_bn=false", "train.augment=none"]  # fmt: skip
    config = load_config("yolov3", overrides)
    assert config.model.yolo.anchors == ()
    run = Trainer(config)
    assert len(config.model.yolo.anchors) == 9  # fitted from the boxes, saved with the run's config
    rebuilt = build_model(config_from_dict(config.to_dict()).model, 10, image_size=(64, 64))
    assert torch.equal(rebuilt.anchors(), run.model.anchors())
    assert isinstance(build_criterion(config, run.model), YOLOCriterion)
    first, last = fit_one_batch(run)
    assert last < 0.8 * first


def test_a_trained_yolov3_loads_with_its_fitted_anchors_and_predicts(digits, tmp_path):
    from multibox import load
    from multibox.engine import train

    overrides = [f"data.path={digits}", f"output={tmp_path}", "model.pretrained=none", "train.image_size=[64, 64]",
                 "train.batch_size=4", "train.epochs=1", "train.warmup_steps=1"]  # fmt: skip
    config = load_config("yolov3", overrides)
    metrics = train(config, progress=False)
    assert 0 <= metrics["AP50"] <= 1
    saved = load_config(tmp_path / "config.yaml")
    assert len(saved.model.yolo.anchors) == 9 and saved.model.yolo.anchors == config.model.yolo.anchors
    detector = load(tmp_path / "best.pt")
    image = next((digits / "JPEGImages").glob("val_*.jpg"))
    found = detector.predict(image, conf=0.0)
    assert len(found) > 0 and (found.scores <= 1).all() and len(found.names) == 10
