"""OpenVINO as a runtime: fp32 equal to PyTorch, bf16 and INT8 close to fp32, the CLI's round
trips, and a CPU without bf16 told so."""

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import agreement, assert_same_detections

from multibox import load
from multibox.config import load_config
from multibox.engine import train
from multibox.export import export_openvino
from multibox.inference import OpenVinoPredictor
from multibox.inference import openvino as ov_runtime

HAS_BF16 = "BF16" in ov_runtime.cpu_capabilities()


@pytest.fixture(scope="module")
def yolo_run(digits, tmp_path_factory):
    """YOLOv3 (ImageNet MobileNetV2, offline) trained a few steps at 64x64: distinct scores."""
    run = tmp_path_factory.mktemp("yolo_run")
    overrides = [f"data.path={digits}", f"output={run}", "data.val_split=", "input.size=[64, 64]",
                 "train.batch_size=4", "train.max_steps=4", "train.precompute=false",
                 "detect.score_thresh=0.001"]  # fmt: skip
    torch.manual_seed(0)
    train(load_config("yolov3", overrides), progress=False)
    return run


def _images(digits) -> list[str]:
    return sorted(str(p) for p in (digits / "JPEGImages").glob("*.jpg"))[:6]


@pytest.mark.parametrize("kind", ["retinanet", "yolov3"])
def test_openvino_fp32_gives_pytorch_s_detections(kind, digits, digits_run, yolo_run, tmp_path):
    run = digits_run if kind == "retinanet" else yolo_run
    checkpoint = load(run / ("best.pt" if kind == "retinanet" else "last.pt"), device="cpu")
    assert checkpoint.config.model.kind == kind
    detector = load(export_openvino(checkpoint, tmp_path / "model.xml"))
    assert isinstance(detector, OpenVinoPredictor) and detector.precision == "fp32"
    assert detector.class_names == checkpoint.class_names
    found, conf = 0, checkpoint.config.detect.score_thresh  # the graph's threshold, baked in at export
    for image in _images(digits):
        mine, theirs = detector.predict(image, conf=conf), checkpoint.predict(image, conf=conf)
        # fp32 asked for explicitly (OpenVINO would pick bf16 on an AMX CPU): the same detections,
        # labels equal, scores within 1e-4, boxes within 1e-3 px (the tolerances)
        assert_same_detections(mine, theirs, score_atol=1e-4, box_atol=1e-3)
        found += len(mine)
    assert found > 0


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_bf16_and_int8_agree_with_fp32(precision, digits, trained_run, tmp_path):
    if precision == "bf16" and not HAS_BF16:
        pytest.skip("this CPU has no bf16 for OpenVINO (the message is tested below)")
    checkpoint = load(trained_run / "last.pt", device="cpu")
    fp32 = load(export_openvino(checkpoint, tmp_path / "fp32.xml"))
    import nncf  # noqa: F401  (it sets its logger's level when imported)

    nncf_level = logging.getLogger("nncf").level
    other = load(export_openvino(checkpoint, tmp_path / f"{precision}.xml", precision,
                                 calib=digits / "JPEGImages", calib_images=16))  # fmt: skip
    assert other.precision == precision
    assert logging.getLogger("nncf").level == nncf_level  # quietened during the quantization only
    shares = []
    for image in sorted(str(p) for p in (digits / "JPEGImages").glob("*.jpg")):  # all 20 scenes
        reference = fp32.predict(image, conf=0.3)  # the detections fp32 is sure of
        shares.append((agreement(other.predict(image, conf=0.2), reference), len(reference)))
    total = sum(count for _, count in shares)
    assert total >= 10
    assert sum(share * count for share, count in shares) / total >= 0.8  # most boxes at IoU >= 0.9
    if precision == "int8":
        assert _quantized_post_processing(tmp_path / "int8.xml") == []


def _quantized_post_processing(path) -> list[str]:
    """The post-processing operations (ONNX names ``/Op_N``, the network's being ``/model/...``)
    fed by an int8 constant or a FakeQuantize: NNCF once stored the anchors, a ``Gather``'s data,
    in int8, moving boxes by half a pixel."""
    import openvino

    found = []
    for op in openvino.Core().read_model(str(path)).get_ordered_ops():
        if not op.get_friendly_name().startswith("/") or op.get_friendly_name().startswith("/model/"):
            continue
        for value in op.input_values():
            source = value.get_node()
            if source.get_type_name() == "Convert":  # int8 weights are stored as Constant -> Convert
                source = source.input_value(0).get_node()
            quantized = source.get_type_name() == "FakeQuantize" or (
                source.get_type_name() == "Constant" and source.get_element_type().is_integral()
                and source.get_element_type().bitwidth == 8
            )  # fmt: skip
            if quantized:
                found.append(f"{op.get_friendly_name()} <- {source.get_friendly_name()}")
    return found


