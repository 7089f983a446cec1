"""The inference wing: a trained detector loaded from a checkpoint or an exported ONNX file, its
prediction (whole images or tiles) and its HTTP server. It never imports the training engine.

    detector = multibox.inference.load("runs/demo/best.pt")   # or "demo.onnx"
    found = detector.predict("scene.jpg")
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import restore
from .onnx import OnnxPredictor
from .predictor import Predictor

__all__ = ["OnnxPredictor", "Predictor", "load"]


def load(path: str | Path, device: str | None = None) -> Predictor:
    """A :class:`Predictor` from a training checkpoint (``best.pt`` or ``last.pt``; never runs code
    from it), or from an ONNX file of ``multibox export`` (an :class:`OnnxPredictor`, on
    onnxruntime's CPU provider)."""
    if Path(path).suffix.lower() == ".onnx":
        return OnnxPredictor(path)
    model, config, names = restore(path)
    return Predictor(model, config, names, device)
