import pytest
import torch
from conftest import random_boxes
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import Matcher, SSDMatcher

from multibox.anchors import pyramid_anchors
from multibox.boxes import box_iou
from multibox.matching import IGNORE, NEGATIVE, batch_iou, match, match_boxes, match_ssd, pad_batch

N, I = NEGATIVE, IGNORE


def test_sentinels_are_torchvision_values():
    assert (NEGATIVE, IGNORE) == (Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS) == (-1, -2)


def test_hand_computed_matrix():
    iou = torch.tensor(
        [
            # a0    a1    a2    a3    a4    a5
            [0.70, 0.45, 0.10, 0.00, 0.30, 0.30],  # box 0: a0 positive, a1 in between
            [0.70, 0.20, 0.55, 0.00, 0.00, 0.00],  # box 1: ties box 0 on a0 (box 0 wins), owns a2
            [0.00, 0.00, 0.00, 0.00, 0.35, 0.35],  # box 2: best IoU 0.35 < every threshold, on two anchors
        ]
    )
    assert match(iou, 0.5, 0.4, allow_low_quality=False).tolist() == [0, I, 1, N, N, N]
    # low quality: box 2's two tied best anchors are forced; box 0 and 1 already have theirs
    assert match(iou, 0.5, 0.4, allow_low_quality=True).tolist() == [0, I, 1, N, 2, 2]
    assert match(iou, 0.5, 0.4).tolist() == match(iou.clone(), 0.5, 0.4).tolist()  # pure: input untouched
    # thresholds are inclusive at pos_iou, exclusive at neg_iou
    edge = torch.tensor([[0.5, 0.4, 0.39]])
    assert match(edge, 0.5, 0.4, allow_low_quality=False).tolist() == [0, I, N]


def test_low_quality_forces_anchor_to_its_own_best_box_like_torchvision():
    # a1 is box 1's best anchor but box 0 overlaps a1 more: a1 goes to box 0 (torchvision's rule)
    iou = torch.tensor([[0.9, 0.3], [0.0, 0.2]])
    assert match(iou).tolist() == [0, 0]
    assert Matcher(0.5, 0.4, True)(iou).tolist() == [0, 0]


def test_box_overlapping_nothing_forces_nothing():
    iou = torch.tensor([[0.6, 0.1, 0.0], [0.0, 0.0, 0.0]])
    assert match(iou).tolist() == [0, N, N]


def test_empty_image_is_all_negative():
    assert match(torch.zeros(0, 5)).tolist() == [N] * 5
    assert match_ssd(torch.zeros(0, 5)).tolist() == [N] * 5
    out = match_boxes([torch.zeros(0, 4), random_boxes(2)], pyramid_anchors(64, strides=(16,), sizes=(16,)))
    assert (out[0] == N).all() and out.shape[0] == 2


def _realistic(num_boxes, seed):
    gen = torch.Generator().manual_seed(seed)
    anchors = pyramid_anchors((128, 128), strides=(8, 16, 32), sizes=(16, 32, 64))
    xy = torch.rand(num_boxes, 2, generator=gen) * 100
    wh = 8 + torch.rand(num_boxes, 2, generator=gen) * 60
    boxes = torch.cat((xy, (xy + wh).clamp(max=128)), dim=1)
    return anchors, boxes


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("low_quality", [True, False])
def test_match_equals_torchvision_matcher(seed, low_quality):
    anchors, boxes = _realistic(12, seed)
    iou = box_iou(boxes, anchors)
    assert (iou.max(dim=1).values > 0).all()  # torchvision differs only for boxes overlapping nothing
    expected = Matcher(0.5, 0.4, allow_low_quality_matches=low_quality)(iou)
    assert torch.equal(match(iou, 0.5, 0.4, allow_low_quality=low_quality), expected)


