"""The course's single-object steps: criterion and metrics against hand-worked cases, models,
training that lowers the loss, and the CLI from training to prediction."""

import json
import math

import numpy as np
import pytest
import torch
from data_helpers import fit_one_batch
from typer.testing import CliRunner

from multibox.cli import app
from multibox.config import load_config
from multibox.criterion import SingleObjectCriterion, largest_objects
from multibox.engine import Trainer
from multibox.metrics import multilabel_metrics, single_object_metrics
from multibox.models import SINGLE_TASKS, SingleObjectNet, SingleOutput
from multibox.structures import Detections

TINY = ["model.backbone=resnet18", "model.pretrained=none", "train.image_size=[64, 64]", "train.batch_size=4"]


def _targets():
    return [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 35.0, 25.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[2.0, 2.0, 6.0, 6.0], [10.0, 10.0, 14.0, 14.0]]), "labels": torch.tensor([0, 1])},
    ]


def test_largest_objects_pick_the_largest_box_and_mask_empty_images():
    boxes, labels, present = largest_objects(_targets())
    assert boxes.tolist() == [[5, 5, 35, 25], [0, 0, 0, 0], [2, 2, 6, 6]]  # a tie keeps the first box
    assert labels.tolist() == [2, 0, 0] and present.tolist() == [True, False, True]


def test_single_object_criterion_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0], [5.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    boxes = torch.tensor([[5.0, 5.0, 35.0, 21.0], [9.0, 9.0, 9.0, 9.0], [2.0, 3.0, 6.0, 8.0]])
    losses = SingleObjectCriterion("single_object", cls_weight=20.0)(SingleOutput(logits, boxes), _targets())

    def ce(row, label):
        return math.log(sum(math.exp(v) for v in row)) - row[label]

    cls = (ce([0.0, 1.0, 2.0], 2) + ce([1.0, 0.0, 0.0], 0)) / 2  # the empty image does not count
    box = ((0 + 0 + 0 + 4) / 4 + (0 + 1 + 0 + 2) / 4) / 2
    assert losses["cls"].item() == pytest.approx(cls, rel=1e-6)
    assert losses["box"].item() == pytest.approx(box, rel=1e-6)
    assert losses["total"].item() == pytest.approx(box + 20 * cls, rel=1e-6)
    only_box = SingleObjectCriterion("largest_box")(SingleOutput(None, boxes), _targets())
    assert only_box["total"].item() == pytest.approx(box) and only_box["cls"].item() == 0

    multi = SingleObjectCriterion("multilabel")(SingleOutput(logits, None), _targets())
    present = [[0, 1, 1], [0, 0, 0], [1, 1, 0]]
    bce = [
        -(p * math.log(1 / (1 + math.exp(-x))) + (1 - p) * math.log(1 - 1 / (1 + math.exp(-x))))
        for row, prow in zip(logits.tolist(), present, strict=True)
        for x, p in zip(row, prow, strict=True)
    ]
    assert multi["total"].item() == pytest.approx(sum(bce) / 9, rel=1e-6)


@pytest.mark.parametrize("task", SINGLE_TASKS)
def test_models_give_their_outputs_and_detections(task):
    torch.manual_seed(0)
    model = SingleObjectNet(4, task, (64, 96), "resnet18", "none")
    out = model(torch.randn(2, 3, 64, 96))
    assert (out.cls_logits is None) == (task == "largest_box")
    assert (out.boxes is None) == (task in ("largest_cls", "multilabel"))
    if out.boxes is not None:
        assert out.boxes.shape == (2, 4)
        boxes = out.boxes.detach()
        assert bool((boxes[:, :2] <= boxes[:, 2:]).all()) and float(boxes[:, 2].max()) <= 96
    sum(part.sum() for part in out if part is not None).backward()  # gradients flow
    model.eval()
    with torch.no_grad():
        found = model.detect(model(torch.randn(2, 3, 64, 96)), (64, 96), score_thresh=0.0)
    assert len(found) == 2 and all(len(d) == (4 if task == "multilabel" else 1) for d in found)
    if task in ("largest_box", "single_object"):
        with pytest.raises(ValueError, match="flattens the feature map of a 64x96 input"):
            model(torch.randn(1, 3, 64, 64))


def test_single_object_metrics_by_hand():
    targets = [
        {"boxes": np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 20.0]]), "labels": np.array([0, 1])},
        {"boxes": np.array([[0.0, 0.0, 10.0, 10.0]]), "labels": np.array([2])},
        {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)},  # no largest object: not counted
    ]
    detections = [
        Detections(torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([0.9]), torch.tensor([1])),
        Detections(torch.tensor([[5.0, 0.0, 15.0, 10.0]]), torch.tensor([0.8]), torch.tensor([0])),
        Detections(torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.tensor([0.7]), torch.tensor([0])),
    ]
    metrics = single_object_metrics(detections, targets, 3, "single_object")
    assert metrics["images"] == 2 and metrics["accuracy"] == 0.5
    assert metrics["IoU"] == pytest.approx((1 + 50 / 150) / 2)
    assert metrics["L1"] == pytest.approx((0 + (5 + 0 + 5 + 0) / 4) / 2)
    assert metrics["AP50"] == pytest.approx(0.5, abs=1e-6)  # class 1 found (AP 1), class 2 missed (AP 0)


