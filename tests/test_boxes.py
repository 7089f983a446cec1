import math

import pytest
import torch
import torchvision.ops as tvops
from conftest import random_boxes

from multibox.boxes import (
    box_area,
    box_convert,
    box_iou,
    box_iou_numpy,
    check_boxes,
    clip_boxes,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
)

PAIRWISE = [
    (box_iou, tvops.box_iou),
    (generalized_box_iou, tvops.generalized_box_iou),
    (distance_box_iou, tvops.distance_box_iou),
    (complete_box_iou, tvops.complete_box_iou),
]


@pytest.mark.parametrize("ours,theirs", PAIRWISE)
def test_pairwise_matches_torchvision(ours, theirs):
    a, b = random_boxes(13), random_boxes(7)
    b[0] = a[0]  # identical pair
    b[1] = torch.tensor([500.0, 500.0, 510.0, 520.0])  # disjoint from everything
    out = ours(a, b)
    assert out.shape == (13, 7)
    torch.testing.assert_close(out, theirs(a, b), rtol=1e-5, atol=1e-6)


def test_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 4.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    # overlap 1 over union 7; touching edge; identical
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0, 1.0]]))
    # GIoU of the touching pair: enclosing 4x2 = 8, union 8 -> 0 - 0 = 0
    assert generalized_box_iou(a, b)[0, 1].item() == pytest.approx(0.0)
    # DIoU of the first pair: centres (1,1),(2,2): d^2 = 2; enclosing diagonal^2 = 18
    assert distance_box_iou(a, b)[0, 0].item() == pytest.approx(1 / 7 - 2 / 18, abs=1e-6)


def test_degenerate_boxes_give_zero_not_nan():
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    assert box_iou(point, point).item() == 0.0
    assert torch.isfinite(generalized_box_iou(point, point)).all()


@pytest.mark.parametrize("fn", [f for f, _ in PAIRWISE])
def test_empty_inputs(fn):
    assert fn(torch.zeros(0, 4), random_boxes(3)).shape == (0, 3)
    assert fn(random_boxes(2), torch.zeros(0, 4)).shape == (2, 0)


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_box_convert_round_trip_and_torchvision(fmt):
    boxes = random_boxes(20)
    converted = box_convert(boxes, "xyxy", fmt)
    torch.testing.assert_close(converted, tvops.box_convert(boxes, "xyxy", fmt))
    torch.testing.assert_close(box_convert(converted, fmt, "xyxy"), boxes)
    torch.testing.assert_close(
        box_convert(converted, fmt, "xyxy" if fmt == "xywh" else "xywh"),
        tvops.box_convert(converted, fmt, "xyxy" if fmt == "xywh" else "xywh"),
    )


def test_box_convert_rejects_unknown_format():
    with pytest.raises(ValueError, match="in_fmt"):
        box_convert(random_boxes(2), "yxyx", "xyxy")


def test_area_and_clip():
    boxes = torch.tensor([[-5.0, 2.0, 20.0, 8.0], [1.0, 1.0, 3.0, 4.0]])
    torch.testing.assert_close(box_area(boxes), torch.tensor([150.0, 6.0]))
    clipped = clip_boxes(boxes, (6, 10))  # (height, width)
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 2.0, 10.0, 6.0], [1.0, 1.0, 3.0, 4.0]]))
    torch.testing.assert_close(clipped, tvops.clip_boxes_to_image(boxes, (6, 10)))


@pytest.mark.parametrize(
    "bad,row,message",
    [
        (torch.tensor([[0.0, 0, 1, 1], [5.0, 0, 2, 1]]), 1, "x2 < x1"),
        (torch.tensor([[0.0, 0, 1, 1], [0.0, 0, 1, 1], [0.0, math.nan, 1, 1]]), 2, "NaN or infinite"),
        (torch.tensor([[0.0, 0, math.inf, 1]]), 0, "NaN or infinite"),
    ],
)
def test_bad_boxes_name_argument_and_row(bad, row, message):
    with pytest.raises(ValueError, match=rf"boxes2 row {row} has .*{message}"):
        box_iou(random_boxes(2), bad)


def test_wrong_shape_is_a_value_error():
    with pytest.raises(ValueError, match=r"boxes1 must have shape \[N, 4\]"):
        box_iou(torch.zeros(3, 5), random_boxes(2))
    with pytest.raises(ValueError, match="floating point"):
        check_boxes(torch.zeros(3, 4, dtype=torch.long))


def test_batched_row_is_named_per_image():
    boxes = torch.zeros(2, 3, 4)
    boxes[..., 2:] = 1
    boxes[1, 2, 0] = 7
    with pytest.raises(ValueError, match=r"row \[1, 2\]"):
        check_boxes(boxes, "targets")


def test_iou_family_gradients_are_finite():
    a = random_boxes(5).requires_grad_()
    b = random_boxes(5)
    for fn in (generalized_box_iou, distance_box_iou, complete_box_iou):
        fn(a, b).sum().backward()
        assert torch.isfinite(a.grad).all()
        a.grad = None


def test_numpy_one_against_many_equals_box_iou():
    a, b = random_boxes(1), random_boxes(9)
    b[0] = a[0]
    expected = box_iou(a, b)[0].double().numpy()
    assert abs(box_iou_numpy(a[0].double().numpy(), b.double().numpy()) - expected).max() < 1e-6
    point = torch.tensor([2.0, 2.0, 2.0, 2.0]).numpy()
    assert box_iou_numpy(point, point[None]).tolist() == [0.0]
