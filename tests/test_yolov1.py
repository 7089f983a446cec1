"""YOLOv1: the loss by hand on a 2 x 2 grid, the responsible box, decoding, an empty image."""

import math

import pytest
import torch

from multibox.criterion_yolov1 import YOLOv1Criterion, responsible
from multibox.models.yolov1 import YOLOv1, YOLOv1Coder, cell_boxes
from multibox.structures import DenseOutput

SIDE, GRID, BOXES, CLASSES = 64, 2, 2, 2


def _criterion() -> YOLOv1Criterion:
    return YOLOv1Criterion(YOLOv1Coder((SIDE, SIDE)), GRID, BOXES)  # the paper's 5, 1, 0.5, 1


def _zeros() -> DenseOutput:
    """All outputs 0: every sigmoid 0.5, so each cell's boxes are the 16 x 16 box at its centre."""
    anchors = GRID * GRID * BOXES
    return DenseOutput(torch.zeros(1, anchors, 1 + CLASSES), torch.zeros(1, anchors, 4))


def test_cells_in_output_order():
    cells = cell_boxes(SIDE, GRID, BOXES)
    assert (
        cells.tolist() == [[0, 0, 32, 32]] * 2 + [[32, 0, 64, 32]] * 2 + [[0, 32, 32, 64]] * 2 + [[32, 32, 64, 64]] * 2
    )


def test_loss_by_hand_on_a_two_by_two_grid():
    # one object centred at (16, 24), in cell (0, 0); both of its boxes predict [8, 8, 24, 24]: a tie, the first
    target = {"boxes": torch.tensor([[8.0, 8.0, 24.0, 40.0]]), "labels": torch.tensor([1])}
    losses = _criterion()(_zeros(), cell_boxes(SIDE, GRID, BOXES), [target])
    # box: x 0.5 vs 0.5, y 0.5 vs 24/32, sqrt(w) 0.5 vs sqrt(16/64), sqrt(h) 0.5 vs sqrt(32/64)
    box = (0.5 - 0.75) ** 2 + (0.5 - math.sqrt(0.5)) ** 2
    # obj: the responsible box's confidence 0.5 against its IoU 256/512; the 7 others 0.5 * 0.5^2
    obj = (0.5 - 0.5) ** 2 + 0.5 * 7 * 0.25
    cls = (0.5 - 0) ** 2 + (0.5 - 1) ** 2
    assert losses["box"].item() == pytest.approx(box, abs=1e-6)
    assert losses["obj"].item() == pytest.approx(obj, abs=1e-6)
    assert losses["cls"].item() == pytest.approx(cls, abs=1e-6)
    assert losses["total"].item() == pytest.approx(5 * box + obj + cls, abs=1e-6)


def test_the_responsible_box_is_the_one_that_overlaps_most_and_a_cell_answers_for_its_largest_object():
    cells = cell_boxes(SIDE, GRID, BOXES)
    predicted = cells.clone()
    predicted[2] = torch.tensor([40.0, 0.0, 50.0, 10.0])  # cell (0, 1), box 0: far from the object
    predicted[3] = torch.tensor([34.0, 2.0, 60.0, 30.0])  # box 1: on it
    boxes = torch.tensor([[36.0, 4.0, 58.0, 28.0], [40.0, 10.0, 44.0, 14.0], [0.0, 40.0, 20.0, 60.0]])
    objects, chosen = responsible(boxes, cells, predicted, GRID, BOXES)
    # the small object shares cell (0, 1) with the large one: only the large one is answered for
    assert sorted(zip(objects.tolist(), chosen.tolist(), strict=True)) == [(0, 3), (2, 4)]
    centre_on_an_edge = torch.tensor([[20.0, 20.0, 44.0, 44.0]])  # centre (32, 32): cell (1, 1)
    _, chosen = responsible(centre_on_an_edge, cells, cells, GRID, BOXES)
    assert chosen.tolist() == [6]


def test_decoding_inverts_encoding():
    coder = YOLOv1Coder((SIDE, SIDE))
    cells = cell_boxes(SIDE, GRID, BOXES)
    boxes = torch.tensor([[4.0, 6.0, 20.0, 30.0], [1.0, 1.0, 63.0, 40.0], [33.0, 40.0, 40.0, 63.0]])
    index = torch.tensor([0, 1, 6])  # each box's centre lies in that anchor's cell
    decoded = coder.decode(cells, coder.encode(cells, boxes, index), index)
    assert torch.allclose(decoded, boxes, atol=1e-4)


def test_an_empty_image_only_lowers_the_confidences():
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = _criterion()(_zeros(), cell_boxes(SIDE, GRID, BOXES), [target])
    assert losses["box"].item() == losses["cls"].item() == 0
    assert losses["obj"].item() == pytest.approx(0.5 * 8 * 0.25)


def test_the_network_gives_one_class_distribution_a_cell():
    model = YOLOv1(3, (64, 64), grid=2, boxes=2, backbone="resnet18", pretrained="none").eval()
    output = model(torch.rand(2, 3, 64, 64))
    assert output.cls_logits.shape == (2, 8, 4) and output.box_deltas.shape == (2, 8, 4)
    classes = output.cls_logits[..., 1:].view(2, 4, 2, 3)
    assert torch.equal(classes[:, :, 0], classes[:, :, 1])  # the two boxes of a cell share its classes
    assert not torch.equal(output.cls_logits[:, 0, 0], output.cls_logits[:, 1, 0])  # a confidence each
    with pytest.raises(ValueError, match="built for 64x64 inputs"):
        model(torch.rand(1, 3, 96, 96))
