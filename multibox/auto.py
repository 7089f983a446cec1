"""The settings a recipe leaves to the data (``auto``), decided from the training split.

``multibox train data.path=DIR`` uses the ``default`` preset, whose input size, tiling,
anchors, augmentation, flips and schedule say ``auto``: when training starts, :func:`resolve`
reads the training split's statistics (image sizes, object sizes, how many images) and fills
each such setting, with the reason; the run's ``config.yaml`` holds the decisions. Any of them
set by the user (``key=value``) is kept as given.

    choices = resolve(config, train_data)   # fills config in place
    for choice in choices: print(choice)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import Config
from .data.loading import dataset_facts
from .data.records import DetectionSet

__all__ = ["Choice", "DataShape", "describe", "recommend_input", "resolve", "unresolved"]

# Smallest object (pixels of the network input) the finest level (stride 8) sees well: anchors
# start at about this size, and a smaller object falls between its cells.
MIN_OBJECT = 12.0
# Inputs a 2-core CPU trains at a few dozen images a second (MobileNetV2, light FPN and head)
MIN_INPUT, MAX_INPUT = 256, 640
# A dataset of at most this many (image or tile) samples gets the strong augmentation: fewer
# are memorised within minutes by a pretrained backbone
SMALL_DATASET = 1000


@dataclass(frozen=True)
class Choice:
    """One decided setting: ``key=value`` and why."""

    key: str
    value: object
    reason: str

    @property
    def setting(self) -> str:
        """``key=value`` as written on the command line."""
        return f"{self.key}={_shown(self.value)}"

    def __str__(self) -> str:
        return f"{self.setting}: {self.reason}"


def _shown(value) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class DataShape:
    """What the choices depend on: counts, the images' longer side (median), their aspect, and
    object sizes (``sqrt(w h)`` in the images' pixels: 10th percentile and median)."""

    images: int
    boxes: int
    side: float
    aspect: float
    small: float
    median: float


def describe(data: DetectionSet) -> DataShape:
    """The :class:`DataShape` of a dataset split."""
    if not data.records:
        raise ValueError("the training split has no images to decide settings from")
    sides = np.array([max(r.height, r.width) for r in data.records], np.float64)
    aspect = np.median([r.height / r.width for r in data.records])
    wh = np.concatenate([r.boxes[:, 2:] - r.boxes[:, :2] for r in data.records]).reshape(-1, 2)
    sizes = np.sqrt(np.clip(wh[:, 0] * wh[:, 1], 1e-6, None))
    small, median = (float(np.percentile(sizes, 10)), float(np.median(sizes))) if len(sizes) else (math.inf, math.inf)
    return DataShape(len(data.records), len(sizes), float(np.median(sides)), float(aspect), small, median)


def _round32(value: float) -> int:
    return int(max(32, round(value / 32) * 32))


def _input(config: Config, shape: DataShape) -> list[Choice]:
    """Input size and tiling: the small objects (10th percentile) at :data:`MIN_OBJECT` px or more
    at the input, which stays within :data:`MIN_INPUT`..:data:`MAX_INPUT` px; images that would
    need more are cut into tiles at their own resolution (upscaled where objects are tiny)."""
    choices, need = [], MIN_OBJECT / shape.small  # the scale the small objects need
    wanted = shape.side * need  # the input side that keeps them at MIN_OBJECT px
    objects = f"objects of {shape.median:.0f} px (10% under {shape.small:.0f} px) in images of {shape.side:.0f} px"
    if config.input.size is None:
        if wanted <= 1.5 * MAX_INPUT:  # a little under MIN_OBJECT costs less than tiling
            size, tile = int(np.clip(_round32(wanted), MIN_INPUT, MAX_INPUT)), 0
            reason = f"{objects}: the whole image at {size} px keeps them at {shape.small * size / shape.side:.0f} px"
        else:
            size = MAX_INPUT if need > 1 else 512
            tile = _round32(size / max(1.0, need))
            reason = (f"{objects} would be {shape.small * MAX_INPUT / shape.side:.1f} px at {MAX_INPUT}x{MAX_INPUT}: "
                      f"tiles of {tile} px at the images' resolution instead, each at {size}x{size}")  # fmt: skip
        config.input.size = (size, size)
        choices.append(Choice("input.size", [size, size], reason))
        if config.input.tile is None:
            config.input.tile = tile
            said = "whole images" if not tile else f"tiles of {tile} px in training, prediction and evaluation"
            choices.append(Choice("input.tile", tile, said))
    if config.input.tile is None:
        config.input.tile = 0
        choices.append(Choice("input.tile", 0, "input.size is given: whole images"))
    return choices


def _augmentation(config: Config, shape: DataShape) -> list[Choice]:
    """Flips unless the objects are chiral; strong augmentation for small datasets, flips (if
    any) for larger ones."""
    t, choices = config.train, []
    if t.hflip is None:
        said = dataset_facts(config.data.path).get("chiral", False)
        chiral = config.data.chiral or said
        t.hflip = 0.0 if chiral else 0.5
        why = ("the dataset's multibox.yaml says chiral: mirrored objects are not objects" if said and not
               config.data.chiral else "data.chiral: mirrored objects are not objects" if chiral else
               "mirror images are objects too (data.chiral=true says otherwise)")  # fmt: skip
        choices.append(Choice("train.hflip", t.hflip, why))
    if t.augment is None:
        samples = shape.images * (max(1.0, shape.side / config.input.tile) ** 2 if config.input.tile else 1.0)
        if samples <= SMALL_DATASET:
            t.augment = "strong"
            why = f"{samples:.0f} training samples: photometric, scale jitter 0.5-1.5 and flips against memorising"
        else:
            t.augment = "flip" if t.hflip else "none"
            why = f"{samples:.0f} training samples: " + ("flips suffice" if t.hflip else "varied enough as they are")
        choices.insert(0, Choice("train.augment", t.augment, why))
    return choices


def resolve(config: Config, data: DetectionSet) -> list[Choice]:
    """Fill ``config``'s ``auto`` input and augmentation settings from the training split ``data``
    (in place) and say why. The model kind fits its anchors (``kinds.Kind.fit``), and the trainer
    the schedule, after this."""
    shape = describe(data)
    return _input(config, shape) + _augmentation(config, shape)


def recommend_input(data: DetectionSet) -> list[Choice]:
    """The input size and tiling :func:`resolve` would choose for ``data`` (for the anchor doctor's
    advice when anchors cover too few boxes at a recipe's input)."""
    config = Config()
    config.input.size = config.input.tile = None
    return _input(config, describe(data))


def unresolved(config: Config) -> list[str]:
    """The settings of ``config`` still ``auto`` (empty once training has decided them)."""
    from .config import AUTO_KEYS

    left = []
    for key in sorted(AUTO_KEYS):
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        if node is None:
            left.append(key)
    return left