def test_multilabel_metrics_by_hand():
    present = np.array([[1, 0], [0, 1], [1, 1]])
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.4, 0.8]])
    metrics = multilabel_metrics(probs, present)
    assert metrics["accuracy"] == pytest.approx(4 / 6) and metrics["exact"] == pytest.approx(1 / 3)
    assert metrics["F1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # class 0 ranks 0.9 (hit), 0.6 (miss), 0.4 (hit): AP (1 + 2/3) / 2; class 1: 0.8, 0.7 hits, AP 1
    assert metrics["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


@pytest.mark.parametrize("task", SINGLE_TASKS)
def test_a_few_steps_on_one_batch_lower_the_loss(digits, tmp_path, task):
    # BatchNorm with batch statistics: a random-weight ResNet with frozen BatchNorm has no
    # normalisation, and its C5 is too large for a flattening head to learn from in 15 steps
    overrides = [f"data.path={digits}", f"output={tmp_path}", *TINY, "model.dropout=0.0", "model.frozen_bn=false"]
    run = Trainer(load_config(task, overrides))
    first, last = fit_one_batch(run)
    assert last < 0.8 * first


def test_the_backbone_learns_at_its_own_rate(digits, tmp_path):
    run = Trainer(load_config("single_object", [f"data.path={digits}", f"output={tmp_path}", *TINY]))
    rate = {id(p): group["lr"] for group in run.optimizer.param_groups for p in group["params"]}
    for name, parameter in run.model.named_parameters():
        if parameter.requires_grad:
            assert rate[id(parameter)] == pytest.approx(1e-4 if name.startswith("backbone.") else 1e-3), name


def test_train_eval_predict_through_the_cli(digits, tmp_path):
    run = tmp_path / "run"
    args = [f"data.path={digits}", f"output={run}", *TINY, "train.epochs=1", "train.warmup_steps=1"]
    result = CliRunner().invoke(app, ["train", "--preset", "single_object", *args])
    assert result.exit_code == 0, result.output
    assert "final: AP" in result.output and "accuracy" in result.output and "IoU" in result.output
    logged = (run / "val_log.csv").read_text().splitlines()[0].split(",")
    assert {"accuracy", "IoU", "L1", "AP", "AP50"} <= set(logged)

    weights = str(run / "best.pt")
    result = CliRunner().invoke(app, ["eval", "--weights", weights, "--data", str(digits), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["IoU"] <= 1 and metrics["images"] > 0

    image = next((digits / "JPEGImages").glob("val_*.jpg"))
    out = tmp_path / "p"
    result = CliRunner().invoke(app, ["predict", "--weights", weights, str(image), "--out", str(out), "--conf", "0"])
    assert result.exit_code == 0, result.output
    assert len(json.loads((out / "predictions.json").read_text())) == 1  # one object per image

    both = CliRunner().invoke(app, ["train", "--preset", "single_object", "--config", "cpu_digits"])
    assert both.exit_code == 2 and "not both" in both.output
