"""Small on-disk datasets for the data tests."""

from pathlib import Path

import numpy as np

from multibox.data.io import write_image
from multibox.data.records import DetectionSet, Record


def make_images(folder: Path, count: int, size=(48, 64), seed=0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.jpg"
        write_image(path, rng.integers(0, 255, size=(*size, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def sample_set(folder: Path) -> DetectionSet:
    """Three images: two boxes, no box, one box; classes cat, dog, bird."""
    paths = make_images(folder, 3)
    records = [
        Record(paths[0], 48, 64, [[1, 2, 30, 40], [10.5, 5.25, 60, 47]], [0, 2], image_id="img0"),
        Record(paths[1], 48, 64, image_id="img1"),
        Record(paths[2], 48, 64, [[0, 0, 64, 48]], [1], image_id="img2"),
    ]
    return DetectionSet(records, ["cat", "dog", "bird"])


def fit_one_batch(run, steps: int = 25, lr: float = 1e-3) -> tuple[float, float]:
    """A Trainer's total loss on its first batch before and after ``steps`` steps on that batch alone."""
    run.model.train()
    images, targets = next(iter(run.loader(0)))
    first = run.losses(images, targets)["total"].item()
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    for _ in range(steps):
        run.step(run.losses(images, targets))
    return first, run.losses(images, targets)["total"].item()
