"""The anchor doctor against a brute-force computation, and its fitted anchors on digit scenes."""

import math

import numpy as np
import pytest
import torch

from multibox.anchor_doctor import FixedAnchors, anchor_coverage, draw_missed, suggest_anchors
from multibox.anchor_doctor.fit import _kmeans_1d
from multibox.anchors import pyramid_anchors
from multibox.boxes import box_iou
from multibox.config import preset
from multibox.data import DetectionSet, load_dataset
from multibox.data.io import write_image
from multibox.data.records import Record
from multibox.data.synthetic import SceneConfig, synthesize_digits
from multibox.data.transforms import boxes_to_input, boxes_to_original, input_size_of
from multibox.models import AnchorConfig

ANCHORS = AnchorConfig(strides=(8, 16), sizes=(8, 24), scales=(1.0, 1.5), ratios=(0.5, 1.0, 2.0))


@pytest.fixture
def scenes(tmp_path):
    """Three images of different shapes with random boxes (one tiny), and one empty image."""
    rng = np.random.default_rng(3)
    records = []
    for i, (h, w, n) in enumerate([(80, 100, 7), (64, 64, 5), (120, 50, 6), (70, 70, 0)]):
        path = tmp_path / f"{i}.jpg"
        write_image(path, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        xy = rng.uniform(0, 0.7, (n, 2)) * [w, h]
        wh = rng.uniform(0.03, 0.5, (n, 2)) * [w, h]
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], axis=1)
        records.append(Record(path, h, w, boxes, rng.integers(0, 3, n)))
    return DetectionSet(records, ["a", "b", "c"])


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _by_hand(record: Record, size: int, resize: str) -> tuple[list[list[float]], tuple[int, int]]:
    """Boxes of ``record`` in input pixels, and the input size, computed from the definitions."""
    h, w = record.height, record.width
    if resize == "squish":
        return [[x1 * size / w, y1 * size / h, x2 * size / w, y2 * size / h] for x1, y1, x2, y2 in record.boxes], (
            size,
            size,
        )
    if resize == "letterbox":
        s = min(size / h, size / w)
        px, py = (size - round(w * s)) // 2, (size - round(h * s)) // 2
        return [[x1 * s + px, y1 * s + py, x2 * s + px, y2 * s + py] for x1, y1, x2, y2 in record.boxes], (size, size)
    s = size / min(h, w) if max(h, w) * size / min(h, w) <= size else size / max(h, w)  # minmax, min = max = size
    ih, iw = round(h * s), round(w * s)
    return [[x1 * iw / w, y1 * ih / h, x2 * iw / w, y2 * ih / h] for x1, y1, x2, y2 in record.boxes], (ih, iw)


@pytest.mark.parametrize("resize", ["squish", "letterbox", "minmax"])
def test_coverage_equals_a_brute_force_count(scenes, resize):
    coverage = anchor_coverage(scenes, ANCHORS, (64, 64), resize, pos_iou=0.5, neg_iou=0.4)
    best, positives, areas = [], [], []
    for record in scenes.records:
        boxes, size = _by_hand(record, 64, resize)
        grid = pyramid_anchors(size, ANCHORS.strides, ANCHORS.sizes, ANCHORS.scales, ANCHORS.ratios).tolist()
        for box in boxes:
            ious = [_iou(box, anchor) for anchor in grid]
            best.append(max(ious))
            positives.append(sum(v >= 0.5 for v in ious))
            areas.append((box[2] - box[0]) * (box[3] - box[1]))
    assert coverage.best_iou.tolist() == pytest.approx(best, abs=1e-6)
    assert coverage.positives.tolist() == positives
    buckets = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, math.inf), "all": (0, math.inf)}
    for row in coverage.rows:
        low, high = buckets[row["objects"]]
        inside = [i for i, a in enumerate(areas) if low <= a < high]
        assert row["count"] == len(inside)
        if inside:
            assert row["iou>=0.5"] == pytest.approx(sum(best[i] >= 0.5 for i in inside) / len(inside))
            assert row["iou>=0.4"] == pytest.approx(sum(best[i] >= 0.4 for i in inside) / len(inside))
            assert row["positives_per_object"] == pytest.approx(sum(positives[i] for i in inside) / len(inside))
            assert row["no_positive"] == sum(positives[i] == 0 for i in inside)
    missed = coverage.missed()
    assert sorted(best[i] for i in missed) == [best[i] for i in missed]  # worst first
    assert {i for i, v in enumerate(best) if v < 0.5} == set(missed)
    assert "all" in coverage.table() and coverage.to_dict(scenes)["missed"][0]["image"].endswith(".jpg")


