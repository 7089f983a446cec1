import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from multibox.data.formats import coco_results
from multibox.metrics import COCO_KEYS, coco_ground_truth, coco_map, voc_ap, voc_map


def _random_case(seed, images=12, classes=4):
    rng = np.random.default_rng(seed)
    detections, targets = [], []
    for i in range(images):
        n = int(rng.integers(0, 8)) if i else 0  # image 0 has no ground truth
        xy = rng.uniform(0, 300, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(4, 150, (n, 2))], axis=1)
        target = {"boxes": gt, "labels": rng.integers(0, classes, n)}
        if i % 5 == 3:  # a crowd region
            target["ignore_boxes"] = np.array([[0.0, 0.0, 200.0, 200.0]])
            target["ignore_labels"] = np.array([1])
        targets.append(target)
        jitter = gt + rng.normal(0, 6, gt.shape)
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        extra = rng.integers(0, 6)
        xy = rng.uniform(0, 300, (extra, 2))
        noise = np.concatenate([xy, xy + rng.uniform(4, 100, (extra, 2))], axis=1)
        boxes = np.concatenate([jitter, noise]) if i != 5 else np.zeros((0, 4))  # image 5: no detections
        labels = np.concatenate([target["labels"], rng.integers(0, classes, extra)])[: len(boxes)]
        detections.append({"boxes": boxes, "scores": rng.uniform(0, 1, len(boxes)), "labels": labels})
    return detections, targets


def _pycocotools(detections, targets, classes):
    gt = COCO()
    gt.dataset = coco_ground_truth(targets, classes)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(coco_results(detections))
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", range(4))
def test_coco_map_identical_to_pycocotools(seed):
    detections, targets = _random_case(seed)
    ours = coco_map(detections, targets, num_classes=4, per_class=True)
    reference = _pycocotools(detections, targets, 4)
    np.testing.assert_allclose([ours[k] for k in COCO_KEYS], reference.stats, rtol=0, atol=1e-6)
    precision = reference.eval["precision"][:, :, :, 0, -1]
    expected = [precision[:, :, k][precision[:, :, k] > -1].mean() for k in range(4)]
    np.testing.assert_allclose(ours["per_class"], expected, atol=1e-6)
    assert 0 < ours["AP"] < 1


def test_coco_map_perfect_and_empty():
    targets = [{"boxes": np.array([[10.0, 10.0, 50.0, 60.0]]), "labels": np.array([0])}]
    perfect = [{"boxes": targets[0]["boxes"], "scores": np.array([0.9]), "labels": np.array([0])}]
    assert coco_map(perfect, targets)["AP"] == pytest.approx(1.0)
    none = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}]
    assert coco_map(none, targets)["AP"] == 0.0
    no_ground_truth = coco_map(none, [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}])
    assert no_ground_truth["AP"] == -1.0
    with pytest.raises(ValueError, match="2 images"):
        coco_map(perfect * 2, targets)


def test_voc_ap_hand_computed():
    # 3 detections ranked: TP, FP, TP with 2 objects: precision 1, 1/2, 2/3 at recall .5, .5, 1
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(recall, precision, "area") == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # 11-point: t = 0..0.5 -> 1 (6 points), t = 0.6..1.0 -> 2/3 (5 points)
    assert voc_ap(recall, precision, "voc07") == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_voc_map_hand_worked_case_with_difficult_and_duplicates():
    targets = [
        {
            "boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float),
            "labels": np.array([0, 0, 0]),
            "difficult": np.array([False, False, True]),
        },
        {"boxes": np.array([[0, 0, 10, 10]], float), "labels": np.array([1])},
    ]
    detections = [
        {
            "boxes": np.array(
                [[0, 0, 10, 10], [0, 1, 10, 10], [50, 50, 60, 60], [70, 70, 80, 80], [20, 20, 30, 30]], float
            ),
            "scores": np.array([0.9, 0.8, 0.7, 0.6, 0.5]),
            "labels": np.array([0, 0, 0, 0, 0]),
        },
        {"boxes": np.array([[40, 40, 50, 50]], float), "scores": np.array([0.4]), "labels": np.array([1])},
    ]
    # class 0 (2 non-difficult objects), ranked: TP, FP (duplicate), ignored (difficult), FP, TP
    # -> precision/recall after each counted detection: (1, .5), (.5, .5), (1/3, .5), (.5, 1)
    result = voc_map(detections, targets, method="area")
    assert result["AP"][0] == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert result["AP"][1] == 0.0  # one object, one false positive
    assert result["mAP"] == pytest.approx((0.75 + 0.0) / 2)
    voc07 = voc_map(detections, targets, method="voc07")
    assert voc07["AP"][0] == pytest.approx((6 * 1 + 5 * 0.5) / 11)


def test_voc_map_class_without_ground_truth_is_nan():
    targets = [{"boxes": np.array([[0, 0, 10, 10]], float), "labels": np.array([0])}]
    detections = [{"boxes": np.array([[0, 0, 10, 10]], float), "scores": np.array([1.0]), "labels": np.array([0])}]
    result = voc_map(detections, targets, num_classes=2)
    assert result["AP"][0] == 1.0 and np.isnan(result["AP"][1]) and result["mAP"] == 1.0


def test_the_error_breakdown_of_bench_detection_errors():
    """bench/detection_errors.py's kinds, best detection first, on a hand-made case."""
    import importlib.util
    from pathlib import Path

    import torch
    from torchvision.ops import box_iou

    spec = importlib.util.spec_from_file_location(
        "detection_errors", Path(__file__).parents[1] / "bench" / "detection_errors.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    objects, labels = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]), torch.tensor([0, 1])
    found = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 9], [20.0, 20, 30, 30], [0.0, 0, 10, 3], [50.0, 50, 60, 60]])
    iou = box_iou(objects, found)  # right; IoU 0.9 with the same object; right place, class 0 for 1; IoU 0.3; nothing
    right_class = labels[:, None] == torch.zeros(5, dtype=torch.long)[None, :]
    assert module.kinds(iou, right_class) == ["right", "duplicate", "wrong class", "loose", "background"]
    assert module.kinds(box_iou(torch.zeros(0, 4), found), right_class[:0]) == ["background"] * 5
