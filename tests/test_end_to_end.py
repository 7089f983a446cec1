"""Train, lr-find, eval and predict through the CLI on VOC, COCO, YOLO and CSV copies of one dataset.

The dataset mixes small digit scenes with two hard cases: an image far larger than the input
size (2400 x 1800, boxes in its corners) and an image with 300 small objects.
"""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from multibox.cli import app
from multibox.data import DetectionSet, load_dataset
from multibox.data.io import write_image
from multibox.data.loading import convert, write_dataset
from multibox.data.records import Record
from multibox.data.synthetic import SceneConfig, synthesize_digits

TINY = [
    "model.backbone=resnet18",
    "model.pretrained=none",
    "model.fpn_channels=16",
    "model.head_convs=1",
    "model.anchor_sizes=[8, 16, 32, 64, 128]",
    "train.image_size=[96, 96]",
    "train.batch_size=3",
    "train.warmup_steps=1",
    "train.epochs=1",
    "train.score_thresh=0.0",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A VOC dataset: 8 + 3 digit scenes, plus a huge image and a crowded one in each split."""
    root = tmp_path_factory.mktemp("mixed")
    scenes = tmp_path_factory.mktemp("scenes")
    synthesize_digits(scenes, train=8, val=3, seed=1, config=SceneConfig(size=96, max_digits=3, min_height=8))
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        data, _ = load_dataset(scenes, split)
        huge = root / "extra" / f"{split}_huge.jpg"
        write_image(huge, rng.integers(0, 255, (1800, 2400, 3), dtype=np.uint8))
        huge_boxes = np.array([[0, 0, 600, 500], [1900, 1300, 2399, 1799], [1000, 700, 1400, 1200]], np.float32)
        crowded = root / "extra" / f"{split}_crowded.jpg"
        write_image(crowded, rng.integers(0, 255, (600, 800, 3), dtype=np.uint8))
        ys, xs = np.mgrid[0:15, 0:20]
        small = np.stack([xs * 40 + 5, ys * 40 + 5, xs * 40 + 21, ys * 40 + 21], -1).reshape(-1, 4).astype(np.float32)
        records = [
            *data.records,
            Record(huge, 1800, 2400, huge_boxes, np.array([1, 2, 3])),
            Record(crowded, 600, 800, small, rng.integers(0, 10, len(small))),
        ]
        write_dataset(DetectionSet(records, data.class_names), root, "voc", split)
    return root


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo", "csv"])
def test_train_lr_find_eval_predict_in_every_format(source, fmt, tmp_path):
    data = source if fmt == "voc" else tmp_path / fmt
    if fmt != "voc":
        convert(source, data, fmt)
    val, _ = load_dataset(data, "val")
    assert len(val.records) == 5 and max(len(r.boxes) for r in val.records) == 300
    assert max(r.width for r in val.records) == 2400
    runner = CliRunner()

    run = tmp_path / "run"
    defaults = run.parent / "defaults.yaml"  # the configuration's own defaults, not the default recipe
    defaults.write_text("{}\n")
    result = runner.invoke(app, ["train", "--config", str(defaults), f"data.path={data}", f"output={run}", *TINY])
    assert result.exit_code == 0, result.output
    assert "final: AP" in result.output
    for name in ("best.pt", "last.pt", "config.yaml", "train_log.csv", "val_log.csv", "losses.png", "pr_curves.png"):
        assert (run / name).is_file(), name

    lr = ["lr-find", "--config", str(defaults), f"data.path={data}", *TINY, "--out", str(tmp_path / "lr")]
    result = runner.invoke(app, [*lr, "--steps", "6", "--end", "1"])
    assert result.exit_code == 0, result.output
    assert "suggested lr" in result.output and (tmp_path / "lr" / "lr_find.png").is_file()

    result = runner.invoke(
        app, ["eval", "--weights", str(run / "best.pt"), "--data", str(data), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["AP"] <= 1 and (tmp_path / "pr_curves.png").is_file()

    huge = next(r.image_path for r in val.records if r.width == 2400)
    out = tmp_path / "predictions"
    result = runner.invoke(
        app, ["predict", "--weights", str(run / "best.pt"), str(huge), "--out", str(out), "--conf", "0"]
    )
    assert result.exit_code == 0, result.output
    found = json.loads((out / "predictions.json").read_text())
    assert found and all(0 <= d["bbox"][0] and d["bbox"][0] + d["bbox"][2] <= 2400 for d in found)
    assert max(d["bbox"][0] + d["bbox"][2] for d in found) > 96  # mapped back to the original pixels


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo", "csv"])
def test_anchor_doctor_in_every_format(source, fmt, tmp_path):
    from multibox.anchor_doctor import anchor_coverage
    from multibox.models import AnchorConfig

    data = source if fmt == "voc" else tmp_path / fmt
    if fmt != "voc":
        convert(source, data, fmt)
    out = tmp_path / "doctor"
    result = CliRunner().invoke(
        app, ["anchors", "--data", str(data), "--preset", "retinanet_r50_fpn", "--image-size", "96", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "fitted (k-means)" in result.output and "IoU>=0.5" in result.output
    report = json.loads((out / "anchors.json").read_text())
    # the same boxes in every format: the VOC source's coverage, to one box (YOLO stores rounded coordinates)
    voc, _ = load_dataset(source, "train")
    paper = AnchorConfig(**report["current"]["anchors"])
    expected = anchor_coverage(voc, paper, (96, 96), "minmax")
    for got, want in zip(report["current"]["rows"], expected.rows, strict=True):
        assert got["count"] == want["count"]
        if want["count"]:
            assert got["iou>=0.5"] == pytest.approx(want["iou>=0.5"], abs=1.01 / want["count"])
    assert report["suggested"]["rows"][-1]["iou>=0.5"] > report["current"]["rows"][-1]["iou>=0.5"]
    assert report["suggested"]["overrides"].startswith("model.retinanet.anchor_sizes=[")
    assert (out / "anchors_missed.png").is_file()  # the 300 tiny boxes of the crowded image are missed
