import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import _default_anchorgen

from multibox.anchors import (
    TOY_SSD,
    grid_anchors,
    grid_cell_sizes,
    kmeans_anchors,
    pyramid_anchors,
    pyramid_grid_sizes,
    ssd_default_boxes,
    wh_iou,
)


def _torchvision_anchors(generator, height, width, grids):
    images = ImageList(torch.zeros(1, 3, height, width), [(height, width)])
    feats = [torch.zeros(1, 1, h, w) for h, w in grids]
    return generator(images, feats)[0]


@pytest.mark.parametrize("size", [(512, 512), (640, 384), (128, 128), (256, 768), (1024, 1024)])
def test_pyramid_anchors_equal_torchvision_retinanet(size):
    grids = pyramid_grid_sizes(size, (8, 16, 32, 64, 128))
    ours = pyramid_anchors(size)
    theirs = _torchvision_anchors(_default_anchorgen(), *size, grids)
    # bit for bit on any CPU: anchors take only sqrt, products, sums and rounding, which IEEE 754
    # rounds correctly in vector and scalar code alike (no exp, no reordered sums)
    assert torch.equal(ours, theirs)


def test_pyramid_anchor_count_and_layout():
    anchors = pyramid_anchors((512, 512))
    assert anchors.shape == (9 * (64**2 + 32**2 + 16**2 + 8**2 + 4**2), 4) == (49104, 4)
    # first location of P3: 9 anchors centred on (0, 0), ratio-major (h/w = 0.5 first), scale-minor
    first = anchors[:9]
    centres = (first[:, :2] + first[:, 2:]) / 2
    assert torch.equal(centres, torch.zeros(9, 2))
    wh = first[:, 2:] - first[:, :2]
    assert (wh[:3, 0] > wh[:3, 1]).all() and (wh[6:, 0] < wh[6:, 1]).all()
    # next location moves one stride along x (column), not y
    assert anchors[9, 0] - anchors[0, 0] == 8 and anchors[9, 1] == anchors[0, 1]


def test_pyramid_anchors_custom_config_matches_torchvision():
    sizes, ratios, scales = (16, 32, 64), (0.5, 1.0, 2.0, 3.0), (1.0, 1.5)
    gen = AnchorGenerator(tuple(tuple(int(s * c) for c in scales) for s in sizes), (ratios,) * 3)
    grids = pyramid_grid_sizes(320, (8, 16, 32))
    ours = pyramid_anchors(320, strides=(8, 16, 32), sizes=sizes, scales=scales, ratios=ratios)
    assert torch.equal(ours, _torchvision_anchors(gen, 320, 320, grids))


def test_pyramid_anchors_unquantized_and_centred():
    anchors = pyramid_anchors(64, strides=(32,), sizes=(10,), scales=(1.0,), ratios=(1.0,), offset=0.5, quantize=False)
    expected = torch.tensor([[11.0, 11, 21, 21], [43, 11, 53, 21], [11, 43, 21, 53], [43, 43, 53, 53]])
    torch.testing.assert_close(anchors, expected)


def test_pyramid_grid_sizes_round_up():
    assert pyramid_grid_sizes((500, 333), (8, 128)) == [(63, 42), (4, 3)]


