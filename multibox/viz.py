"""Pictures: boxes with class names drawn on images, grids of images."""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

__all__ = ["class_colour", "draw_detections", "image_grid", "plot_pr_curves"]


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
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scale = _caption_scale(out.shape[:2], boxes)
    thickness = max(1, round(scale * 2))
    for i, (box, label) in enumerate(zip(boxes, np.asarray(labels).reshape(-1), strict=True)):
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


def _caption_scale(image_size: tuple[int, int], boxes: np.ndarray) -> float:
    """OpenCV's font scale for captions: grows with the image (a caption is about 1/30 of a
    700-px image), but no taller than about the objects' median height, so that captions of
    many small objects in a large image (aerial tiles) do not cover the picture."""
    scale = max(0.35, min(image_size) / 700)
    if len(boxes):
        median_height = float(np.median(boxes[:, 3] - boxes[:, 1]))
        scale = min(scale, max(0.3, median_height / 50))  # font scale 1: text about 22 px high
    return scale


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


def plot_pr_curves(pr50: Sequence[Sequence[float]], class_names: Sequence[str], path, title: str = "") -> None:
    """Per-class precision-recall curves at IoU 0.5 (``coco_map(..., per_class=True)["pr50"]``) as a PNG.

    One line per class with ground truth, labelled with its AP50 (the curve's mean); classes
    without ground truth (all ``-1``) are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data.io import atomic_write_bytes

    recall = np.linspace(0, 1, 101)
    fig, ax = plt.subplots(figsize=(7, 5))
    for label, (name, precision) in enumerate(zip(class_names, pr50, strict=True)):
        precision = np.asarray(precision, np.float64)
        if (precision < 0).all():
            continue
        colour = np.array(class_colour(label)) / 255
        ax.plot(recall, np.clip(precision, 0, 1), color=colour, linewidth=1.2, label=f"{name} ({precision.mean():.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title or "precision-recall, IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(title="class (AP50)", fontsize="small", loc="lower left", ncol=2 if len(class_names) > 8 else 1)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
