"""Pictures: boxes with class names drawn on images, grids of images."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["class_colour", "draw_detections", "image_grid"]


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour per class (golden-ratio hues)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str] | None = None,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """A copy of RGB ``image`` with each xyxy pixel box outlined in its class colour and captioned.

    Captions are white text with a dark outline, readable on any background; ``scores``, when
    given, follow the class name.
    """
    out = np.ascontiguousarray(image.copy())
    scale = max(0.35, min(out.shape[:2]) / 700)
    thickness = max(1, round(scale * 2))
    for i, (box, label) in enumerate(
        zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1), strict=True)
    ):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        colour = class_colour(int(label))
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thickness, cv2.LINE_AA)
        text = names[int(label)] if names is not None else str(int(label))
        if scores is not None:
            text += f" {float(scores[i]):.2f}"
        origin = (x1 + 2, max(y1 - 4, int(14 * scale) + 2))
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), thickness + 2, cv2.LINE_AA)
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def image_grid(images: Sequence[np.ndarray], columns: int | None = None, pad: int = 4) -> np.ndarray:
    """Tile RGB images (resized to the first one's size) into one grid image."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    height, width = images[0].shape[:2]
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, np.uint8)
    for i, image in enumerate(images):
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        r, c = divmod(i, columns)
        y, x = pad + r * (height + pad), pad + c * (width + pad)
        grid[y : y + height, x : x + width] = image
    return grid