def test_match_ssd_equals_torchvision_ssd_matcher():
    compared = 0
    for seed in range(20):
        anchors, boxes = _realistic(6, seed)
        iou = box_iou(boxes, anchors)
        if len(set(iou.argmax(dim=1).tolist())) < 6:
            continue  # two boxes share a best anchor: torchvision leaves the winner to scatter order
        assert torch.equal(match_ssd(iou, 0.5), SSDMatcher(0.5)(iou)), seed
        compared += 1
    assert compared >= 5


def test_fastai_map_to_ground_truth_case():
    # 2 objects, 5 anchors. Object 1's best anchor is a3 (0.3), below the 0.4 threshold: forced.
    # Object 0's best is a1 (0.6); a2 is above the threshold for object 0 (0.45) and goes to it.
    overlaps = torch.tensor(
        [
            [0.10, 0.60, 0.45, 0.20, 0.00],
            [0.00, 0.10, 0.25, 0.30, 0.05],
        ]
    )
    assert match_ssd(overlaps, threshold=0.4).tolist() == [N, 0, 0, 1, N]


def test_match_ssd_later_box_wins_a_shared_best_anchor():
    overlaps = torch.tensor([[0.9, 0.2], [0.8, 0.1]])  # both boxes' best anchor is a0
    assert match_ssd(overlaps).tolist() == [1, N]


def test_batched_equals_one_image_at_a_time():
    anchors = pyramid_anchors((96, 96), strides=(8, 16), sizes=(16, 32))
    boxes = [random_boxes(3, 96), torch.zeros(0, 4), random_boxes(7, 96), random_boxes(1, 96)]
    iou = batch_iou(boxes, anchors)
    assert iou.shape == (4, 7, len(anchors))
    for fn in (match, match_ssd):
        batched = fn(iou)
        for i, b in enumerate(boxes):
            single = fn(box_iou(b, anchors)) if len(b) else fn(torch.zeros(0, len(anchors)))
            assert torch.equal(batched[i], single), (fn.__name__, i)
    assert torch.equal(match_boxes(boxes, anchors), match(iou))
    assert torch.equal(match_boxes(boxes, anchors, 0.6, 0.3, False), match(iou, 0.6, 0.3, False))


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 11), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    duplicate=st.booleans(),
)
def test_match_boxes_equals_match_of_the_iou_matrix(counts, seed, duplicate):
    gen = torch.Generator().manual_seed(seed)
    anchors = pyramid_anchors((64, 64), strides=(8, 16), sizes=(12, 24))
    boxes = []
    for c in counts:
        xy = (torch.rand(c, 2, generator=gen) * 56).round()
        b = torch.cat((xy, xy + 1 + (torch.rand(c, 2, generator=gen) * 40).round()), dim=1)
        if duplicate and c > 1:
            b[-1] = b[0]  # exact ties between two boxes
        boxes.append(b)
    assert torch.equal(match_boxes(boxes, anchors), match(batch_iou(boxes, anchors)))


def test_pad_batch():
    padded, valid = pad_batch([torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)], fill=-5)
    assert padded.tolist() == [[1, 2], [-5, -5]] and valid.tolist() == [[True, True], [False, False]]
    padded, valid = pad_batch([torch.zeros(0, 4)])
    assert padded.shape == (1, 1, 4) and not valid.any()


def test_bad_inputs():
    with pytest.raises(ValueError, match="neg_iou"):
        match(torch.rand(2, 3), 0.4, 0.5)
    with pytest.raises(ValueError, match=r"iou must have shape"):
        match(torch.rand(3))
    anchors = pyramid_anchors(32, strides=(16,), sizes=(16,))
    bad = torch.tensor([[0.0, 0.0, 4.0, 4.0], [9.0, 2.0, 3.0, 5.0]])
    with pytest.raises(ValueError, match=r"boxes\[1\] row 1 has x2 < x1"):
        match_boxes([random_boxes(2), bad], anchors)
    with pytest.raises(ValueError, match=r"boxes\[0\] must have shape \[G, 4\]"):
        batch_iou([torch.zeros(4)], anchors)