def test_cli_exports_predicts_and_evaluates_an_openvino_ir(digits, digits_run, tmp_path):
    from typer.testing import CliRunner

    from multibox.cli import app

    runner = CliRunner()
    target = tmp_path / "ir" / "digits.xml"
    result = runner.invoke(app, ["export", "--weights", str(digits_run / "best.pt"), "--format", "openvino",
                                 "--dynamic-batch", "--out", str(target)])  # fmt: skip
    assert result.exit_code == 0 and "OpenVINO IR with NMS, batch any, fp32" in result.output, result.output
    assert sorted(p.name for p in target.parent.iterdir()) == ["digits.bin", "digits.xml"]  # no temporary left
    predictions = {}
    for name, weights in [("torch", digits_run / "best.pt"), ("openvino", target)]:
        out = tmp_path / f"predict-{name}"
        args = ["predict", "--weights", str(weights), "--runtime", "auto" if name == "torch" else "openvino",
                "--conf", "0.01", "--out", str(out), *_images(digits)]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        predictions[name] = json.loads((out / "predictions.json").read_text())
    assert len(predictions["openvino"]) == len(predictions["torch"]) > 0
    for got, want in zip(predictions["openvino"], predictions["torch"], strict=True):
        assert got["category"] == want["category"] and np.allclose(got["bbox"], want["bbox"], atol=2e-3)
    metrics = {}
    for name, weights in [("torch", digits_run / "best.pt"), ("openvino", target)]:
        result = runner.invoke(app, ["eval", "--weights", str(weights), "--data", str(digits), "--out",
                                     str(tmp_path / f"eval-{name}")])  # fmt: skip
        assert result.exit_code == 0, result.output
        metrics[name] = json.loads((tmp_path / f"eval-{name}" / "metrics.json").read_text())
    assert metrics["openvino"]["AP"] == pytest.approx(metrics["torch"]["AP"], abs=1e-4)


def test_a_cpu_without_bf16_and_bad_options_get_clear_errors(digits, digits_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from multibox.cli import app

    runner = CliRunner()
    weights = str(digits_run / "best.pt")
    monkeypatch.setattr(ov_runtime, "cpu_capabilities", lambda: ["FP32", "INT8", "EXPORT_IMPORT"])
    with pytest.raises(ValueError, match=r"bf16 needs a CPU with bf16 instructions .* FP32, INT8"):
        export_openvino(weights, tmp_path / "bf16.xml", "bf16")
    result = runner.invoke(app, ["export", "--weights", weights, "--format", "openvino", "--precision", "bf16",
                                 "--out", str(tmp_path / "bf16.xml")])  # fmt: skip
    assert result.exit_code == 2 and "use --precision fp32" in result.output
    assert not list(tmp_path.iterdir())  # nothing written
    cases = [
        (["--precision", "bf16"], "--precision bf16 is OpenVINO's: add --format openvino"),
        (["--format", "openvino", "--int8"], "for OpenVINO give --precision int8 --calib FOLDER"),
        (["--format", "openvino", "--precision", "int8"], "INT8 export needs calibration images: --calib FOLDER"),
        (["--format", "openvino", "--out", str(tmp_path / "x.onnx")], "an OpenVINO IR is an .xml file"),
        (["--format", "openvino", "--precision", "fp16"], "--precision must be one of fp32, bf16, int8"),
    ]
    for options, message in cases:
        result = runner.invoke(app, ["export", "--weights", weights, *options])
        assert result.exit_code == 2 and message in result.output, (options, result.output)
    (tmp_path / "lonely.xml").write_text("<net/>")
    with pytest.raises(FileNotFoundError, match=r"lonely\.xml: OpenVINO IR not found .* \.bin beside it"):
        load(tmp_path / "lonely.xml")
    result = runner.invoke(app, ["predict", "--weights", weights, "--runtime", "openvino", _images(digits)[0]])
    assert result.exit_code == 2 and "--runtime openvino runs a .xml file" in result.output


def test_an_openvino_ir_is_served(digits, trained_run, tmp_path):
    """An INT8 IR behind a real uvicorn: its inference runs in the server's thread, answers equal
    the IR's own predictions, and 200 requests 8 at a time get 200s (OpenVINO's compiled model is
    called from that one thread only)."""
    from test_serve import Server

    from multibox.data.io import read_image
    from multibox.inference.serve import create_app

    detector = load(export_openvino(load(trained_run / "last.pt", device="cpu"), tmp_path / "int8.xml", "int8",
                                    calib=digits / "JPEGImages", calib_images=16))  # fmt: skip
    path = sorted((digits / "JPEGImages").glob("val_*.jpg"))[0]
    expected = detector.predict(read_image(path), conf=0.05)
    with Server(create_app(detector)) as server:
        status, health = server.request("/healthz")
        assert status == 200 and health["classes"] == detector.class_names
        status, raw = server.request("/v1/detect?conf=0.05", path.read_bytes(), {"Content-Type": "image/jpeg"})
        assert status == 200 and len(raw["detections"]) == len(expected) > 0
        assert np.allclose([d["box"] for d in raw["detections"]], expected.boxes.tolist(), atol=0.01)
        assert [d["label"] for d in raw["detections"]] == expected.labels.tolist()
        data = path.read_bytes()
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: server.request("/v1/detect", data, {"Content-Type": "image/jpeg"})[0],
                                     range(200)))  # fmt: skip
    assert statuses == [200] * 200
