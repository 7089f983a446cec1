"""Bbox-aware augmentation and resizing.

Standard operations come from albumentations (OpenCV underneath; faster here than
``torchvision.transforms.v2``, see BENCHMARKS.md). What it lacks is written here: SSD's
zoom-out and IoU crop, and mosaic. Every step maps ``(image uint8 [H, W, 3] RGB, boxes
float32 [N, 4] xyxy pixels, labels int64 [N])`` to the same, and draws its randomness from a
``numpy.random.Generator`` so that one seed reproduces a whole pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import albumentations as A
import cv2
import numpy as np
import torch

from ..boxes import box_iou_numpy

__all__ = [
    "AUGMENTATIONS",
    "RESIZE_MODES",
    "Augment",
    "MinMaxResize",
    "Sample",
    "boxes_to_input",
    "boxes_to_original",
    "build_transform",
    "input_size_of",
    "iou_crop",
    "mosaic",
    "random_crop",
    "zoom_out",
]

AUGMENTATIONS = ("none", "flip", "ssd", "retina", "strong", "mosaic")  # train.augment
RESIZE_MODES = ("squish", "letterbox", "minmax")
PAD_VALUE = 114  # letterbox and mosaic fill, the grey of the YOLO family

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # image, boxes, labels


# Boxes narrower or shorter than this (pixels) after a transform are dropped.
MIN_BOX_SIDE = 1.0


def _bbox_params(min_visibility: float = 0.0) -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_visibility=min_visibility,
        min_width=MIN_BOX_SIDE,
        min_height=MIN_BOX_SIDE,
        clip=True,
        check_each_transform=False,
    )


class _Albumentations:
    """An albumentations pipeline as a step, seeded from the pipeline's generator."""

    def __init__(self, transforms: list, min_visibility: float = 0.0, pixels_only: bool = False):
        self.pixels_only = pixels_only
        params = None if pixels_only else _bbox_params(min_visibility)
        self.compose = A.Compose(transforms, bbox_params=params) if transforms else None

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if self.compose is None:
            return sample
        image, boxes, labels = sample
        self.compose.set_random_seed(int(rng.integers(2**31)))
        if self.pixels_only:
            return self.compose(image=image)["image"], boxes, labels
        out = self.compose(image=image, bboxes=boxes, labels=labels)
        return (
            out["image"],
            np.asarray(out["bboxes"], np.float32).reshape(-1, 4),
            np.asarray(out["labels"], np.int64).reshape(-1),
        )


class _ResizeUnlessSized(_Albumentations):
    """The resize of a pipeline without augmentation, skipped for images already at ``size``.

    Such images (rendered or pre-resized datasets) would only go through albumentations' box
    bookkeeping: the same clipping and 1-pixel filter done here directly take a tenth of the
    time (0.5 ms an image at 256x256 before).
    """

    def __init__(self, transforms: list, size: tuple[int, int]):
        super().__init__(transforms)
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image, boxes, labels = sample
        if image.shape[:2] != self.size:
            return super().__call__(sample, rng)
        height, width = self.size
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4).clip(0, [width, height, width, height])
        keep = (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIDE) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIDE)
        return image, boxes[keep], np.asarray(labels, np.int64).reshape(-1)[keep]


def zoom_out(sample: Sample, rng: np.random.Generator, max_ratio: float = 4.0, p: float = 0.5) -> Sample:
    """SSD's "expand": place the image at a random spot of a canvas up to ``max_ratio`` times larger."""
    image, boxes, labels = sample
    if rng.random() >= p:
        return sample
    h, w = image.shape[:2]
    ratio = rng.uniform(1.0, max_ratio)
    canvas_h, canvas_w = int(h * ratio), int(w * ratio)
    top, left = int(rng.integers(0, canvas_h - h + 1)), int(rng.integers(0, canvas_w - w + 1))
    canvas = np.empty((canvas_h, canvas_w, 3), np.uint8)
    canvas[...] = image.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    canvas[top : top + h, left : left + w] = image
    return canvas, boxes + np.array([left, top, left, top], np.float32), labels


