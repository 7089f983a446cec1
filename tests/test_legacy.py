"""Checkpoints and configurations of the flat layout (before `input:`, `detect:` and the model's
per-family sections) still load, build the same networks and predict the same
(tests/fixtures/make_legacy.py made the fixtures with that code)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_detections

from multibox import load
from multibox.config import config_from_dict, load_config
from multibox.kinds import build_model, kind_of
from multibox.structures import Detections

FIXTURES = Path(__file__).parent / "fixtures"
LEGACY = json.loads((FIXTURES / "legacy_presets.json").read_text())


def _digest(model: torch.nn.Module) -> str:
    lines = [f"{k}:{list(v.shape)}" for k, v in sorted(model.state_dict().items())]
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


def test_a_legacy_checkpoint_loads_and_predicts_the_same():
    detector = load(FIXTURES / "legacy_toyssd.pt", device="cpu")
    assert detector.class_names == ["digit"]
    image = np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    found = detector.predict(image, conf=0.01)
    saved = json.loads((FIXTURES / "legacy_toyssd_detections.json").read_text())
    expected = Detections(torch.tensor(saved["boxes"]), torch.tensor(saved["scores"]), torch.tensor(saved["labels"]))
    assert len(expected) > 10
    # saved on an AVX-512 machine: other kernels may move scores and boxes by a few ulps
    assert_same_detections(found, expected, score_atol=1e-5, box_atol=1e-3)


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_legacy_configurations_build_the_same_networks(name):
    config = config_from_dict(LEGACY[name]["config"], f"legacy {name}")
    model = build_model(config.model, 3, "none", image_size=config.input.size)
    assert _digest(model) == LEGACY[name]["state_dict"]
    # the preset as the flat layout stored it is today's preset, family by family
    today, legacy = load_config(name).to_dict(), config.to_dict()
    section = kind_of(config).section
    for key in ("data", "input", "loss", "train", "detect", "output"):
        assert legacy[key] == today[key], key
    for key in ("kind", "backbone", section):
        assert legacy["model"][key] == today["model"][key], key
    flat = LEGACY[name]["config"]
    assert list(config.input.size) == flat["train"]["image_size"]
    assert config.detect.score_thresh == flat["train"]["score_thresh"] and config.loss.cls == flat["train"]["cls_loss"]
