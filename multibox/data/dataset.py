"""The Dataset over records, collate and denormalisation."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import IMAGENET_MEAN, IMAGENET_STD
from .io import read_image
from .preprocess import Preprocess
from .records import DetectionSet, Record
from .transforms import Augment, build_transform, mosaic

__all__ = [
    "DetectionDataset",
    "denormalize",
    "detection_collate",
]


class DetectionDataset(Dataset):
    """Images and boxes of a :class:`DetectionSet`, decoded with OpenCV and augmented.

    ``dataset[i]`` is ``(image, target)``: ``image`` a float tensor ``[3, H, W]`` normalised
    with ``mean`` / ``std`` (ImageNet's by default), ``target`` a dict with ``boxes [N, 4]``
    (xyxy pixels of the network input), ``labels [N]`` (``0..C-1``), ``image_index``,
    ``orig_size`` ``(height, width)`` of the file and ``input_size`` after resizing. Images without
    boxes give ``N = 0``.

    Randomness: with ``seed`` set, item ``i`` of epoch ``e`` (see :meth:`set_epoch`) is augmented
    from the generator seeded ``(seed, e, i)``, the same whatever the workers or a resume; without
    it, from one draw of torch's generator per item.

    Args:
        data: records and class names, validated (see :func:`multibox.data.load_dataset`).
        augment: augmentation recipe and input size (default: ``Augment()``, flip at 512x512).
        train: augment (True) or only resize (False).
        seed: makes augmentation a function of (seed, epoch, index).
        repeat: each image is ``repeat`` items of an epoch (record ``i // repeat``): a network
            trained on random tiles of large images (``augment.crop``) sees about as much of each
            image an epoch as one pass over its tiles. Decoded images are then kept in memory (up
            to ``cache_bytes``), as each is cropped ``repeat`` times an epoch.
    """

    def __init__(
        self,
        data: DetectionSet,
        augment: Augment | None = None,
        train: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = None,
        repeat: int = 1,
        cache_bytes: int = 2**30,
    ):
        self.records: list[Record] = list(data.records)
        self.repeat = max(1, int(repeat))
        self._decoded: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_bytes = cache_bytes if self.repeat > 1 else 0
        self.class_names = list(data.class_names)
        self.augment = augment if augment is not None else Augment()
        self.train = train
        self.transform = build_transform(self.augment, train)
        self.preprocess = Preprocess(self.augment.size, self.augment.resize, tuple(mean), tuple(std))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s augmentations (with ``seed`` set)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records) * self.repeat

    def load(self, index: int):
        """The image (RGB uint8) and boxes of record ``index`` as stored, before any transform."""
        record = self.records[index]
        image = self._image(index)
        if image.shape[:2] != (record.height, record.width):
            # trust the pixels: boxes are relative to the image as annotated
            scale = np.array([image.shape[1] / record.width, image.shape[0] / record.height] * 2, np.float32)
            return image, record.boxes * scale, record.labels
        return image, record.boxes, record.labels

    def _image(self, index: int) -> np.ndarray:
        if index in self._decoded:
            self._decoded.move_to_end(index)
            return self._decoded[index]
        image = read_image(self.records[index].image_path)
        if self._cache_bytes:
            self._decoded[index] = image
            while sum(i.nbytes for i in self._decoded.values()) > self._cache_bytes and len(self._decoded) > 1:
                self._decoded.popitem(last=False)
        return image

    def __getitem__(self, item: int) -> tuple[Tensor, dict[str, Tensor]]:
        index = item // self.repeat  # the record; with repeat 1, the item itself
        if self.seed is not None:
            rng = np.random.default_rng([self.seed, self.epoch, item])
        else:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        if self.train and self.augment.preset == "mosaic":
            others = rng.integers(0, len(self.records), size=3)
            sample = mosaic([self.load(i) for i in (index, *others.tolist())], self.augment.size[0], rng)
        else:
            sample = self.load(index)
        image, boxes, labels = self.transform(sample, rng)
        record = self.records[index]
        return self.preprocess.normalize(image), {
            "boxes": torch.from_numpy(np.asarray(boxes, np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(np.asarray(labels, np.int64)).reshape(-1),
            "image_index": torch.tensor(index),
            "orig_size": torch.tensor([record.height, record.width]),
            "input_size": torch.tensor(image.shape[:2]),
        }

    def denormalize(self, images: Tensor) -> Tensor:
        """Undo the normalisation: ``[..., 3, H, W]`` -> ``uint8`` in ``0..255``."""
        return denormalize(images, self.preprocess.mean, self.preprocess.std)


def denormalize(
    images: Tensor, mean: Sequence[float] | Tensor = IMAGENET_MEAN, std: Sequence[float] | Tensor = IMAGENET_STD
) -> Tensor:
    """Normalised images ``[..., 3, H, W]`` back to displayable ``uint8`` in ``0..255``."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)


def detection_collate(batch: Sequence[tuple[Tensor, dict]]) -> tuple[Tensor, list[dict]]:
    """Stack images into ``[B, 3, H, W]`` and keep targets as a list.

    Images of different sizes (the ``minmax`` resize) are padded at the bottom and right with
    zeros (the normalised mean colour), which leaves box coordinates unchanged.
    """
    images = [item[0] for item in batch]
    height = max(i.shape[1] for i in images)
    width = max(i.shape[2] for i in images)
    stacked = images[0].new_zeros((len(images), 3, height, width))
    for slot, image in zip(stacked, images, strict=True):
        slot[:, : image.shape[1], : image.shape[2]] = image
    return stacked, [item[1] for item in batch]
