"""multibox: a PyTorch toolkit for one-stage object detection.

The detection math lives in small modules of pure tensor functions:
:mod:`multibox.boxes`, :mod:`multibox.anchors`, :mod:`multibox.matching`,
:mod:`multibox.coding`, :mod:`multibox.losses` and :mod:`multibox.postprocess`.
"""

__version__ = "0.1.0"


def load(checkpoint, device=None, precision=None):
    """A Predictor from a training checkpoint: ``multibox.load("best.pt").predict("image.jpg")``
    (or an exported ``.onnx`` / OpenVINO ``.xml``; ``precision="bf16"`` for bf16 autocast; see
    :func:`multibox.inference.load`)."""
    from .inference import load as _load

    return _load(checkpoint, device, precision)
