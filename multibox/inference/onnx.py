"""Exported ONNX graphs on onnxruntime, used as the networks they came from.

``multibox.load("model.onnx")`` gives an :class:`OnnxPredictor`: prediction, tiling, evaluation
and the server run the exported graph as they run a checkpoint. The file's metadata (key
``multibox``, written by :func:`multibox.export.export_onnx`) holds what it needs: class names,
the input contract, the post-processing settings and the run's configuration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..config import Config, config_from_dict
from ..kinds import build_model
from ..structures import DenseOutput, Detections
from .predictor import Predictor

__all__ = ["METADATA_KEY", "OnnxNetwork", "OnnxPredictor", "exported_parts"]

METADATA_KEY = "multibox"


class OnnxNetwork(nn.Module):
    """An exported graph in onnxruntime, used as the network it came from: ``forward`` runs the
    session, ``detect`` turns its outputs into detections, so that :class:`Predictor` and
    :func:`~multibox.evaluation.evaluate` run it unchanged.

    A graph without NMS is decoded by the original detector's ``detect`` (the ``skeleton``, built
    without weights), with any settings. A graph with NMS has its thresholds fixed at export:
    ``score_thresh`` can only be raised, and another ``nms_iou`` or a larger ``max_det`` is an error.
    """

    def __init__(self, session, metadata: dict, skeleton: nn.Module, path: Path):
        super().__init__()
        self.session, self.metadata, self.skeleton, self.path = session, metadata, skeleton, path

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        batch = np.ascontiguousarray(images.detach().cpu().numpy())
        # a graph exported for batch 1 takes a batch one image at a time
        parts = [batch] if self.metadata["dynamic_batch"] else np.split(batch, len(batch))
        runs = [self.run(part) for part in parts]
        return tuple(torch.from_numpy(np.concatenate(outputs)) for outputs in zip(*runs, strict=True))

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs, in order, for one batch of normalised images."""
        return self.session.run(None, {"images": images})

    def detect(self, output, image_size: Sequence[int], score_thresh: float = 0.05, topk: int = 1000,
               nms_iou: float = 0.5, max_det: int = 100) -> list[Detections]:  # fmt: skip
        if not self.metadata["nms"]:
            return self.skeleton.detect(DenseOutput(*output), image_size, score_thresh, topk, nms_iou, max_det)
        baked = self.metadata["settings"]
        if abs(nms_iou - baked["nms_iou"]) > 1e-9 or max_det > baked["max_det"] or topk != baked["topk"]:
            raise ValueError(
                f"{self.path} has NMS at IoU {baked['nms_iou']}, top-{baked['topk']} and max_det {baked['max_det']} "
                "in its graph; export again with other settings (multibox export --iou ... --max-det ...)"
            )
        found = []
        for boxes, scores, labels in zip(*output, strict=True):
            keep = scores > max(score_thresh, baked["score_thresh"])
            keep[max_det:] = False
            found.append(Detections(boxes[keep].float(), scores[keep].float(), labels[keep].long()))
        return found


def exported_parts(metadata: dict, path: Path) -> tuple[Config, list[str], nn.Module]:
    """From an exported file's metadata: the run's configuration with the graph's input contract
    and settings, the class names, and the detector's skeleton (built without weights)."""
    config = config_from_dict(metadata["config"], f"{path} (its configuration)")
    config.input.size = tuple(metadata["image_size"])
    config.input.resize = metadata["resize"]
    config.input.mean, config.input.std = tuple(metadata["mean"]), tuple(metadata["std"])
    config.train.channels_last = False
    for key, value in metadata["settings"].items():
        setattr(config.detect, key, value)
    names = metadata["class_names"]
    return config, names, build_model(config.model, len(names), "none", config.input.size)


class OnnxPredictor(Predictor):
    """:class:`~multibox.inference.Predictor` on onnxruntime, from a file of :func:`export_onnx`
    (its ``model`` an :class:`OnnxNetwork`); ``predict`` defaults to the settings exported."""

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX file not found")
        try:
            session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        except Exception as error:  # onnxruntime's own exception types
            raise ValueError(f"{path}: not a readable ONNX file ({str(error).strip()})") from None
        meta = session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(f"{path}: not a multibox ONNX file (no '{METADATA_KEY}' metadata); use multibox export")
        metadata = json.loads(meta[METADATA_KEY])
        config, names, skeleton = exported_parts(metadata, path)
        super().__init__(OnnxNetwork(session, metadata, skeleton, path), config, names, device="cpu")
        self.metadata, self.path = metadata, path