def test_grid_anchors_fastai_layout():
    anchors = grid_anchors()
    assert anchors.shape == (189, 4)
    # first cell of the 4x4 grid, ratio (1, 1), zooms 0.7 / 1 / 1.3: centred at (1/8, 1/8)
    torch.testing.assert_close((anchors[:3, :2] + anchors[:3, 2:]) / 2, torch.full((3, 2), 0.125))
    torch.testing.assert_close(anchors[:3, 2] - anchors[:3, 0], torch.tensor([0.7, 1.0, 1.3]) / 4)
    # ratio (1, .5) is height 1, width .5 (the course's (h, w) order)
    hw = anchors[4, 3] - anchors[4, 1], anchors[4, 2] - anchors[4, 0]
    assert hw[0].item() == pytest.approx(0.25) and hw[1].item() == pytest.approx(0.125)
    # the 1x1 grid's zoom-1 square anchor is the whole image
    torch.testing.assert_close(anchors[-9 + 1], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    cells = grid_cell_sizes()
    assert cells.shape == (189,) and cells[0] == 0.25 and cells[-1] == 1.0


def test_ssd300_equals_torchvision_default_box_generator():
    gen = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    )
    theirs = _torchvision_anchors(gen, 300, 300, [(f, f) for f in (38, 19, 10, 5, 3, 1)])
    ours = ssd_default_boxes()
    assert ours.shape == (8732, 4)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_ssd_default_boxes_estimated_scales_like_torchvision():
    gen = DefaultBoxGenerator([[2], [2, 3]], min_ratio=0.2, max_ratio=0.9)
    theirs = _torchvision_anchors(gen, 200, 200, [(10, 10), (5, 5)])
    ours = ssd_default_boxes(200, (10, 5), steps=None, scales=(0.2, 0.9, 1.0), ratios=((2, 0.5), (2, 0.5, 3, 1 / 3)))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def _d2l_multibox_prior(h, w, sizes, ratios):
    """The d2l.ai ``multibox_prior`` (sizes first, then the first size at the other ratios), in xyxy [0, 1]."""
    boxes = []
    for i in range(h):
        for j in range(w):
            cy, cx = (i + 0.5) / h, (j + 0.5) / w
            shapes = [(s * math.sqrt(ratios[0]) * h / w, s / math.sqrt(ratios[0])) for s in sizes]
            shapes += [(sizes[0] * math.sqrt(r) * h / w, sizes[0] / math.sqrt(r)) for r in ratios[1:]]
            boxes += [[cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2] for bw, bh in shapes]
    return torch.tensor(boxes)


def test_toy_ssd_anchors_equal_the_d2l_construction():
    ours = ssd_default_boxes(**TOY_SSD)
    assert ours.shape == (5444, 4)
    expected = torch.cat(
        [
            _d2l_multibox_prior(f, f, sizes, [1, 2, 0.5])
            for f, sizes in zip(TOY_SSD["feature_maps"], TOY_SSD["sizes"], strict=True)
        ]
    )
    torch.testing.assert_close(ours / 256, expected, rtol=0, atol=1e-6)


def test_ssd_default_boxes_rejects_inconsistent_levels():
    with pytest.raises(ValueError, match="one entry per level"):
        ssd_default_boxes(feature_maps=(38, 19), scales=(0.1, 0.2, 0.3))


def test_wh_iou_hand_computed():
    assert wh_iou(torch.tensor([[2.0, 2.0]]), torch.tensor([[1.0, 4.0]])).item() == pytest.approx(2 / 6)


def test_kmeans_recovers_clusters_and_is_deterministic():
    gen = torch.Generator().manual_seed(1)
    centres = torch.tensor([[10.0, 10.0], [40.0, 20.0], [100.0, 150.0]])
    wh = torch.cat([c * (1 + 0.05 * torch.randn(200, 2, generator=gen)) for c in centres])
    found = kmeans_anchors(wh, 3, seed=0)
    torch.testing.assert_close(found, centres, rtol=0.03, atol=0)
    assert torch.equal(found, kmeans_anchors(wh, 3, seed=0))
    # sorted by area; better fit than any single anchor
    areas = found.prod(dim=1)
    assert (areas[1:] > areas[:-1]).all()
    assert wh_iou(wh, found).max(dim=1).values.mean() > wh_iou(wh, kmeans_anchors(wh, 1)).max(dim=1).values.mean()


def test_kmeans_rejects_bad_sizes_with_the_row():
    wh = torch.tensor([[10.0, 10.0], [0.0, 5.0], [3.0, 3.0]])
    with pytest.raises(ValueError, match="row 1"):
        kmeans_anchors(wh, 2)
    with pytest.raises(ValueError, match="k must be"):
        kmeans_anchors(wh[:1], 2)