def iou_crop(
    sample: Sample,
    rng: np.random.Generator,
    min_ious: Sequence[float | None] = (None, 0.1, 0.3, 0.5, 0.7, 0.9),
    trials: int = 50,
) -> Sample:
    """SSD's random sample crop (Liu et al. 2016).

    Pick a minimum IoU (or ``None``: no crop); try up to ``trials`` crops of 0.3..1 of each
    side with aspect 0.5..2 whose IoU with some box reaches it; keep the boxes whose centre
    falls in the crop, clipped to it. An image without boxes gets any such crop.
    """
    image, boxes, labels = sample
    min_iou = min_ious[int(rng.integers(len(min_ious)))]
    if min_iou is None:
        return sample
    h, w = image.shape[:2]
    for _ in range(trials):
        cw, ch = rng.uniform(0.3 * w, w), rng.uniform(0.3 * h, h)
        if not 0.5 <= ch / cw <= 2:
            continue
        left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        crop = np.array([left, top, left + cw, top + ch], np.float32).round()
        if crop[2] - crop[0] < 2 or crop[3] - crop[1] < 2:
            continue
        if len(boxes):
            if box_iou_numpy(crop, boxes).max() < min_iou:
                continue
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            inside = (centres > crop[:2]).all(axis=1) & (centres < crop[2:]).all(axis=1)
            if not inside.any():
                continue
        else:
            inside = np.zeros(0, bool)
        x1, y1, x2, y2 = crop.astype(int)
        kept = np.clip(boxes[inside], crop[:2].tolist() * 2, crop[2:].tolist() * 2) - np.tile(crop[:2], 2)
        return image[y1:y2, x1:x2], kept.astype(np.float32), labels[inside]
    return sample


def random_crop(sample: Sample, rng: np.random.Generator, side: int, min_keep: float = 0.25) -> Sample:
    """A random ``side x side`` window of the image at its own resolution (the whole extent where
    the image is smaller): what a network trained on tiles of large images sees. Boxes are clipped
    to the window; a piece keeping less than ``min_keep`` of its area, or under 2 pixels wide or
    high, is dropped (tiled prediction joins the pieces an edge cuts, see
    :func:`multibox.tiling.merge_tiles`)."""
    image, boxes, labels = sample
    h, w = image.shape[:2]
    x1, y1 = int(rng.integers(0, max(w - side, 0) + 1)), int(rng.integers(0, max(h - side, 0) + 1))
    x2, y2 = min(x1 + side, w), min(y1 + side, h)
    clipped = np.clip(boxes, [x1, y1, x1, y1], [x2, y2, x2, y2])
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    kept = np.prod(clipped[:, 2:] - clipped[:, :2], axis=1)
    keep = (kept >= min_keep * np.maximum(area, 1e-9)) & ((clipped[:, 2:] - clipped[:, :2]) >= 2).all(axis=1)
    shifted = (clipped[keep] - np.array([x1, y1, x1, y1], np.float32)).astype(np.float32)
    return np.ascontiguousarray(image[y1:y2, x1:x2]), shifted.reshape(-1, 4), labels[keep]


def mosaic(samples: Sequence[Sample], size: int, rng: np.random.Generator, min_keep: float = 0.25) -> Sample:
    """Four images into one ``size x size`` image around a random centre (the YOLOv4/v5 mosaic).

    Each image is scaled so that its long side is ``size``, placed in one quadrant of a
    ``2 size`` canvas meeting at a random centre in the middle half, and the canvas's middle
    ``size x size`` window is kept (YOLOv5's mosaic before its random affine): objects keep
    the scale a letterboxed input gives them, so anchors fitted to the data still fit. Boxes
    are shifted and clipped; remnants keeping less than ``min_keep`` of their area, or under
    2 pixels wide or high, are dropped.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic takes 4 samples, got {len(samples)}")
    canvas = np.full((2 * size, 2 * size, 3), PAD_VALUE, np.uint8)
    xc, yc = (int(v) for v in rng.uniform(0.5 * size, 1.5 * size, size=2))
    low, high = size // 2, size // 2 + size  # the window kept
    all_boxes, all_labels = [], []
    for quadrant, (image, boxes, labels) in enumerate(samples):
        scale = size / max(image.shape[:2])
        h, w = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        # the image's corner that meets the centre, and the canvas window it fills
        x0 = xc - w if quadrant in (0, 2) else xc
        y0 = yc - h if quadrant in (0, 1) else yc
        cx1, cy1 = max(x0, 0), max(y0, 0)
        cx2, cy2 = min(x0 + w, 2 * size), min(y0 + h, 2 * size)
        canvas[cy1:cy2, cx1:cx2] = image[cy1 - y0 : cy2 - y0, cx1 - x0 : cx2 - x0]
        placed = boxes * scale + np.array([x0, y0, x0, y0], np.float32)
        lo = [max(cx1, low), max(cy1, low)] * 2
        hi = [min(cx2, high), min(cy2, high)] * 2
        clipped = np.clip(placed, lo, hi)
        area = np.prod(placed[:, 2:] - placed[:, :2], axis=1)
        kept_area = np.prod(clipped[:, 2:] - clipped[:, :2], axis=1)
        keep = (kept_area >= min_keep * area) & ((clipped[:, 2:] - clipped[:, :2]) >= 2).all(axis=1)
        all_boxes.append(clipped[keep] - low)
        all_labels.append(labels[keep])
    image = np.ascontiguousarray(canvas[low:high, low:high])
    boxes = np.concatenate(all_boxes).astype(np.float32)
    return image, boxes.reshape(-1, 4), np.concatenate(all_labels).astype(np.int64)


class MinMaxResize:
    """Scale so that the shorter side is ``min_size`` unless the longer would pass ``max_size``
    (then the longer side is ``max_size``): torchvision's detection resize, sizes vary."""

    def __init__(self, min_size: int, max_size: int):
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image, boxes, labels = sample
        h, w = image.shape[:2]
        new_h, new_w = _minmax_size(h, w, self.min_size, self.max_size)
        shrinks = new_h * new_w < h * w
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR)
        factors = np.array([new_w / w, new_h / h] * 2, np.float32)
        return resized, boxes * factors, labels