def test_large_images_compare_each_box_with_the_anchors_near_it_and_get_the_whole_grids_answer(tmp_path):
    # 1024x1024: 16 blocks of 256 px, boxes of 3-200 px anywhere (many across a block's edge)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (300, 2))
    boxes = np.concatenate([xy, np.minimum(xy + rng.uniform(3, 200, (300, 2)), 1024)], axis=1)
    data = DetectionSet([Record(tmp_path / "big.jpg", 1024, 1024, boxes, np.zeros(300, np.int64))], ["a"])
    anchors = AnchorConfig(strides=(8, 16, 32), sizes=(12, 30, 60), scales=(1.0, 1.26, 1.59), ratios=(0.5, 1, 2))
    coverage = anchor_coverage(data, anchors, (1024, 1024), "letterbox", pos_iou=0.5)
    grid = pyramid_anchors((1024, 1024), anchors.strides, anchors.sizes, anchors.scales, anchors.ratios).double()
    iou = box_iou(torch.from_numpy(data.records[0].boxes).double(), grid)  # every box against every anchor
    best, where = iou.max(dim=1)
    # the same IoUs of the same pairs: equal, and the first of equal anchors as over the whole grid
    assert torch.equal(coverage.best_iou, best.float())
    assert torch.equal(coverage.best_anchor, grid[where].float())
    assert torch.equal(coverage.positives, (iou >= 0.5).sum(dim=1))


@pytest.mark.parametrize("resize", ["squish", "letterbox", "minmax"])
def test_boxes_to_input_inverts_boxes_to_original(resize):
    boxes = torch.tensor([[3.0, 4.0, 50.0, 70.0], [0.0, 0.0, 120.0, 90.0]])
    orig = (90, 120)
    size = input_size_of(orig, (64, 64), resize)
    assert size == ((48, 64) if resize == "minmax" else (64, 64))
    back = boxes_to_original(boxes_to_input(boxes, orig, size, resize), orig, size, resize)
    assert torch.allclose(back, boxes, atol=1e-4)


def test_kmeans_1d_and_the_fitted_anchors_improve_coverage_of_digit_scenes(tmp_path):
    centres = _kmeans_1d(torch.tensor([1.0, 1.2, 0.8, 10.0, 11.0, 9.0]), 2)
    assert centres.tolist() == pytest.approx([1.0, 10.0])

    synthesize_digits(tmp_path, train=30, val=1, seed=0, config=SceneConfig(size=128, min_height=8))
    data, _ = load_dataset(tmp_path, "train")
    m = preset("retinanet_r50_fpn").model.retinanet  # the paper's anchors (32 to 812 px) on 8-96 px digits
    paper = AnchorConfig(m.anchor_strides, m.anchor_sizes, m.anchor_scales, m.anchor_ratios)
    before = anchor_coverage(data, paper, (128, 128))
    fitted = suggest_anchors(data, paper, (128, 128))
    after = anchor_coverage(data, fitted, (128, 128))
    assert fitted.strides == paper.strides and fitted.scales == paper.scales
    assert list(fitted.sizes) == sorted(fitted.sizes) and min(fitted.sizes) < 32
    assert after.matched > before.matched + 0.1, (before.table(), after.table())

    picture = tmp_path / "missed.png"
    assert draw_missed(before, data, (128, 128), "squish", picture, limit=4) == 4 and picture.is_file()


def test_an_empty_dataset_and_bad_thresholds_are_clear_errors(scenes):
    empty = DetectionSet([r.select(np.zeros(len(r.boxes), bool)) for r in scenes.records], scenes.class_names)
    with pytest.raises(ValueError, match="no boxes"):
        anchor_coverage(empty, ANCHORS, (64, 64))
    with pytest.raises(ValueError, match="no boxes"):
        suggest_anchors(empty, ANCHORS, (64, 64))
    for pos_iou, neg_iou in ((0.0, 0.4), (0.5, 1.5)):
        with pytest.raises(ValueError, match="IoU thresholds must be in"):
            anchor_coverage(scenes, ANCHORS, (64, 64), pos_iou=pos_iou, neg_iou=neg_iou)


