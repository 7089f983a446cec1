"""Every kind in the table trains a step, comes back from its checkpoint, predicts and exports."""

import numpy as np
import pytest
import torch
from conftest import assert_same_detections

from multibox import load
from multibox.checkpoint import load_checkpoint
from multibox.config import PRESETS, load_config
from multibox.data import load_dataset
from multibox.engine import train
from multibox.export import export_onnx
from multibox.kinds import KINDS, kind_of

# each kind's preset, at the smallest input its network takes quickly (the SSD family and
# YOLOv3 are built for one input size)
PRESET = {name: name for name in KINDS} | {"retinanet": "cpu_digits"}
NO_ANCHORS = {"yolov1"}  # dense outputs (one per cell and box), nothing an anchor doctor could measure
SIZE = {"ssd_grid": 128, "ssd_multihead": 128, "ssd300": 300, "ssdlite": 96}


def test_every_kind_has_a_preset_and_its_entry_is_whole():
    for name, kind in KINDS.items():
        assert kind.name == name and PRESET[name] in PRESETS
        assert kind_of(load_config(PRESET[name])) is kind
        # the detectors with anchors, and only they, have a doctor; YOLOv1 is dense without anchors (its cells)
        assert (kind.doctor is not None) == (kind.dense and name not in NO_ANCHORS)
    with pytest.raises(ValueError, match=r"model.kind must be one of \('retinanet', "):
        kind_of(load_config(None, ["model.kind=fasterrcnn"]))


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_trains_comes_back_predicts_and_exports(name, digits, tmp_path):
    size = SIZE.get(name, 64)
    overrides = [f"data.path={digits}", f"output={tmp_path / 'run'}", "data.val_split=",
                 "model.backbone.pretrained=none", f"input.size=[{size}, {size}]", "train.batch_size=2",
                 "train.epochs=1", "train.max_steps=1", "train.precompute=false",
                 "detect.score_thresh=0.0"]  # fmt: skip
    torch.manual_seed(0)
    train(load_config(PRESET[name], overrides), progress=False)
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["step"] == 1 and saved["config"]["model"]["kind"] == name
    detector = load(tmp_path / "run" / "last.pt", device="cpu")
    for key, value in detector.model.state_dict().items():  # the trained weights, not a fresh network
        assert torch.equal(value, saved["model"][key]), key
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    found = detector.predict(image)
    classes = ["digit"] if name == "toyssd" else load_dataset(digits, "train")[0].class_names  # toyssd: one class
    assert len(found) > 0 and found.names == detector.class_names == classes
    assert bool((found.boxes[:, 2:] <= torch.tensor([90.0, 70.0]) + 1e-4).all())  # in the image's pixels
    if KINDS[name].two_stage:  # Faster R-CNN: its graph always holds its NMS; detections compared
        onnx = load(export_onnx(detector, tmp_path / "model.onnx"))
        assert onnx.metadata["nms"] and not onnx.metadata["dynamic_batch"]
        # RoIAlign's sums in another order (ONNX RoiAlign): scores within 1e-5, boxes within 1e-3 px
        assert_same_detections(onnx.predict(image, conf=0.0), detector.predict(image, conf=0.0), score_atol=1e-5,
                               box_atol=1e-3)  # fmt: skip
        return
    if not KINDS[name].dense:
        with pytest.raises(ValueError, match="covers the detectors with anchors"):
            export_onnx(detector, tmp_path / "model.onnx")
        return
    onnx = load(export_onnx(detector, tmp_path / "model.onnx"))
    batch = detector.prepare(image)
    with torch.no_grad():
        expected = detector.model(batch)
    for got, want in zip(onnx.model(batch), expected, strict=True):
        assert got.shape == want.shape and (got - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))