def _minmax_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """``(height, width)`` with the shorter side ``min_size`` unless the longer passes ``max_size``."""
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize_ops(mode: str, size: tuple[int, int]) -> list:
    height, width = size
    if mode == "squish":
        return [A.Resize(height, width)]
    if mode == "letterbox":
        return [
            A.LongestMaxSize(max_size=max(height, width)),
            A.PadIfNeeded(height, width, position="center", border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE),
        ]
    return []  # minmax: a step of its own


@dataclass(frozen=True)
class Augment:
    """A named augmentation recipe plus a resize mode.

    Attributes:
        preset: ``none``; ``flip``; ``ssd`` (photometric distortion, zoom-out, IoU crop,
            flip); ``retina`` (flip, scale jitter 0.75..1.25); ``mosaic`` (4 images into one,
            then flip; the dataset supplies the 4 images).
        size: network input ``(height, width)``.
        resize: ``squish`` (the course's no-crop resize), ``letterbox`` (keep aspect, pad),
            ``minmax`` (shorter side to ``min_size``, longer at most ``max_size``; sizes vary).
        rotate: small rotations, up to 3 degrees half the time; boxes grow to the rotated corners.
        hflip: probability of a horizontal flip in every preset but ``none`` (0 for text and
            digits, whose mirror images are not in the data).
        crop: train on random ``crop x crop`` windows of each image at its own resolution
            (:func:`random_crop`; tiles of large images), then resize; 0: the whole image.

    ``strong`` is photometric distortion, scale jitter 0.5..1.5 and flips: for datasets of a few
    hundred images, which the others let a network memorise.
    """

    preset: str = "flip"
    size: tuple[int, int] = (512, 512)
    resize: str = "squish"
    rotate: bool = False
    min_size: int | None = None
    max_size: int | None = None
    hflip: float = 0.5
    crop: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"hflip is a probability in [0, 1], got {self.hflip}")
        if self.preset not in AUGMENTATIONS:
            raise ValueError(f"the augmentation preset (train.augment) is one of {AUGMENTATIONS}, not {self.preset!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.preset == "mosaic" and self.size[0] != self.size[1]:
            raise ValueError(f"the mosaic preset makes square images; got size {self.size}")


def build_transform(augment: Augment, train: bool = True):
    """The pipeline for ``augment``: a callable ``(sample, rng) -> sample``.

    Evaluation pipelines (``train=False``) only resize. For the ``mosaic`` preset the
    returned pipeline is what follows the mosaic itself (the dataset builds the mosaic).
    """
    resize = _resize_ops(augment.resize, augment.size)
    minmax = [MinMaxResize(augment.min_size or min(augment.size), augment.max_size or max(augment.size))]
    last = minmax if augment.resize == "minmax" else []
    if train and augment.crop:
        crop = augment.crop
        return _Pipeline([partial(random_crop, side=crop), build_transform(replace(augment, crop=0), train)])
    if not train or augment.preset == "none":
        return _Pipeline([_ResizeUnlessSized(resize, augment.size) if resize else _Albumentations(resize), *last])
    rotate = [A.Rotate(limit=3, p=0.5, border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE)] if augment.rotate else []
    flip = [A.HorizontalFlip(p=augment.hflip)] if augment.hflip > 0 else []
    if augment.preset == "flip":
        return _Pipeline([_Albumentations(rotate + flip + resize), *last])
    if augment.preset == "ssd":
        photometric = A.ColorJitter(
            brightness=(0.875, 1.125), contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=(-0.05, 0.05), p=0.5
        )
        return _Pipeline(
            [
                _Albumentations([photometric], pixels_only=True),
                zoom_out,
                iou_crop,
                _Albumentations(rotate + flip + resize),
                *last,
            ]
        )
    if augment.preset == "strong":
        photometric = A.ColorJitter(
            brightness=(0.75, 1.25), contrast=(0.6, 1.4), saturation=(0.5, 1.5), hue=(-0.05, 0.05), p=0.8
        )
        jitter = A.Affine(scale=(0.5, 1.5), keep_ratio=True, border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE, p=1.0)
        return _Pipeline(
            [
                _Albumentations([photometric], pixels_only=True),
                _Albumentations(rotate + flip + resize, min_visibility=0.25),
                *last,
                _Albumentations([jitter], min_visibility=0.25),
            ]
        )
    if augment.preset == "retina":
        jitter = A.Affine(scale=(0.75, 1.25), keep_ratio=True, border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE, p=1.0)
        return _Pipeline(
            [
                _Albumentations(rotate + flip + resize, min_visibility=0.25),
                *last,
                _Albumentations([jitter], min_visibility=0.25),
            ]
        )
    return _Pipeline([_Albumentations(rotate + flip)])  # mosaic: already at size


class _Pipeline:
    def __init__(self, steps: list):
        self.steps = steps

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for step in self.steps:
            sample = step(sample, rng)
        return sample


def input_size_of(orig_size, size: tuple[int, int], resize: str, min_size: int | None = None,
                  max_size: int | None = None) -> tuple[int, int]:  # fmt: skip
    """``(height, width)`` of the network input made from an image of ``orig_size`` by the
    evaluation pipeline: ``size`` for ``squish`` and ``letterbox``; for ``minmax``, the image
    scaled as :class:`MinMaxResize` scales it."""
    if resize != "minmax":
        return int(size[0]), int(size[1])
    h, w = (int(v) for v in orig_size)
    return _minmax_size(h, w, min_size or min(size), max_size or max(size))


def _letterbox(orig_size, input_size) -> tuple[float, int, int]:
    """Scale and left/top padding that letterboxing puts an image of ``orig_size`` into ``input_size``."""
    (h0, w0), (h1, w1) = (int(v) for v in orig_size), (int(v) for v in input_size)
    scale = min(h1 / h0, w1 / w0)
    return scale, (w1 - round(w0 * scale)) // 2, (h1 - round(h0 * scale)) // 2


def boxes_to_input(boxes: torch.Tensor, orig_size, input_size, resize: str) -> torch.Tensor:
    """xyxy boxes ``[N, 4]`` in pixels of the original image -> network-input pixels after
    ``resize``: the inverse of :func:`boxes_to_original` for boxes inside the image."""
    if resize == "letterbox":
        scale, pad_x, pad_y = _letterbox(orig_size, input_size)
        return boxes * scale + boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])
    (h0, w0), (h1, w1) = (int(v) for v in orig_size), (int(v) for v in input_size)
    return boxes * boxes.new_tensor([w1 / w0, h1 / h0, w1 / w0, h1 / h0])


def boxes_to_original(boxes: torch.Tensor, orig_size, input_size, resize: str) -> torch.Tensor:
    """xyxy boxes ``[N, 4]`` in network-input pixels -> pixels of the original image, undoing ``resize``
    (``squish`` and ``minmax``: per-axis scale; ``letterbox``: padding, then scale), clipped to the image."""
    (h0, w0), (h1, w1) = (int(v) for v in orig_size), (int(v) for v in input_size)
    if resize == "letterbox":
        scale, pad_x, pad_y = _letterbox(orig_size, input_size)
        boxes = (boxes - boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])) / scale
    else:
        boxes = boxes * boxes.new_tensor([w0 / w1, h0 / h1, w0 / w1, h0 / h1])
    return boxes.clamp(min=0).minimum(boxes.new_tensor([w0, h0, w0, h0]))
