"""Augmentation keeps boxes true: boxes are painted into the image, augmented with it, and compared."""

import numpy as np
import pytest
import torch
from data_helpers import make_images

from multibox.data.dataset import DetectionDataset
from multibox.data.records import DetectionSet, Record
from multibox.data.transforms import (
    Augment,
    _Albumentations,
    _Pipeline,
    _resize_ops,
    build_transform,
    iou_crop,
    mosaic,
    zoom_out,
)

PALETTE = np.array(
    [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
        [128, 0, 0],
        [0, 128, 0],
        [0, 0, 128],
        [255, 128, 0],
        [128, 0, 255],
        [0, 128, 255],
    ],
    np.uint8,
)
BACKGROUND = 60


def painted(boxes, labels, size=(120, 160)):
    image = np.full((*size, 3), BACKGROUND, np.uint8)
    for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
        image[int(y1) : int(y2), int(x1) : int(x2)] = PALETTE[label]
    return image, np.asarray(boxes, np.float32), np.asarray(labels, np.int64)


def assert_boxes_match_paint(sample, tolerance=2.5):
    image, boxes, labels = sample
    assert len(boxes) == len(labels)
    for box, label in zip(boxes, labels, strict=True):
        distance = np.abs(image.astype(int) - PALETTE[label].astype(int)).sum(axis=2)
        ys, xs = np.nonzero(distance < 40)
        assert len(ys), f"label {label}: no painted pixel left for box {box}"
        bounds = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        np.testing.assert_allclose(box, bounds, atol=tolerance, err_msg=f"label {label}")


def scene():
    return painted([[10, 10, 50, 40], [70, 20, 150, 60], [20, 70, 60, 115], [100, 80, 130, 110]], [0, 1, 2, 3])


@pytest.mark.parametrize("preset", ["none", "flip", "retina"])
@pytest.mark.parametrize("resize", ["squish", "letterbox", "minmax"])
@pytest.mark.parametrize("rotate", [False, True])
def test_geometric_presets_keep_boxes_true(preset, resize, rotate):
    transform = build_transform(Augment(preset, (96, 128), resize, rotate=rotate, min_size=80, max_size=140))
    for seed in range(6):
        out = transform(scene(), np.random.default_rng(seed))
        assert_boxes_match_paint(out, tolerance=3.5 if rotate else 2.5)


@pytest.mark.parametrize("resize", ["squish", "letterbox"])
def test_resize_of_an_image_already_at_size_equals_albumentations(resize):
    """The shortcut for images already at the input size clips and filters boxes as albumentations does."""
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    boxes = np.array(
        [
            [10, 10, 50, 40],
            [-5, 3, 20, 30],
            [150, 100, 170, 130],
            [30, 30, 31.5, 50],
            [40, 40, 40.5, 60],
            [5, 7, 9, 7.5],
        ],
        np.float32,
    )
    labels = np.arange(len(boxes))
    fast = build_transform(Augment(preset="none", size=(120, 160), resize=resize), train=True)
    slow = _Albumentations(_resize_ops(resize, (120, 160)))
    got = fast((image, boxes, labels), np.random.default_rng(1))
    want = slow((image, boxes, labels), np.random.default_rng(1))
    assert got[0] is image
    np.testing.assert_array_equal(got[2], want[2])  # boxes under 1 px dropped alike (labels 4 and 5)
    np.testing.assert_allclose(got[1], want[1], atol=1e-4)
    assert set(got[2].tolist()) == {0, 1, 2, 3}
    # another size still goes through the resize
    small = fast((image[:60, :80], boxes / 2, labels), np.random.default_rng(1))
    assert small[0].shape[:2] == (120, 160)


def test_ssd_geometry_keeps_boxes_true():
    geometric = _Pipeline([zoom_out, iou_crop, build_transform(Augment("flip", (96, 96)))])
    kept = 0
    for seed in range(20):
        out = geometric(scene(), np.random.default_rng(seed))
        assert_boxes_match_paint(out)
        kept += len(out[1])
    assert kept > 20


def test_iou_crop_keeps_boxes_by_centre_and_meets_the_overlap():
    image, boxes, labels = scene()
    for seed in range(30):
        out_image, out_boxes, _ = iou_crop((image, boxes, labels), np.random.default_rng(seed))
        assert ((out_boxes[:, 2:] <= [out_image.shape[1], out_image.shape[0]]) & (out_boxes[:, :2] >= 0)).all()
        assert len(out_boxes) >= 1


def test_zoom_out_places_image_on_a_larger_canvas():
    image, boxes, labels = scene()
    out = zoom_out((image, boxes, labels), np.random.default_rng(1), p=1.0)
    assert out[0].shape[0] >= image.shape[0] and out[0].shape[1] >= image.shape[1]
    assert_boxes_match_paint(out)


def test_mosaic_keeps_boxes_true_and_drops_remnants():
    samples = [painted([[10, 10, 60, 50], [80, 60, 150, 110]], [2 * k, 2 * k + 1]) for k in range(4)]
    seen = 0
    for seed in range(10):
        out = mosaic(samples, 128, np.random.default_rng(seed))
        assert out[0].shape == (128, 128, 3)
        assert_boxes_match_paint(out, tolerance=2.0)
        seen += len(out[1])
        area = np.prod(out[1][:, 2:] - out[1][:, :2], axis=1)
        assert (area > 0).all()
    assert seen > 20


def test_mosaic_needs_four():
    with pytest.raises(ValueError, match="4 samples"):
        mosaic([scene()] * 3, 64, np.random.default_rng(0))


def test_bad_augment_names():
    with pytest.raises(ValueError, match="preset"):
        Augment("cutmix")
    with pytest.raises(ValueError, match="resize"):
        Augment("flip", resize="crop")
    with pytest.raises(ValueError, match="square"):
        Augment("mosaic", (64, 96))


def test_dataset_items_are_reproducible_and_denormalise(tmp_path):
    paths = make_images(tmp_path, 2, size=(60, 80))
    data = DetectionSet([Record(p, 60, 80, [[5, 5, 40, 30]], [0]) for p in paths], ["cat"])
    dataset = DetectionDataset(data, Augment("ssd", (64, 64)))
    torch.manual_seed(3)
    a = dataset[0]
    torch.manual_seed(3)
    b = dataset[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    plain = DetectionDataset(data, Augment("none", (60, 80)), train=False)
    image, target = plain[1]
    restored = plain.denormalize(image).permute(1, 2, 0).numpy()
    original = np.asarray(__import__("cv2").imread(str(paths[1]))[:, :, ::-1])
    assert np.abs(restored.astype(int) - original.astype(int)).max() <= 1
    assert target["orig_size"].tolist() == [60, 80]
