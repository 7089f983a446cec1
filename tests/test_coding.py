import math

import pytest
import torch
from conftest import random_boxes
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder

from multibox.anchors import grid_anchors, grid_cell_sizes, pyramid_anchors
from multibox.coding import DeltaCoder, TanhCoder


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_delta_coder_equals_torchvision_box_coder(weights):
    anchors, boxes = random_boxes(50), random_boxes(50)
    ours, theirs = DeltaCoder(weights), BoxCoder(weights)
    torch.testing.assert_close(ours.encode(anchors, boxes), theirs.encode_single(boxes, anchors))
    deltas = torch.randn(50, 4) * 2
    # bit for bit: both run the same elementwise ops in the same order on contiguous tensors of the
    # same length, so even exp takes the same vector body / scalar tail split on any instruction set
    assert torch.equal(ours.decode(anchors, deltas), theirs.decode_single(deltas, anchors))


def test_delta_coder_hand_computed():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
    box = torch.tensor([[2.0, 4.0, 22.0, 24.0]])  # centre (12, 14), size 20 x 20
    expected = torch.tensor([[0.7, 0.2, math.log(2.0), 0.0]])
    torch.testing.assert_close(DeltaCoder().encode(anchor, box), expected)
    torch.testing.assert_close(DeltaCoder((10, 10, 5, 5)).encode(anchor, box), expected * torch.tensor([10, 10, 5, 5]))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), ssd=st.booleans())
def test_decode_inverts_encode(seed, ssd):
    gen = torch.Generator().manual_seed(seed)
    # sides 5..155 px: size ratios stay below exp(clamp) = 62.5, the coder's reach
    anchors, boxes = random_boxes(30, 300, 5, generator=gen), random_boxes(30, 300, 5, generator=gen)
    coder = DeltaCoder((10, 10, 5, 5) if ssd else (1, 1, 1, 1))
    torch.testing.assert_close(coder.decode(anchors, coder.encode(anchors, boxes)), boxes, rtol=1e-5, atol=1e-3)


def test_decode_clamps_huge_sizes():
    boxes = DeltaCoder().decode(torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([[0.0, 0.0, 1e4, 1e4]]))
    assert torch.isfinite(boxes).all()
    torch.testing.assert_close(boxes[0, 2] - boxes[0, 0], torch.tensor(1000.0))


def test_batched_and_indexed_decoding_agree():
    anchors = pyramid_anchors(64, strides=(8, 16), sizes=(16, 32))
    deltas = torch.randn(3, len(anchors), 4)
    coder = DeltaCoder()
    full = coder.decode(anchors, deltas)  # anchors [A, 4] broadcast over the batch
    for i in range(3):
        torch.testing.assert_close(full[i], coder.decode(anchors, deltas[i]))
    index = torch.tensor([[5, 0, 7], [2, 2, 9], [1, 3, 4]])
    picked = deltas.gather(1, index[..., None].expand(-1, -1, 4))
    torch.testing.assert_close(
        coder.decode(anchors, picked, anchor_index=index), full.gather(1, index[..., None].expand(-1, -1, 4))
    )


def test_encode_rejects_degenerate_and_non_finite_boxes():
    anchors = random_boxes(3)
    boxes = random_boxes(3)
    boxes[2, 2] = boxes[2, 0]  # zero width
    with pytest.raises(ValueError, match="boxes row 2 has zero or negative width"):
        DeltaCoder().encode(anchors, boxes)
    anchors[1, 0] = float("nan")
    with pytest.raises(ValueError, match="anchors row 1 has a NaN"):
        DeltaCoder().encode(anchors, random_boxes(3))
    with pytest.raises(ValueError, match="weights"):
        DeltaCoder((1, 1, 1))


def _fastai_actn_to_bb(actn, anchors_cxcywh, grid_sizes):
    """The course's actn_to_bb (centre, size order as in the course: (y, x, h, w) -> here (x, y, w, h))."""
    actn_bbs = torch.tanh(actn)
    actn_centers = (actn_bbs[:, :2] / 2 * grid_sizes) + anchors_cxcywh[:, :2]
    actn_hw = (actn_bbs[:, 2:] / 2 + 1) * anchors_cxcywh[:, 2:]
    return torch.cat((actn_centers - actn_hw / 2, actn_centers + actn_hw / 2), dim=1)


def test_tanh_coder_equals_the_course_formula_and_stays_in_reach():
    anchors = grid_anchors()
    cells = grid_cell_sizes()
    coder = TanhCoder(cells)
    actn = torch.randn(len(anchors), 4) * 3
    cxcywh = torch.cat(((anchors[:, :2] + anchors[:, 2:]) / 2, anchors[:, 2:] - anchors[:, :2]), dim=1)
    decoded = coder.decode(anchors, actn)
    torch.testing.assert_close(decoded, _fastai_actn_to_bb(actn, cxcywh, cells[:, None]))
    extreme = coder.decode(anchors, torch.full((len(anchors), 4), 50.0))
    moved = (extreme[:, :2] + extreme[:, 2:]) / 2 - cxcywh[:, :2]
    assert (moved <= cells[:, None] / 2 + 1e-6).all()
    scale = (extreme[:, 2:] - extreme[:, :2]) / cxcywh[:, 2:]
    torch.testing.assert_close(scale, torch.full_like(scale, 1.5))


def test_tanh_coder_round_trip_within_reach_and_clamps_beyond():
    anchors = grid_anchors()
    coder = TanhCoder(grid_cell_sizes())
    targets = coder.decode(anchors, torch.randn(len(anchors), 4))  # reachable by construction
    torch.testing.assert_close(coder.decode(anchors, coder.encode(anchors, targets)), targets, rtol=1e-4, atol=1e-5)
    far = anchors + 5.0  # far beyond half a cell
    assert torch.isfinite(coder.encode(anchors, far)).all()
    idx = torch.tensor([3, 100])
    torch.testing.assert_close(
        coder.encode(anchors, targets[idx], anchor_index=idx), coder.encode(anchors, targets)[idx]
    )
    with pytest.raises(ValueError, match="built for 189 anchors"):
        coder.decode(anchors[:10], torch.zeros(10, 4))
