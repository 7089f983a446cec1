"""A trained network on a dataset split: its detections in the images' pixels and the metrics
its kind is judged by. The trainer's validation and ``multibox eval`` both come here.

    metrics, detections = evaluate(model, val_set, config)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from .config import Config
from .data.dataset import DetectionDataset, detection_collate
from .data.io import read_image
from .data.preprocess import Preprocess
from .data.records import DetectionSet
from .detect import detect_tiled
from .kinds import kind_of
from .metrics import coco_map, multilabel_metrics, single_object_metrics
from .structures import Detections

__all__ = ["dataset_metrics", "evaluate", "predict_dataset"]


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    data: DetectionSet,
    config: Config,
    indices: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> tuple[list[Detections], Tensor | None]:
    """Detections of ``model`` on the images of ``data`` (or those at ``indices``), boxes mapped
    back to each image's pixels, and for a ``multilabel`` network its class probabilities
    ``[N, C]`` (None otherwise). The input contract is ``config.input``, the post-processing
    ``config.detect``; batches of ``batch_size`` (default ``train.batch_size``)."""
    t, preprocess = config.train, Preprocess.of(config.input)
    if preprocess.tile:
        return _predict_tiled(model, data, config, preprocess, indices), None
    dataset = DetectionDataset(data, preprocess.augment(), False, preprocess.mean, preprocess.std)
    loader = DataLoader(
        Subset(dataset, list(indices)) if indices is not None else dataset,
        batch_size=batch_size or t.batch_size,
        num_workers=t.workers,
        collate_fn=detection_collate,
    )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    multilabel = kind_of(config).evaluation == "multilabel"
    detections, probabilities = [], []
    for images, targets in loader:
        size = tuple(images.shape[-2:])
        output = model(images.to(device).contiguous(memory_format=memory_format))
        if multilabel:
            probabilities.append(torch.sigmoid(output.cls_logits).cpu())
        for det, target in zip(model.detect(output, size, **asdict(config.detect)), targets, strict=True):
            det = det.to("cpu")
            det.boxes = preprocess.to_original(det.boxes, target["orig_size"], target["input_size"])
            detections.append(det)
    model.train(was_training)
    return detections, torch.cat(probabilities) if probabilities else None


def _predict_tiled(model: nn.Module, data: DetectionSet, config: Config, preprocess: Preprocess, indices) -> list:
    """:func:`predict_dataset` for a network trained on tiles: each image tiled as it is predicted."""
    was_training = model.training
    model.eval()
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    settings = asdict(config.detect)
    detections = []
    for i in indices if indices is not None else range(len(data.records)):
        image = read_image(data.records[i].image_path)
        found = detect_tiled(model, image, preprocess, settings, preprocess.tile, memory_format=memory_format)
        detections.append(found)
    model.train(was_training)
    return detections


def dataset_metrics(config: Config, data: DetectionSet, detections: list, probabilities: Tensor | None) -> dict:
    """The metrics of ``config.model.kind`` for ``detections`` (and ``probabilities``) on ``data``:
    COCO AP with per-class AP and precision-recall curves for the detectors, the single-object
    metrics, or ``multilabel``'s mAP and F1 at ``detect.score_thresh``."""
    truth = [
        {"boxes": r.boxes, "labels": r.labels, "ignore_boxes": r.ignore_boxes, "ignore_labels": r.ignore_labels}
        for r in data.records
    ]
    classes, kind = len(data.class_names), kind_of(config)
    if kind.evaluation == "multilabel":
        present = np.zeros((len(data.records), classes))
        for i, record in enumerate(data.records):
            present[i, record.labels] = 1
        return multilabel_metrics(probabilities.numpy(), present, config.detect.score_thresh)
    if kind.evaluation == "single":
        return single_object_metrics(detections, truth, classes, kind.name)
    return coco_map(detections, truth, num_classes=classes, per_class=True)


def evaluate(
    model: nn.Module, data: DetectionSet, config: Config, batch_size: int | None = None
) -> tuple[dict, list[Detections]]:
    """Metrics of ``model`` on ``data`` (see :func:`dataset_metrics`) and its detections (see
    :func:`predict_dataset`), in one process."""
    detections, probabilities = predict_dataset(model, data, config, batch_size=batch_size)
    return dataset_metrics(config, data, detections, probabilities), detections
