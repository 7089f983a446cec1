"""Tiled detection: windows, and merging the tiles' boxes back into whole objects."""

import numpy as np
import pytest
import torch

from multibox.metrics import coco_map
from multibox.structures import Detections
from multibox.tiling import merge_tiles, tile_windows


def test_windows_cover_the_image_with_the_overlap_asked():
    windows = tile_windows(300, 400, tile=128, overlap=0.25)
    xs = sorted({w[0] for w in windows})
    ys = sorted({w[1] for w in windows})
    assert xs == [0, 96, 192, 272] and ys == [0, 96, 172]  # steps of 96, the last ending at the border
    assert all(x2 - x1 == 128 and y2 - y1 == 128 for x1, y1, x2, y2 in windows)
    covered = np.zeros((300, 400), bool)
    for x1, y1, x2, y2 in windows:
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    assert tile_windows(100, 90, tile=128) == [(0, 0, 90, 100)]  # smaller than a tile: the image
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(100, 100, 64, overlap=1.0)


def _scene():
    """Solid rectangles, one colour each (class = index % 3), across tile edges and corners of a
    300x400 image cut into 128-pixel tiles with overlap 0.25 (edges at 96, 128, 192, 224, ...)."""
    boxes = np.array(
        [
            [100, 20, 150, 60],  # across the vertical edge at 128: cut in one tile, whole in the next
            [10, 110, 60, 140],  # across the horizontal edge at 128
            [110, 100, 140, 135],  # at a corner of four tiles
            [60, 200, 260, 240],  # longer than the overlap: cut by several tiles
            [300, 10, 330, 40],  # inside one tile's overlap with its neighbour
            [200, 250, 390, 295],  # along the bottom border, across three tiles
            [20, 20, 40, 50],  # inside one tile only
        ],
        np.float32,
    )
    image = np.zeros((300, 400, 3), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        image[y1:y2, x1:x2] = (40 + 30 * i, 255 - 30 * i, 100 + 20 * i)
    return image, boxes, np.arange(len(boxes)) % 3


def _oracle(pixels: np.ndarray, colours: list) -> Detections:
    """A perfect detector of the scene's rectangles in any crop: each colour's bounding box."""
    boxes, labels = [], []
    for i, colour in enumerate(colours):
        ys, xs = np.nonzero((pixels == colour).all(axis=2))
        if len(xs):
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(i % 3)
    scores = torch.linspace(0.9, 0.5, len(boxes)) if boxes else torch.zeros(0)
    return Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), scores, torch.tensor(labels).long())


