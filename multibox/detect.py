"""A network on images: preprocess, batch, detect, map the boxes back; whole images or tiles.

The predictor and evaluation both come here, so that a network trained on tiles of large
images (``input.tile``) is evaluated and used as it was trained.

    found = detect_images(model, [pixels], Preprocess(size=(512, 512)), {"score_thresh": 0.3})
    found = detect_tiled(model, pixels, Preprocess(size=(512, 512), tile=512), settings)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .data.dataset import detection_collate
from .data.preprocess import Preprocess
from .structures import Detections
from .tiling import merge_tiles, tile_windows

__all__ = ["TILE_OVERLAP", "detect_images", "detect_tiled"]

TILE_OVERLAP = 0.2  # neighbouring tiles share a fifth of a tile: an object of up to that size is whole in one


@torch.no_grad()
def detect_images(
    model: nn.Module,
    images: Sequence[np.ndarray],
    preprocess: Preprocess,
    settings: dict,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> list[Detections]:
    """Detections of a batch of RGB ``uint8`` images, boxes in each image's pixels (on the CPU).

    ``settings`` are ``model.detect``'s (``score_thresh``, ``topk``, ``nms_iou``, ``max_det``).
    """
    tensors = [preprocess(image) for image in images]
    batch, _ = detection_collate([(t, None) for t in tensors])  # padded where sizes differ
    device = next(model.parameters(), torch.empty(0)).device
    batch = batch.to(device).contiguous(memory_format=memory_format)
    found = model.detect(model(batch), tuple(batch.shape[-2:]), **settings)
    results = []
    for det, image, tensor in zip(found, images, tensors, strict=True):
        det = det.to("cpu")
        det.boxes = preprocess.to_original(det.boxes, image.shape[:2], tuple(tensor.shape[-2:]))
        results.append(det)
    return results


def detect_tiled(
    model: nn.Module,
    image: np.ndarray,
    preprocess: Preprocess,
    settings: dict,
    tile: int,
    overlap: float = TILE_OVERLAP,
    batch_size: int = 8,
    memory_format: torch.memory_format = torch.contiguous_format,
    progress: Callable[[int, int], None] | None = None,
) -> Detections:
    """Detections of one image cut into overlapping ``tile x tile`` windows
    (:func:`~multibox.tiling.tile_windows`), each detected as an image of its own, ``batch_size``
    at a time, the pieces an edge cuts joined and the rest merged by NMS
    (:func:`~multibox.tiling.merge_tiles`). ``max_det`` applies per tile. ``progress(done, total)``
    is called after each batch of tiles."""
    windows = tile_windows(image.shape[0], image.shape[1], tile, overlap)
    crops = [image[y1:y2, x1:x2] for x1, y1, x2, y2 in windows]
    found = []
    for start in range(0, len(crops), batch_size):
        found += detect_images(model, crops[start : start + batch_size], preprocess, settings, memory_format)
        if progress is not None:
            progress(len(found), len(crops))
    return merge_tiles(found, windows, image.shape[:2], nms_iou=settings["nms_iou"])
