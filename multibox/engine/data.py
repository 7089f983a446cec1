"""What a run trains on: its splits, read and validated, and the order it visits them in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Sampler

from ..config import Config
from ..data import DetectionSet, load_dataset
from ..data.check import unseen_classes, unseen_warning

__all__ = ["EpochSampler", "load_splits"]


class EpochSampler(Sampler[int]):
    """Epoch ``e``'s order is a permutation seeded ``seed + e``; iteration can start mid-epoch.

    In a run of ``world`` processes, every global batch of ``batch_size x world`` consecutive
    indices of that order is split in ``world`` slices of ``batch_size``, process ``rank``
    taking slice ``rank``: the processes together see the batches one process of
    ``batch_size x world`` would (incomplete global batches are dropped).
    """

    def __init__(self, size: int, seed: int, batch_size: int = 1, rank: int = 0, world: int = 1):
        self.size, self.seed, self.epoch, self.start = size, seed, 0, 0
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> Tensor:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        if self.world == 1:
            return order
        step = self.batch_size * self.world
        usable = (self.size // step) * step
        return order[:usable].view(-1, self.world, self.batch_size)[:, self.rank].reshape(-1)

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start :].tolist())

    def __len__(self) -> int:
        return len(self._order()) - self.start


def load_splits(config: Config, output: Path | None = None) -> tuple[DetectionSet, DetectionSet | None]:
    """The training split and the validation split (None without ``data.val_split``), validated
    by ``data.policy``; what the policy clipped or skipped is reported into ``output``."""
    d = config.data
    train_data, report = load_dataset(d.path, d.train_split, d.format, d.policy)
    val_data = None
    if d.val_split:
        val_data, _ = load_dataset(d.path, d.val_split, d.format, d.policy, class_names=train_data.class_names)
    if report.problems and output is not None:
        (output / "data_report.txt").write_text(str(report) + "\n")
        print(f"training data: {str(report).splitlines()[0]} (details in {output / 'data_report.txt'})")
    if not train_data.records:
        raise ValueError(f"{d.path}: the '{d.train_split}' split has no images")
    unseen = unseen_classes(train_data.summary(), val_data.summary()) if val_data is not None else {}
    if unseen and output is not None:
        print(f"warning: {unseen_warning(d.val_split, unseen, d.train_split)}")
    if d.one_class:
        train_data = train_data.one_class(d.one_class)
        val_data = val_data.one_class(d.one_class) if val_data is not None else None
    return train_data, val_data