def test_tiles_of_a_scene_merge_into_its_whole_objects():
    image, boxes, labels = _scene()
    colours = [tuple(image[int(y1), int(x1)]) for x1, y1, _, _ in boxes]
    windows = tile_windows(300, 400, tile=128, overlap=0.25)
    per_tile = [_oracle(image[y1:y2, x1:x2], colours) for x1, y1, x2, y2 in windows]
    assert sum(len(d) for d in per_tile) > 2 * len(boxes)  # pieces and repeated views
    merged = merge_tiles(per_tile, windows, (300, 400))
    order = np.lexsort((merged.boxes[:, 1].numpy(), merged.boxes[:, 0].numpy()))
    expected = np.lexsort((boxes[:, 1], boxes[:, 0]))
    assert np.array_equal(merged.boxes.numpy()[order], boxes[expected])
    assert np.array_equal(merged.labels.numpy()[order], labels[expected])
    # the same AP as the untiled image: every object found once, whole
    truth = [{"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}]
    tiled_ap = coco_map([merged], truth, num_classes=3)["AP"]
    whole_ap = coco_map([_oracle(image, colours)], truth, num_classes=3)["AP"]
    assert tiled_ap == whole_ap == pytest.approx(1.0)


def test_merging_without_joins_leaves_the_pieces():
    # the join is what makes the AP: with joins off, cut objects stay in pieces
    image, boxes, labels = _scene()
    colours = [tuple(image[int(y1), int(x1)]) for x1, y1, _, _ in boxes]
    windows = tile_windows(300, 400, tile=128, overlap=0.25)
    per_tile = [_oracle(image[y1:y2, x1:x2], colours) for x1, y1, x2, y2 in windows]
    pieces = merge_tiles(per_tile, windows, (300, 400), join_iou=2.0, contain=2.0)
    truth = [{"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}]
    assert len(pieces) > len(boxes) and coco_map([pieces], truth, num_classes=3)["AP"] < 0.9


def test_no_detections_and_mismatched_inputs():
    windows = tile_windows(64, 64, 32, 0.0)
    assert len(merge_tiles([Detections.empty()] * len(windows), windows, (64, 64))) == 0
    with pytest.raises(ValueError, match="4 windows"):
        merge_tiles([Detections.empty()], windows, (64, 64))


def test_a_trained_detector_predicts_tiled_images_through_the_cli(digits, digits_run, tmp_path):
    import json

    from typer.testing import CliRunner

    from multibox import load
    from multibox.cli import app
    from multibox.data.io import read_image, write_image

    detector = load(digits_run / "best.pt")
    scenes = [read_image(p) for p in sorted((digits / "JPEGImages").glob("val_*.jpg"))]
    # an image no larger than a tile is one window: the same detections as without tiling
    plain, tiled = detector.predict(scenes[0], conf=0.01), detector.predict(scenes[0], conf=0.01, tile=96)
    assert len(plain) > 0 and torch.equal(plain.labels, tiled.labels)
    assert torch.allclose(plain.boxes, tiled.boxes, atol=1e-4) and torch.allclose(plain.scores, tiled.scores)
    # four scenes side by side, 128x128, in tiles of 64 (each tile one scene's size, as trained)
    large = np.concatenate([np.concatenate(scenes[:2], axis=1), np.concatenate(scenes[2:4], axis=1)], axis=0)
    found = detector.predict(large, conf=0.01, tile=64, overlap=0.25)
    assert len(found) > 0 and found.names == detector.class_names
    assert (found.boxes >= 0).all() and (found.boxes[:, [0, 2]] <= 128).all() and (found.boxes[:, [1, 3]] <= 128).all()
    assert (found.scores[:-1] >= found.scores[1:]).all()
    path = tmp_path / "large.png"
    write_image(path, large)
    args = ["predict", "--weights", str(digits_run / "best.pt"), str(path), "--tile", "64", "--overlap", "0.25",
            "--conf", "0.01", "--out", str(tmp_path / "p")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "p" / "predictions.json").read_text())) == len(found)


def test_a_network_trained_on_tiles_is_evaluated_and_used_on_tiles(digits, digits_run):
    """With ``input.tile``, evaluation and ``predict`` tile every image as training did."""
    import copy
    from dataclasses import asdict

    from conftest import assert_same_detections

    from multibox import load
    from multibox.data import load_dataset
    from multibox.data.io import read_image
    from multibox.detect import detect_tiled
    from multibox.evaluation import predict_dataset
    from multibox.inference import Predictor

    detector = load(digits_run / "best.pt", device="cpu")
    config = copy.deepcopy(detector.config)
    config.input.tile, config.detect.score_thresh = 32, 0.01
    tiled = Predictor(detector.model, config, detector.class_names, device="cpu")
    val, _ = load_dataset(digits, "val")
    found, _ = predict_dataset(tiled.model, val, config)
    assert sum(len(d) for d in found) > 0
    for det, record in zip(found, val.records, strict=True):
        pixels = read_image(record.image_path)
        direct = detect_tiled(tiled.model, pixels, tiled.preprocess, asdict(config.detect), 32,
                              memory_format=tiled.memory_format)  # fmt: skip
        assert_same_detections(det, direct)
        assert_same_detections(tiled.predict(pixels), direct)  # tiles by default, as trained
        whole = tiled.predict(pixels, tile=0)
        assert len(whole) != len(direct) or not torch.allclose(whole.boxes, direct.boxes)


def test_predict_and_eval_warn_of_images_far_larger_than_the_input(digits, digits_run, tmp_path):
    """A 64x64 network shown 192x192 images without tiles: both commands say so, with the --tile to use."""
    from typer.testing import CliRunner

    from multibox.cli import app
    from multibox.data import DetectionSet, load_dataset
    from multibox.data.io import read_image, write_image
    from multibox.data.loading import write_dataset
    from multibox.data.records import Record

    val, _ = load_dataset(digits, "val")
    train, _ = load_dataset(digits, "train")
    records = (train.records + val.records)[:9]
    scenes = [read_image(r.image_path) for r in records]
    large = np.concatenate([np.concatenate(scenes[i : i + 3], axis=1) for i in (0, 3, 6)], axis=0)
    boxes = np.concatenate([r.boxes + [64 * (i % 3), 64 * (i // 3)] * 2 for i, r in enumerate(records)])
    labels = np.concatenate([r.labels for r in records])
    image = tmp_path / "big" / "JPEGImages" / "big.png"
    write_image(image, large)
    big = DetectionSet([Record(image, 192, 192, boxes.astype(np.float32), labels, image_id="big")], val.class_names)
    write_dataset(big, tmp_path / "big", "voc", "val")
    weights = str(digits_run / "best.pt")
    advice = "192x192, 3.0x the network's 64x64 input: its objects shrink 3.0 times; --tile 64"
    runner = CliRunner()
    result = runner.invoke(app, ["predict", "--weights", weights, str(image), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0 and advice in result.output, result.output
    result = runner.invoke(
        app, ["predict", "--weights", weights, str(image), "--tile", "64", "--out", str(tmp_path / "q")]
    )
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    args = [
        "eval",
        "--weights",
        weights,
        "--data",
        str(tmp_path / "big"),
        "--split",
        "val",
        "--out",
        str(tmp_path / "e"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and advice in result.output and "(val: big.png)" in result.output, result.output


def _all_pairs(boxes, labels, tile_index, cut, join_iou=0.5, contain=0.7):
    """The pieces of one object found by comparing every box with every other (``[N, N]``), as
    merge_tiles did before it compared overlapping tiles only: the reference."""
    from multibox.tiling import _overlap_1d

    other = (labels[:, None] == labels[None]) & (tile_index[:, None] != tile_index[None])
    x_inter, x_iou = _overlap_1d(boxes[:, 0], boxes[:, 2], boxes[:, 0], boxes[:, 2])
    y_inter, y_iou = _overlap_1d(boxes[:, 1], boxes[:, 3], boxes[:, 1], boxes[:, 3])
    across_x = cut[:, 2, None] & cut[None, :, 0] & (x_inter > 0) & (y_iou >= join_iou)
    across_y = cut[:, 3, None] & cut[None, :, 1] & (y_inter > 0) & (x_iou >= join_iou)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-9)
    inside = (x_inter * y_inter) / area[:, None] >= contain
    linked = other & (across_x | across_x.T | across_y | across_y.T | (inside & cut.any(dim=1)[:, None]))
    return {(min(i, j), max(i, j)) for i, j in linked.nonzero().tolist()}


def test_pieces_are_found_tile_pair_by_tile_pair_as_among_all_boxes():
    from multibox.tiling import _cut_sides, _in_image, _pieces_of_one_object

    generator = torch.Generator().manual_seed(3)
    windows = tile_windows(700, 900, 128, 0.2)
    found = []
    for x1, y1, x2, y2 in windows:
        n = int(torch.randint(0, 12, (1,), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * torch.tensor([x2 - x1, y2 - y1]) * 0.9
        boxes = torch.cat((xy, xy + torch.rand(n, 2, generator=generator) * 60 + 2), dim=1)
        boxes[:, 2:] = torch.minimum(boxes[:, 2:], torch.tensor([x2 - x1, y2 - y1], dtype=torch.float32))
        # many boxes cut by an edge of their tile: left, top, right or bottom
        side = torch.randint(0, 8, (n,), generator=generator)
        boxes[side == 0, 0], boxes[side == 1, 1] = 0.0, 0.0
        boxes[side == 2, 2], boxes[side == 3, 3] = float(x2 - x1), float(y2 - y1)
        found.append(
            Detections(boxes, torch.rand(n, generator=generator), torch.randint(0, 3, (n,), generator=generator))
        )
    boxes, tiles = _in_image(found, windows)
    labels = torch.cat([d.labels for d in found])
    tile_index = torch.cat([torch.full((len(d),), i) for i, d in enumerate(found)])
    cut = _cut_sides(boxes, tiles, (700, 900), 2.0)
    pairs = _pieces_of_one_object(boxes, labels, tile_index, windows, cut, 0.5, 0.7)
    expected = _all_pairs(boxes, labels, tile_index, cut)
    assert len(expected) > 5  # the case has joins to find
    assert {(min(i, j), max(i, j)) for i, j in pairs.tolist()} == expected
