"""Validation during training: :func:`multibox.evaluation.evaluate`, split over the processes of a
distributed run."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..data.records import DetectionSet
from ..evaluation import dataset_metrics, predict_dataset
from ..structures import Detections
from .distributed import Distributed

__all__ = ["evaluate"]


def evaluate(
    model: nn.Module, data: DetectionSet, config: Config, batch_size: int | None = None, dist: Distributed | None = None
) -> tuple[dict, list[Detections]]:
    """Metrics of ``model`` on ``data`` and its detections (see :mod:`multibox.evaluation`).

    In a distributed run (``dist``), each process predicts its share of the images, rank 0
    gathers them and computes the metrics, and every process gets them (the detections on
    rank 0 only).
    """
    dist = dist or Distributed()
    if not dist.enabled:
        detections, probabilities = predict_dataset(model, data, config, batch_size=batch_size)
        return dataset_metrics(config, data, detections, probabilities), detections
    shard = range(dist.rank, len(data.records), dist.world)
    shares = dist.gather(predict_dataset(model, data, config, shard, batch_size))
    if not dist.main:
        return dist.broadcast(None), []
    detections: list = [None] * len(data.records)
    probabilities = None
    for rank, (found, probs) in enumerate(shares):  # every process's share, back in the images' order
        for slot, det in zip(range(rank, len(data.records), dist.world), found, strict=True):
            detections[slot] = det
        if probs is not None:
            probabilities = probabilities if probabilities is not None else torch.zeros(len(detections), probs.shape[1])
            probabilities[rank :: dist.world] = probs
    return dist.broadcast(dataset_metrics(config, data, detections, probabilities)), detections
