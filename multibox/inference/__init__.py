"""The inference wing: a trained detector loaded from a checkpoint or an exported ONNX file, its
prediction (whole images or tiles) and its HTTP server. It never imports the training engine.

    detector = multibox.inference.load("runs/demo/best.pt")   # or "demo.onnx", or "demo.xml" (OpenVINO)
    found = detector.predict("scene.jpg")
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import restore
from .onnx import OnnxPredictor
from .openvino import OpenVinoPredictor
from .predictor import Predictor

__all__ = ["OnnxPredictor", "OpenVinoPredictor", "Predictor", "load"]


def load(path: str | Path, device: str | None = None, precision: str | None = None) -> Predictor:
    """A :class:`Predictor` from a training checkpoint (``best.pt`` or ``last.pt``; never runs code
    from it), from an ONNX file of ``multibox export`` (an :class:`OnnxPredictor`, on
    onnxruntime's CPU provider), or from an OpenVINO IR of ``multibox export --format openvino``
    (``.xml``: an :class:`OpenVinoPredictor`, at the precision it was exported for).

    ``precision``: for a checkpoint ``fp32`` (default) or ``bf16`` (its network under bf16
    autocast: faster on CPUs with AMX); for an IR, ``fp32`` or ``bf16`` instead of its own; an ONNX
    graph runs as exported.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        if precision not in (None, "fp32"):
            raise ValueError(f"{path}: onnxruntime runs the graph as exported (fp32 or INT8), not {precision}")
        return OnnxPredictor(path)
    if suffix == ".xml":
        return OpenVinoPredictor(path, precision)
    model, config, names = restore(path)
    return Predictor(model, config, names, device, precision or "fp32")
