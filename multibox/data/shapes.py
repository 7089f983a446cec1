"""Synthetic shape scenes: discs, squares and triangles on real photographs, among distractors.

A second kind of data beside the digit scenes, for checking that a recipe is not tuned to
digits: three classes told apart by shape alone (their colours, textures, contrast, sizes,
rotations and shading are random), among unlabelled pentagons, stars and crosses, drawn onto
crops of scikit-image's photographs. Training and validation scenes use
different photographs, so a detector that memorises backgrounds shows it. Two shapes of
dataset come from the same renderer: a few dozen scenes of a few hundred pixels with objects of
20-150 px, and large scenes (2000 px) with many small objects (10-60 px), as aerial images are.
The same seed gives the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .io import write_image
from .loading import write_dataset
from .records import DetectionSet, Record
from .synthetic import _load_photos

__all__ = ["SHAPE_CLASSES", "ShapeConfig", "render_shapes", "synthesize_shapes"]

SHAPE_CLASSES = ("disc", "square", "triangle")


@dataclass(frozen=True)
class ShapeConfig:
    """How shape scenes are drawn.

    Attributes:
        width, height: scene size in pixels.
        min_side, max_side: range of an object's side in pixels (log-uniform).
        min_objects, max_objects: objects per scene, uniform.
        max_overlap: largest share of an object's box that another object's box may cover.
        distractors: unlabelled shapes per scene are uniform in ``0..distractors``.
    """

    width: int = 448
    height: int = 448
    min_side: float = 20.0
    max_side: float = 150.0
    min_objects: int = 2
    max_objects: int = 8
    max_overlap: float = 0.1
    distractors: int = 4

    def __post_init__(self):
        if not 0 < self.min_side <= self.max_side < min(self.width, self.height):
            raise ValueError(
                f"object sides {self.min_side:g}-{self.max_side:g} px do not fit scenes of {self.width}x{self.height}: "
                f"give 0 < --min-side <= --max-side < --size"
            )
        if not 0 <= self.min_objects <= self.max_objects or self.distractors < 0:
            raise ValueError(
                f"objects per scene {self.min_objects},{self.max_objects} and distractors {self.distractors}: "
                f"give --objects MIN,MAX with 0 <= MIN <= MAX, and --distractors 0 or more"
            )


def _background(photo: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``photo`` scaled to the scene, its colours and brightness shifted, with
    fine noise so that upscaled photographs do not look flat."""
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.4, 1.0) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = cv2.resize(photo[y : y + side, x : x + side], (width, height), interpolation=cv2.INTER_CUBIC)
    gain = rng.uniform(0.6, 1.3, size=3) * rng.uniform(0.7, 1.2)
    noise = rng.normal(0, 6, size=(height, width, 1))
    return np.clip(crop.astype(np.float32) * gain + rng.uniform(-30, 30) + noise, 0, 255)


def _star(points: int, inner: float) -> np.ndarray:
    angles = np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1) / 2


# unlabelled distractors: a pentagon, a five-pointed star, a cross
_DISTRACTORS = (
    _star(5, np.cos(np.pi / 5)),
    _star(5, 0.45),
    np.array([[-1, -3], [1, -3], [1, -1], [3, -1], [3, 1], [1, 1], [1, 3], [-1, 3], [-1, 1], [-3, 1], [-3, -1],
              [-1, -1]], np.float64) / 6,
)  # fmt: skip


def _outline(label: int, side: float, rng: np.random.Generator) -> np.ndarray:
    """The shape's polygon ``[P, 2]`` around the origin, rotated at random, about ``side`` across;
    labels 3.. are the distractors."""
    if label >= len(SHAPE_CLASSES):
        points = _DISTRACTORS[label - len(SHAPE_CLASSES)] * side
    elif label == 0:  # disc (an ellipse up to 1.3:1)
        angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        radii = side / 2 * np.array([1.0, rng.uniform(0.77, 1.0)])
        points = np.stack([np.cos(angles) * radii[0], np.sin(angles) * radii[1]], axis=1)
    elif label == 1:  # square (a rectangle up to 1.3:1)
        half = side / 2 * np.array([1.0, rng.uniform(0.77, 1.0)])
        points = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * half
    else:  # triangle
        angles = np.array([90, 210, 330]) * np.pi / 180 + rng.uniform(-0.15, 0.15, size=3)
        points = np.stack([np.cos(angles), -np.sin(angles)], axis=1) * side / 1.7
    theta = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return points @ rotation.T


