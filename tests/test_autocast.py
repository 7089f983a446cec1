"""The guard that runs one-column strided convolutions in float32 under CPU bf16 autocast."""

import pytest
import torch
from torch import nn

from multibox.models.autocast import guard_bf16_strided_convs


@pytest.mark.parametrize("size", [(1, 1), (4, 1), (1, 4), (2, 2)])  # stride 2 or 3 wider than the input's side
def test_guarded_convolutions_give_the_true_weight_gradient(size):
    stride = 3 if size == (2, 2) else 2
    model = nn.Sequential(nn.Conv2d(8, 8, 3, stride, 1), nn.Conv2d(8, 8, 1))
    assert guard_bf16_strided_convs(model) == 1  # the 1x1 conv has no padding and no stride
    conv = model[0]
    x = torch.randn(2, 8, *size, requires_grad=True)
    junk = torch.full((1 << 16,), 1e30)  # what the allocator hands out next held 1e30: garbage shows
    del junk
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        assert y.dtype == torch.float32 and torch.is_autocast_enabled("cpu")  # float32 inside, autocast after
    grad = torch.randn(y.shape)
    y.backward(grad)
    expected = nn.grad.conv2d_weight(x.detach().double(), conv.weight.shape, grad.double(), stride=stride, padding=1)
    # float32 arithmetic: the true gradient to float32 rounding, the padding-only taps exactly 0
    torch.testing.assert_close(conv.weight.grad.double(), expected, rtol=1e-5, atol=1e-6)
    assert int((expected == 0).sum()) > 0 and bool((conv.weight.grad[expected == 0] == 0).all())


def test_convolutions_wider_than_their_stride_stay_in_bf16():
    conv = nn.Conv2d(8, 8, 3, 2, 1)
    guard_bf16_strided_convs(conv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 8, 4, 4)).dtype == torch.bfloat16
    assert conv(torch.randn(1, 8, 1, 1)).dtype == torch.float32  # no autocast: untouched
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError):
        conv(torch.randn(1, 3, 1, 1))  # a failing call still leaves autocast as it was
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 8, 8, 8)).dtype == torch.bfloat16


def test_bf16_inference_keeps_fp32_s_detections(digits, trained_run):
    """``precision="bf16"``: the network under autocast, the post-processing in float32 (its
    outputs are handed over as float32); bf16 rounds the features, so detections are compared as
    the OpenVINO bf16 IR's are: most confident fp32 boxes kept at IoU >= 0.9, same label."""
    from conftest import agreement

    from multibox import load

    fp32 = load(trained_run / "last.pt", device="cpu")
    bf16 = load(trained_run / "last.pt", device="cpu", precision="bf16")
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    network = bf16._network
    image = torch.zeros(1, 3, 64, 64)
    output = network(image)
    assert all(part.dtype == torch.float32 for part in output)
    with torch.no_grad():
        plain = bf16.model(image)
    assert not torch.equal(output.cls_logits, plain.cls_logits)  # the autocast ran: bf16 rounding
    shares = []
    for image in sorted(str(p) for p in (digits / "JPEGImages").glob("*.jpg")):
        reference = fp32.predict(image, conf=0.3)
        shares.append((agreement(bf16.predict(image, conf=0.2), reference), len(reference)))
    total = sum(count for _, count in shares)
    assert total >= 10
    assert sum(share * count for share, count in shares) / total >= 0.8


def test_bf16_inference_is_refused_where_it_does_not_apply(digits_run, tmp_path):
    from multibox import load
    from multibox.config import load_config
    from multibox.export import export_onnx
    from multibox.inference import Predictor
    from multibox.kinds import build_model

    with pytest.raises(ValueError, match="precision must be fp32 or bf16, got 'fp16'"):
        load(digits_run / "best.pt", device="cpu", precision="fp16")
    config = load_config("faster_rcnn", ["model.backbone.pretrained=none", "input.size=[64, 64]"])
    model = build_model(config.model, 2, image_size=config.input.size)
    with pytest.raises(ValueError, match="bf16 inference covers the dense detectors; a faster_rcnn runs in fp32"):
        Predictor(model, config, ["a", "b"], device="cpu", precision="bf16")
    onnx = export_onnx(digits_run / "best.pt", tmp_path / "digits.onnx", nms=True)
    with pytest.raises(ValueError, match="onnxruntime runs the graph as exported"):
        load(onnx, precision="bf16")


def test_cli_predict_in_bf16(digits, digits_run, tmp_path):
    from typer.testing import CliRunner

    from multibox.cli import app

    images = sorted(str(p) for p in (digits / "JPEGImages").glob("*.jpg"))[:2]
    result = CliRunner().invoke(app, ["predict", "--weights", str(digits_run / "best.pt"), "--precision", "bf16",
                                      "--conf", "0.01", "--out", str(tmp_path / "out"), *images])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 images" in result.output and (tmp_path / "out" / "predictions.json").is_file()
    result = CliRunner().invoke(app, ["predict", "--weights", str(digits_run / "best.pt"), "--precision", "fp8",
                                      "--out", str(tmp_path / "bad"), *images])  # fmt: skip
    assert result.exit_code == 2 and "precision must be fp32 or bf16, got 'fp8'" in result.output
