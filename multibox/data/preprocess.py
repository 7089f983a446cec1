"""The input contract: how an image becomes the network's input, and how boxes come back.

One :class:`Preprocess` (the run's ``input:`` section) serves training (its datasets), evaluation,
prediction, the export metadata and the anchor doctor, so that they cannot disagree on the size,
the resize or the normalisation.

    pre = Preprocess(size=(256, 256), resize="letterbox")
    tensor = pre(pixels)                                  # [3, 256, 256], normalised
    boxes = pre.to_original(found, pixels.shape[:2])      # back to the image's pixels
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from ..config import IMAGENET_MEAN, IMAGENET_STD
from .transforms import RESIZE_MODES, Augment, boxes_to_input, boxes_to_original, build_transform, input_size_of

__all__ = ["Preprocess"]


@dataclass(frozen=True)
class Preprocess:
    """Resize to the network's input, normalise; and the inverse mapping of boxes.

    Attributes:
        size: ``(height, width)`` of the input (for ``minmax``: shorter side ``min(size)``,
            longer at most ``max(size)``).
        resize: ``squish`` (both axes to ``size``), ``letterbox`` (keep the aspect, pad with
            grey) or ``minmax`` (torchvision's detection resize; input sizes vary).
        mean, std: per-channel normalisation of pixel values scaled to 0..1.
        tile: the network sees ``tile x tile`` windows of an image at its own resolution
            (training: random ones; evaluation and prediction: overlapping ones, merged), each
            then resized as an image is; 0: the whole image.
    """

    size: tuple[int, int] = (512, 512)
    resize: str = "squish"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    tile: int = 0

    def __post_init__(self) -> None:
        if self.size is None or self.tile is None:
            raise ValueError("input.size and input.tile are 'auto': `multibox train` decides them from the data")
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"input.resize must be one of {RESIZE_MODES}, got {self.resize!r}")

    @classmethod
    def of(cls, section) -> Preprocess:
        """From a configuration's ``input`` section (anything with ``size``, ``resize``, ``mean``, ``std``)."""
        size = tuple(section.size) if section.size is not None else None
        return cls(size, section.resize, tuple(section.mean), tuple(section.std), section.tile)

    def augment(self, preset: str = "none", rotate: bool = False, hflip: float = 0.5) -> Augment:
        """The training pipeline's recipe: a random tile (with ``tile``), ``preset`` augmentation,
        then this resize."""
        return Augment(preset, self.size, self.resize, rotate, hflip=hflip, crop=self.tile)

    def fixed(self) -> Preprocess:
        """This contract with one input size for every image, as an exported graph needs it:
        ``minmax`` (whose sizes vary) becomes ``letterbox`` at ``size``, which keeps the aspect."""
        return replace(self, resize="letterbox") if self.resize == "minmax" else self

    @cached_property
    def _resize(self):
        return build_transform(Augment("none", self.size, self.resize), train=False)

    @cached_property
    def _scale(self) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1) * 255
        return mean, 1 / (torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1) * 255)

    def __call__(self, pixels: np.ndarray) -> Tensor:
        """The network input ``[3, H, W]`` (float32, normalised) of an RGB ``uint8 [h, w, 3]`` image."""
        return self.normalize(self.resized(pixels))

    def resized(self, pixels: np.ndarray) -> np.ndarray:
        """An RGB ``uint8 [h, w, 3]`` image at its input size, before normalisation."""
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"an image array must be RGB uint8 [H, W, 3], got {pixels.dtype} {pixels.shape}")
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        return self._resize((pixels, *empty), np.random.default_rng(0))[0]

    def normalize(self, image: np.ndarray) -> Tensor:
        """``[3, H, W]`` float32 of an RGB ``uint8 [H, W, 3]`` image already at its input size."""
        mean, inv_std = self._scale
        # channels first while still uint8 (a quarter of the bytes), then normalise in place
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous().float()
        return tensor.sub_(mean).mul_(inv_std)

    def input_size(self, orig_size: Sequence[int]) -> tuple[int, int]:
        """``(height, width)`` of the input made from an image of ``orig_size``."""
        return input_size_of(orig_size, self.size, self.resize)

    def to_input(self, boxes: Tensor, orig_size: Sequence[int]) -> Tensor:
        """xyxy boxes ``[N, 4]`` in the image's pixels -> the input's pixels."""
        return boxes_to_input(boxes, orig_size, self.input_size(orig_size), self.resize)

    def to_original(self, boxes: Tensor, orig_size: Sequence[int], input_size: Sequence[int] | None = None) -> Tensor:
        """xyxy boxes ``[N, 4]`` in the input's pixels -> the image's pixels, clipped to the image
        (``input_size``: the input's size, when it is known; else the one ``orig_size`` gives)."""
        size = self.input_size(orig_size) if input_size is None else input_size
        return boxes_to_original(boxes, orig_size, size, self.resize)

    def shrinks(self, image_size: Sequence[int], tile: int | None = None) -> str | None:
        """What is wrong with showing an image of ``image_size`` (height, width) whole: None when
        it is tiled (``tile``, default the input's) or at most twice the input each way, else e.g.
        ``"2048x2048, 8.0x the network's 256x256 input: its objects shrink 8.0 times"``."""
        height, width = (int(v) for v in image_size)
        factor = min(height / self.size[0], width / self.size[1])
        if (self.tile if tile is None else tile) or factor <= 2:
            return None
        return (f"{width}x{height}, {factor:.1f}x the network's {self.size[0]}x{self.size[1]} input: "
                f"its objects shrink {factor:.1f} times")  # fmt: skip

    def metadata(self) -> dict:
        """What a runtime needs to feed an exported graph: ``image_size``, ``resize``, ``mean``, ``std``."""
        return {"image_size": list(self.size), "resize": self.resize, "mean": list(self.mean), "std": list(self.std),
                "tile": self.tile}  # fmt: skip