def _paint(canvas: np.ndarray, polygon: np.ndarray, rng: np.random.Generator, texture: np.ndarray) -> None:
    """Fill ``polygon`` (scene pixels) with a random colour (half the time close to what is behind
    it) or a tinted patch of ``texture``, shaded across the shape, with a soft shadow beside it
    and an anti-aliased edge."""
    x1, y1 = np.floor(polygon.min(axis=0)).astype(int) - 4
    x2, y2 = np.ceil(polygon.max(axis=0)).astype(int) + 6
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, canvas.shape[1]), min(y2, canvas.shape[0])
    scale = 4  # draw at 4x and shrink: smooth edges
    mask = np.zeros(((y2 - y1) * scale, (x2 - x1) * scale), np.uint8)
    local = np.round((polygon - [x1, y1]) * scale).astype(np.int32)
    cv2.fillPoly(mask, [local], 255, cv2.LINE_AA)
    alpha = cv2.resize(mask, (x2 - x1, y2 - y1), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255
    region = canvas[y1:y2, x1:x2]
    shift = rng.integers(1, 4, size=2)
    shadow = np.zeros_like(alpha)
    shadow[shift[1] :, shift[0] :] = alpha[: alpha.shape[0] - shift[1], : alpha.shape[1] - shift[0]]
    region *= 1 - 0.35 * shadow
    if rng.random() < 0.5:
        colour = rng.uniform(20, 235, size=3)
    else:  # low contrast: near the mean colour behind the shape
        colour = np.clip(region.reshape(-1, 3).mean(axis=0) + rng.uniform(-45, 45, size=3), 0, 255)
    fill = np.broadcast_to(colour, region.shape).astype(np.float32)
    if rng.random() < 0.4:  # a patch of a photograph, tinted with the colour
        h, w = region.shape[:2]
        y, x = rng.integers(0, texture.shape[0] - h + 1), rng.integers(0, texture.shape[1] - w + 1)
        fill = texture[y : y + h, x : x + w].astype(np.float32) * 0.5 + colour * 0.5
    ramp = np.linspace(rng.uniform(0.75, 1.0), rng.uniform(1.0, 1.25), region.shape[1])[None, :, None]
    region[...] = region * (1 - alpha) + np.clip(fill * ramp, 0, 255) * alpha


def render_shapes(
    photos: list[np.ndarray], rng: np.random.Generator, config: ShapeConfig = ShapeConfig()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: ``uint8 [height, width, 3]`` RGB, boxes ``[N, 4]`` (xyxy pixels, tight on the
    shape) and labels ``[N]`` (indices into :data:`SHAPE_CLASSES`)."""
    canvas = _background(photos[rng.integers(len(photos))], config.height, config.width, rng)
    texture = _background(photos[rng.integers(len(photos))], config.height, config.width, rng)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    count = rng.integers(config.min_objects, config.max_objects + 1)
    others = rng.integers(0, config.distractors + 1)
    kinds = [int(rng.integers(len(SHAPE_CLASSES))) for _ in range(count)]
    kinds += [len(SHAPE_CLASSES) + int(rng.integers(len(_DISTRACTORS))) for _ in range(others)]
    for label in rng.permutation(kinds).tolist():
        side = float(np.exp(rng.uniform(np.log(config.min_side), np.log(config.max_side))))
        outline = _outline(label, side, rng)
        low, high = outline.min(axis=0), outline.max(axis=0)
        if np.any(high - low >= [config.width, config.height]):
            continue
        for _attempt in range(20):
            centre = rng.uniform(-low, [config.width, config.height] - high)
            polygon = outline + centre
            box = np.concatenate([polygon.min(axis=0), polygon.max(axis=0)]).astype(np.float32)
            if not boxes or _coverage(box, np.stack(boxes)).max() <= config.max_overlap:
                _paint(canvas, polygon, rng, texture)
                boxes.append(box)
                labels.append(label)
                break
    boxes_, labels_ = np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)
    shapes = labels_ < len(SHAPE_CLASSES)  # the distractors are drawn, not labelled
    return canvas.round().astype(np.uint8), boxes_[shapes], labels_[shapes]


def _coverage(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Share of the smaller box covered by the intersection, between ``box`` and each of ``others``."""
    lt, rb = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    return inter / np.minimum(np.prod(box[2:] - box[:2]), areas)


def synthesize_shapes(
    out: str | Path, train: int = 36, val: int = 12, seed: int = 0, config: ShapeConfig = ShapeConfig()
) -> dict[str, Path]:
    """Render ``train`` and ``val`` shape scenes into a VOC dataset at ``out``; training and
    validation scenes are drawn on different photographs. Returns each split's path."""
    photos = _load_photos()
    pools = {"train": photos[0::3] + photos[1::3], "val": photos[2::3]}  # two photographs in three for training
    out, rng, paths = Path(out), np.random.default_rng(seed), {}
    for split, count in (("train", train), ("val", val)):
        records = []
        for i in range(count):
            image, boxes, labels = render_shapes(pools[split], rng, config)
            image_id = f"{split}_{i:05d}"
            path = out / "JPEGImages" / f"{image_id}.jpg"
            write_image(path, image, quality=92)
            records.append(Record(path, config.height, config.width, boxes, labels, image_id=image_id))
        paths[split] = write_dataset(DetectionSet(records, list(SHAPE_CLASSES)), out, "voc", split)
    return paths