def test_the_cli_names_a_missing_dataset_and_an_unknown_preset(tmp_path):
    from typer.testing import CliRunner

    from multibox.cli import app

    result = CliRunner().invoke(app, ["anchors", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "nowhere: no such file or folder" in result.output
    result = CliRunner().invoke(app, ["anchors", "--data", str(tmp_path), "--preset", "retinanet_r5O_fpn"])
    assert result.exit_code == 2 and "did you mean 'retinanet_r50_fpn'" in result.output
    result = CliRunner().invoke(app, ["anchors", "--data", str(tmp_path), "--preset", "largest_cls"])
    assert result.exit_code == 2 and "without anchors: give a detector's preset" in result.output


def test_fixed_anchors_measure_as_the_same_anchors_given_by_settings(scenes):
    grid = pyramid_anchors((64, 64), ANCHORS.strides, ANCHORS.sizes, ANCHORS.scales, ANCHORS.ratios)
    fixed = FixedAnchors(grid, (64, 64), "the same grid")
    by_settings = anchor_coverage(scenes, ANCHORS, (64, 64), "squish")
    by_boxes = anchor_coverage(scenes, fixed, (64, 64), "squish")
    assert torch.equal(by_boxes.best_iou, by_settings.best_iou) and by_boxes.rows == by_settings.rows
    assert (
        by_boxes.table().splitlines()[0] == "anchors: the same grid"
        and by_boxes.to_dict()["anchors"]["count"] == 8 * 8 * 6 + 4 * 4 * 6
    )
    with pytest.raises(ValueError, match="networks built for one input size"):
        anchor_coverage(scenes, fixed, (64, 64), "minmax")  # minmax gives other sizes


@pytest.mark.parametrize(
    ("name", "setting"),
    [("yolov3", "model.yolo.anchors=[["), ("toyssd", "model.ssd.scales=["), ("ssd_grid", "model.grid.zooms=[")],
)
def test_the_cli_checks_and_fits_the_ssd_family_and_yolo(digits, tmp_path, name, setting):
    import json

    from typer.testing import CliRunner

    from multibox.cli import app

    out = tmp_path / "doctor"
    args = ["anchors", "--data", str(digits), "--preset", name, "--image-size", "128", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "anchors.json").read_text())
    data, _ = load_dataset(digits, "train")
    boxes = sum(len(r.boxes) for r in data.records)
    assert report["current"]["rows"][-1]["count"] == boxes and f"{name} anchors at 128x128" in result.output
    current, fitted = report["current"]["rows"][-1], report["suggested"]["rows"][-1]
    assert report["suggested"]["overrides"].startswith(setting)
    assert fitted["iou>=0.5"] >= current["iou>=0.5"], result.output


def test_the_cli_reports_a_one_threshold_matcher_at_its_threshold_and_at_0_5(digits, tmp_path):
    """ssd_multihead matches at IoU 0.15, under the 0.4 of RetinaNet's background threshold."""
    import json

    from typer.testing import CliRunner

    from multibox.anchors import grid_anchors
    from multibox.cli import app

    out = tmp_path / "doctor"
    result = CliRunner().invoke(app, ["anchors", "--data", str(digits), "--preset", "ssd_multihead", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "IoU>=0.15" in result.output and "IoU>=0.5" in result.output
    data, _ = load_dataset(digits, "train")
    course = FixedAnchors(grid_anchors((4, 2, 1)) * 256, (256, 256), "the course's 189 anchors")  # the preset's size
    expected = anchor_coverage(data, course, (256, 256), pos_iou=0.15, neg_iou=0.5)
    got = json.loads((out / "anchors.json").read_text())["current"]["rows"]
    assert got == expected.rows and 0 < expected.rows[-1]["iou>=0.5"] < expected.rows[-1]["iou>=0.15"]


def _tall_scenes(tmp_path, side: int = 256) -> DetectionSet:
    """Boxes 10x25 px (h / w 2.5, 0.39 of a 4x4 grid's 64 px cell) centred on the 4x4 grid's cells."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(4):
        path = tmp_path / f"{i}.jpg"
        write_image(path, np.zeros((side, side, 3), dtype=np.uint8))
        centres = (rng.integers(0, 4, (8, 2)) + 0.5) * side / 4
        boxes = np.concatenate([centres - np.array([5.0, 12.5]), centres + np.array([5.0, 12.5])], axis=1)
        records.append(Record(path, side, side, boxes, np.zeros(8, dtype=np.int64)))
    return DetectionSet(records, ["digit"])


def test_grid_shapes_are_fitted_to_the_boxes_and_cover_them_better(tmp_path):
    """Every box 10x25 px on a cell centre: the fitted ratios are 2.5 (h / w) and the smallest
    zoom 25 / 64 of the 4x4 grid's cells; those anchors reach IoU 0.5 for every box, the
    course's (their tall anchor of zoom 0.7 is 18x45 px: IoU 0.31) for none."""
    from multibox.anchor_doctor import fit_grid_shapes
    from multibox.anchors import grid_anchors, grid_ratios

    data = _tall_scenes(tmp_path)

    def anchors_for(zooms, ratios):
        return grid_anchors((4, 2, 1), zooms, grid_ratios(ratios)) * 256

    def coverage(zooms, ratios):
        return anchor_coverage(data, FixedAnchors(anchors_for(zooms, ratios), (256, 256), ""), (256, 256)).matched

    zooms, ratios = fit_grid_shapes(data, anchors_for, (4, 2, 1), (0.7, 1.0, 1.3), (1.0, 2.0, 0.5), (256, 256))
    assert ratios == (2.5, 2.5, 2.5)  # one distinct shape: every centre on it
    assert zooms[0] == pytest.approx(25 / 64, abs=0.005) and list(zooms) == sorted(set(zooms))
    assert coverage(zooms, ratios) == 1.0 and coverage((0.7, 1.0, 1.3), (1.0, 2.0, 0.5)) == 0.0


def test_grid_ratios_are_the_courses_height_width_pairs():
    from multibox.anchors import grid_anchors, grid_ratios

    assert grid_ratios([1, 2, 0.5]) == ((1.0, 1.0), (1.0, 0.5), (0.5, 1.0))  # the course's three
    tall = grid_anchors((1,), (0.5,), grid_ratios([2.5]))[0]
    assert torch.allclose(tall[2:] - tall[:2], torch.tensor([0.2, 0.5]))  # longer side: the zoomed cell
    for bad in ([], [0.0], [-1.0], [float("nan")]):
        with pytest.raises(ValueError, match="must be positive numbers"):
            grid_ratios(bad)


def test_model_grid_shapes_build_the_grid_ssd_they_name():
    """``model.grid_zooms`` / ``model.grid_ratios`` reach GridSSD's anchors and its box coder; empty: the course's."""
    from multibox.anchors import grid_anchors, grid_ratios
    from multibox.config import load_config
    from multibox.kinds import build_model

    def model(*overrides):
        config = load_config("ssd_multihead", list(overrides)).model
        return build_model(config, 3, pretrained="none", image_size=(256, 256))

    course = model()
    assert torch.equal(course.anchors(), grid_anchors((4, 2, 1)) * 256)
    shaped = model("model.grid_zooms=[0.5, 1.0]", "model.grid_ratios=[1.0, 2.5]")
    expected = grid_anchors((4, 2, 1), (0.5, 1.0), grid_ratios([1.0, 2.5])) * 256
    assert torch.equal(shaped.anchors(), expected) and len(shaped.coder.cell_sizes) == len(expected) == 21 * 4
    assert shaped.outs[0].k == 4
    with pytest.raises(ValueError, match="zooms must be positive"):
        model("model.grid_zooms=[0.0, 1.0]")


def test_the_cli_advises_the_input_size_or_tiles_when_few_boxes_can_be_matched(tmp_path):
    """Objects of 8-14 px in 1024-px images at cpu_digits' 256x256 shrink to 2-4 px: no anchor can
    reach them, and the doctor says what `multibox train` would use instead."""
    from typer.testing import CliRunner

    from multibox.auto import recommend_input
    from multibox.cli import app
    from multibox.data.loading import write_dataset

    rng = np.random.default_rng(0)
    records = []
    for i in range(2):
        path = tmp_path / "big" / "JPEGImages" / f"{i}.jpg"
        write_image(path, rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8))
        xy = rng.uniform(0, 1000, (40, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 14, (40, 2))], axis=1).astype(np.float32)
        records.append(Record(path, 1024, 1024, boxes, np.zeros(40, np.int64), image_id=str(i)))
    data = DetectionSet(records, ["dot"])
    write_dataset(data, tmp_path / "big", "voc", "train")
    result = CliRunner().invoke(app, ["anchors", "--data", str(tmp_path / "big"), "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    size, tile = (c.value for c in recommend_input(data))
    # the 10th percentile (about 9.6 px) at 12 px needs 1.25x: 1280-px inputs, so tiles of 512 at 640
    assert (size, tile) == ([640, 640], 512)
    assert "few boxes can be matched at 256x256" in result.output
    assert "would use input.size=[640, 640] input.tile=512" in result.output
