"""ONNX export: the detection graph against ``model.detect``, onnxruntime against PyTorch, the CLI."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_same_detections

from multibox import load
from multibox.config import load_config
from multibox.export import DetectionGraph, export_onnx
from multibox.inference import OnnxPredictor, Predictor
from multibox.kinds import build_model
from multibox.structures import Detections

CLASSES = ["zero", "one", "two"]

# A small network of each kind of head: sigmoid (RetinaNet), softmax with a background column
# (toy SSD), sigmoid with an unused background column and tanh boxes (course grid), objectness (YOLO)
SMALL = {
    "cpu_digits": (64, ["model.fpn_channels=16"]),
    "toyssd": (64, []),
    "ssd_grid": (256, ["model.hidden=32"]),
    "ssd_multihead": (224, ["model.hidden=32"]),  # its head reads P4 (C5 merged into C4), 14x14 resized to 16x16
    "yolov3": (64, ["model.fpn_channels=8"]),
}


def _predictor(name: str) -> Predictor:
    size, extra = SMALL[name]
    overrides = ["model.pretrained=none", f"train.image_size=[{size}, {size}]", "train.score_thresh=0.0", *extra]
    config = load_config(name, overrides)
    torch.manual_seed(0)
    model = build_model(config.model, len(CLASSES), image_size=config.input.size).eval()
    # torchvision's MobileNetV2 initialisation without its ImageNet weights fades the features to
    # ~1e-9 at C5, which makes every score equal; inputs-preserving scales give distinct scores
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    # the grid heads' eval-mode BatchNorm (running statistics 0 and 1) normalises nothing, so their
    # outputs grow with each StdConv (P4's extra one: class logits of std ~10, whose sigmoids tie at
    # 1.0 in float32, and box outputs up to ~40); smaller predictor weights keep the scores distinct
    # and the outputs where float32 compares to 1e-4
    for out in getattr(model, "outs", []):
        out.cls.weight.data.mul_(0.25)
        out.box.weight.data.mul_(0.25)
    return Predictor(model, config, CLASSES, device="cpu")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_detection_graph_gives_detect_s_detections(name):
    predictor = _predictor(name)
    model, size = predictor.model, SMALL[name][0]
    graph = DetectionGraph(model, (size, size), score_thresh=0.0, topk=50, nms_iou=0.5, max_det=20).eval()
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        boxes, scores, labels = graph(images)
        expected = model.detect(model(images), (size, size), score_thresh=0.0, topk=50, nms_iou=0.5, max_det=20)
    assert boxes.shape == (3, 20, 4) and scores.shape == labels.shape == (3, 20)
    for i, det in enumerate(expected):
        n = len(det)
        assert n == int((scores[i] > 0).sum()) and n > 0
        assert torch.all(scores[i, n:] == 0) and torch.all(boxes[i, n:] == 0)  # padding after the detections
        # the graph takes the activation on all scores and detect on the candidates: an ulp apart
        assert_same_detections(Detections(boxes[i, :n], scores[i, :n], labels[i, :n]), det, box_atol=1e-5)


@pytest.mark.parametrize("name", ["cpu_digits", "ssd_multihead", "yolov3"])
def test_onnxruntime_gives_pytorch_s_detections_for_batches_of_1_and_4(name, tmp_path):
    import onnxruntime

    predictor = _predictor(name)
    size = SMALL[name][0]
    images = torch.randn(4, 3, size, size)
    # the TanhCoder scales an output by its anchor's size, up to 291 px on the 1x1 grid: an output
    # within 1e-4 of PyTorch's is a box within about 1e-2 px
    box_atol = 1e-2 if name == "ssd_multihead" else 1e-3
    with torch.no_grad():
        expected = predictor.model.detect(predictor.model(images), (size, size), score_thresh=0.0)
        raw = predictor.model(images)
    path = export_onnx(predictor, tmp_path / "nms.onnx", nms=True, dynamic_batch=True)
    session = onnxruntime.InferenceSession(str(path))
    for batch in (1, 4):
        boxes, scores, labels = session.run(None, {"images": images[:batch].numpy()})
        assert boxes.shape == (batch, 100, 4)
        for i in range(batch):
            keep = scores[i] > 0
            found = type(expected[i])(
                torch.from_numpy(boxes[i][keep]), torch.from_numpy(scores[i][keep]), torch.from_numpy(labels[i][keep])
            )
            # onnxruntime's kernels against PyTorch's: outputs within 1e-4 (checked below)
            assert_same_detections(found, expected[i], score_atol=1e-4, box_atol=box_atol)
    # the network alone: the head's outputs
    path = export_onnx(predictor, tmp_path / "raw.onnx", dynamic_batch=True)
    cls_logits, box_deltas = onnxruntime.InferenceSession(str(path)).run(None, {"images": images.numpy()})
    assert np.abs(cls_logits - raw.cls_logits.numpy()).max() <= 1e-4
    assert np.abs(box_deltas - raw.box_deltas.numpy()).max() <= 1e-4
    # without --dynamic-batch the graph takes one image
    path = export_onnx(predictor, tmp_path / "one.onnx", nms=True)
    with pytest.raises(Exception, match="images"):
        onnxruntime.InferenceSession(str(path)).run(None, {"images": images.numpy()})


def test_onnx_predictors_give_the_checkpoint_s_predictions_through_the_cli(digits, digits_run, tmp_path):
    from typer.testing import CliRunner

    from multibox.cli import app

    run = digits_run  # with its ImageNet weights: a from-scratch MobileNetV2 scores everything alike
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--weights", str(run / "best.pt"), "--nms", "--dynamic-batch",
                                 "--out", str(tmp_path / "nms.onnx")])  # fmt: skip
    assert result.exit_code == 0 and "with NMS" in result.output, result.output
    result = runner.invoke(app, ["export", "--weights", str(run / "best.pt"), "--out", str(tmp_path / "raw.onnx")])
    assert result.exit_code == 0, result.output
    images = sorted(str(p) for p in (digits / "JPEGImages").glob("val_*.jpg"))
    predictions = {}
    for name, weights, runtime in [("torch", run / "best.pt", "torch"), ("nms", tmp_path / "nms.onnx", "onnx"),
                                   ("raw", tmp_path / "raw.onnx", "auto")]:  # fmt: skip
        out = tmp_path / name
        args = ["predict", "--weights", str(weights), "--runtime", runtime, "--conf", "0.01", "--out", str(out)]
        result = runner.invoke(app, [*args, *images])
        assert result.exit_code == 0, result.output
        predictions[name] = json.loads((out / "predictions.json").read_text())
    assert predictions["torch"], "the run should predict something at score 0.01"
    for name in ("nms", "raw"):
        assert len(predictions[name]) == len(predictions["torch"])
        for got, want in zip(predictions[name], predictions["torch"], strict=True):
            assert got["image_id"] == want["image_id"] and got["category"] == want["category"]
            assert np.allclose(got["bbox"], want["bbox"], atol=0.02) and abs(got["score"] - want["score"]) <= 1e-4
    # the metadata carries what prediction needs
    detector = load(tmp_path / "nms.onnx")
    assert isinstance(detector, OnnxPredictor) and detector.class_names == load(run / "best.pt").class_names
    with pytest.raises(ValueError, match=r"NMS at IoU 0\.5, top-1000 and max_det 100 in its graph"):
        detector.predict(images[0], iou=0.7)
    assert len(load(tmp_path / "raw.onnx").predict(images[0], iou=0.7, conf=0.0)) > 0  # decoded on the host
    # multibox eval runs either graph as it runs the checkpoint
    metrics = {}
    for name, weights in [("torch", run / "best.pt"), ("nms", tmp_path / "nms.onnx"), ("raw", tmp_path / "raw.onnx")]:
        result = runner.invoke(
            app, ["eval", "--weights", str(weights), "--data", str(digits), "--out", str(tmp_path / name)]
        )
        assert result.exit_code == 0, result.output
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    for name in ("nms", "raw"):
        assert metrics[name]["AP"] == pytest.approx(metrics["torch"]["AP"], abs=1e-4)
        assert metrics[name]["AR100"] == pytest.approx(metrics["torch"]["AR100"], abs=1e-4)


def test_bad_exports_and_onnx_files_are_clear_errors(tmp_path):
    from typer.testing import CliRunner

    from multibox.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["export", "--weights", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2 and "missing.pt: checkpoint not found" in result.output
    result = runner.invoke(app, ["export", "--weights", str(tmp_path / "missing.pt"), "--format", "tflite"])
    assert result.exit_code == 2 and "--format must be onnx" in result.output
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match=r"bad\.onnx: not a readable ONNX file"):
        load(tmp_path / "bad.onnx")
    image = tmp_path / "x.jpg"
    from multibox.data.io import write_image

    write_image(image, np.zeros((32, 32, 3), np.uint8))
    result = runner.invoke(app, ["predict", "--weights", str(tmp_path / "bad.onnx"), str(image)])
    assert result.exit_code == 2 and "not a readable ONNX file" in result.output
    result = runner.invoke(app, ["predict", "--weights", str(tmp_path / "m.pt"), "--runtime", "onnx", str(image)])
    assert result.exit_code == 2 and "multibox export" in result.output
    config = load_config("largest_cls", ["model.pretrained=none", "train.image_size=[64, 64]"])
    single = Predictor(build_model(config.model, 3, image_size=(64, 64)), config, CLASSES, device="cpu")
    with pytest.raises(ValueError, match="covers the detectors with anchors"):
        export_onnx(single, tmp_path / "single.onnx")


def test_int8_export_quantizes_the_inner_convolutions_and_keeps_the_outputs(digits, digits_run, tmp_path):
    import onnx
    import onnxruntime

    from multibox.data.io import read_image

    images = digits / "JPEGImages"
    fp32 = export_onnx(digits_run / "best.pt", tmp_path / "fp32.onnx", dynamic_batch=True)
    int8 = export_onnx(digits_run / "best.pt", tmp_path / "int8.onnx", dynamic_batch=True, int8=True, calib=images)
    graph = onnx.load(str(int8)).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    quantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    inner = [c for c in convs if c.input[1] in quantized]  # weights through DequantizeLinear
    assert len(inner) >= len(convs) - 7  # all but the stem and the 6 predictors (cls and box, 3 levels)
    assert convs[0].input[1] not in quantized
    assert load(int8).metadata["int8"] and not load(fp32).metadata["int8"]
    detector = load(digits_run / "best.pt")
    batch = torch.cat([detector.prepare(read_image(p)) for p in sorted(images.glob("val_*.jpg"))]).numpy()
    ref = onnxruntime.InferenceSession(str(fp32)).run(None, {"images": batch})
    got = onnxruntime.InferenceSession(str(int8)).run(None, {"images": batch})
    # the same function to INT8 precision (a one-epoch model calibrated on 20 tiny scenes: 0.93; a
    # scale or zero point gone wrong gives no correlation). AP: BENCHMARKS.md, bench/onnx_latency.py
    for a, b in zip(ref, got, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9, (a.std(), np.abs(a - b).mean())
    with pytest.raises(ValueError, match="needs calibration images"):
        export_onnx(digits_run / "best.pt", tmp_path / "x.onnx", int8=True)
    with pytest.raises(ValueError, match="no images to calibrate"):
        export_onnx(digits_run / "best.pt", tmp_path / "x.onnx", int8=True, calib=tmp_path / "empty")


def test_export_leaves_the_predictor_s_network_as_it_was(digits_run, tmp_path):
    """torch.onnx.export restores the mode of the module it traced: the detection graph's wrapper,
    new and so in training mode, once put the predictor's network (BatchNorm and all) in training.
    And the export's contiguous float32 copy is a copy: it once converted the predictor's
    channels-last weights in place, which made its network (and a benchmark's peer sharing its
    backbone) twice as slow afterwards."""
    predictor = load(digits_run / "best.pt", device="cpu")
    assert predictor.config.train.channels_last

    def layouts():
        return [p.is_contiguous(memory_format=torch.channels_last) for p in predictor.model.parameters() if p.ndim == 4]

    before = layouts()
    assert any(before)  # the convolutions' weights are channels-last
    export_onnx(predictor, tmp_path / "nms.onnx", nms=True)
    assert not any(module.training for module in predictor.model.modules())
    assert layouts() == before