@pytest.mark.parametrize("block_elements", [1, 64, 1000])
def test_match_boxes_blocks_of_any_size_give_the_same_matches(monkeypatch, block_elements):
    import multibox.matching as matching

    monkeypatch.setattr(matching, "_BLOCK_ELEMENTS", block_elements)
    anchors = pyramid_anchors((64, 64), strides=(8, 16), sizes=(12, 24))
    gen = torch.Generator().manual_seed(block_elements)
    boxes = []
    for count in (4, 0, 9):
        xy = (torch.rand(count, 2, generator=gen) * 56).round()
        b = torch.cat((xy, xy + 1 + (torch.rand(count, 2, generator=gen) * 40).round()), dim=1)
        boxes.append(torch.cat((b, b[:1])) if count else b)  # a duplicate box: exact ties
    expected = match(batch_iou(boxes, anchors))
    assert (expected >= 0).any()
    assert torch.equal(match_boxes(boxes, anchors), expected)


def _reference_atss(boxes, anchors, level_sizes, k):
    """ATSS written out box by box and level by level, as the paper's algorithm states it."""
    result = torch.full((len(anchors),), NEGATIVE)
    best = torch.full((len(anchors),), -1.0)
    iou = box_iou(boxes, anchors)
    for g, box in enumerate(boxes):
        centre = (box[:2] + box[2:]) / 2
        candidates, start = [], 0
        for size in level_sizes:
            level = anchors[start : start + size]
            distance = (((level[:, :2] + level[:, 2:]) / 2 - centre) ** 2).sum(dim=1).sqrt()
            candidates += (distance.argsort(stable=True)[: min(k, size)] + start).tolist()
            start += size
        values = iou[g, candidates]
        threshold = float(values.mean() + values.std())
        for anchor in candidates:
            c = (anchors[anchor, :2] + anchors[anchor, 2:]) / 2
            inside = bool((c - box[:2]).min() > 0.01 and (box[2:] - c).min() > 0.01)
            if iou[g, anchor] >= threshold and inside and iou[g, anchor] > best[anchor]:
                best[anchor], result[anchor] = iou[g, anchor], g
    return result


def test_atss_takes_each_box_threshold_from_its_nearest_anchors():
    from multibox.anchors import pyramid_anchors, pyramid_grid_sizes
    from multibox.matching import match_atss

    # two levels: three 10 px anchors, two 20 px ones; one box 10 px wide, centre (7, 5)
    anchors = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 0, 30, 10], [0, 0, 20, 20], [20, 20, 40, 40]])
    box = torch.tensor([[2.0, 0, 12, 10]])
    # k = 2 nearest per level: anchors 0, 1 (IoU 2/3, 7/13) and 3, 4 (1/4, 0); threshold mean + std
    # = 0.3638 + 0.2987 = 0.6625: anchor 0 alone, where IoU >= 0.5 would take anchors 0 and 1
    assert match_atss(box, anchors, [3, 2], k=2).tolist() == [0, NEGATIVE, NEGATIVE, NEGATIVE, NEGATIVE]
    assert match(box_iou(box, anchors), 0.5, 0.4, allow_low_quality=False).tolist()[:2] == [0, 0]
    # the anchor's centre must lie inside the box: the same box moved right leaves anchor 0 outside
    assert match_atss(box + torch.tensor([4.0, 0, 4, 0]), anchors, [3, 2], k=2)[0] != 0
    assert match_atss(torch.zeros((0, 4)), anchors, [3, 2]).tolist() == [NEGATIVE] * 5
    gen = torch.Generator().manual_seed(0)
    anchors = pyramid_anchors(128, strides=(8, 16, 32), sizes=(24, 48, 96))
    sizes = [h * w * 9 for h, w in pyramid_grid_sizes(128, (8, 16, 32))]
    for _ in range(5):
        boxes = random_boxes(6, size=128, min_side=4, generator=gen)
        assert torch.equal(match_atss(boxes, anchors, sizes, k=9), _reference_atss(boxes, anchors, sizes, 9))
