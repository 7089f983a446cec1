"""Training-pipeline throughput: images/s of the loader at 512x512 beside a model's training step.

    python bench/loader.py [--images 160 --batch 16 --size 512]

Renders synthetic digit scenes at 512x512 into a temporary folder, then times
``DetectionDataset`` + ``DataLoader`` (decode, augment, normalise, collate) for the ``flip``
and ``ssd`` presets with 0, 1 and 2 workers, and the same ``flip`` pipeline built on
``torchvision.transforms.v2`` (the alternative DESIGN.md names), in this process. For scale,
it times one training step (forward, loss, backward, SGD) of torchvision's RetinaNet with a
MobileNetV2-FPN backbone at the same size: multibox's own models arrive with issue 4.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _timing import machine
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from multibox.data import load_dataset
from multibox.data.dataset import DetectionDataset, detection_collate
from multibox.data.io import read_image
from multibox.data.synthetic import SceneConfig, synthesize_digits
from multibox.data.transforms import Augment


class TorchvisionPipeline(Dataset):
    """The ``flip`` or ``ssd`` preset (then squish resize, normalise) on torchvision.transforms.v2."""

    def __init__(self, records, size, preset="flip"):
        self.records = records
        ssd = [v2.RandomPhotometricDistort(p=0.5), v2.RandomZoomOut(fill=0, p=0.5), v2.RandomIoUCrop()]
        self.transform = v2.Compose(
            [
                *(ssd if preset == "ssd" else []),
                v2.RandomHorizontalFlip(0.5),
                v2.Resize((size, size), antialias=True),
                v2.SanitizeBoundingBoxes(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        record = self.records[index]
        image = torch.from_numpy(read_image(record.image_path)).permute(2, 0, 1)
        boxes = tv_tensors.BoundingBoxes(
            torch.from_numpy(record.boxes), format="XYXY", canvas_size=(record.height, record.width)
        )
        image, target = self.transform(image, {"boxes": boxes, "labels": torch.from_numpy(record.labels)})
        return image, {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]}


def images_per_second(dataset, batch: int, workers: int, epochs: int = 2) -> float:
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=detection_collate,
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up: workers start, caches fill
        break
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for images, _ in loader:
            seen += len(images)
    return seen / (time.perf_counter() - start)


def model_images_per_second(size: int, batch: int = 4, steps: int = 3) -> float:
    from torchvision.models import mobilenet_v2
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    backbone = _mobilenet_extractor(mobilenet_v2(weights=None), True, 5)
    anchors = AnchorGenerator(((32, 40, 50), (64, 80, 101), (128, 161, 203)), ((0.5, 1.0, 2.0),) * 3)
    model = RetinaNet(backbone, num_classes=10, anchor_generator=anchors, min_size=size, max_size=size)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    images = [torch.rand(3, size, size) for _ in range(batch)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 200.0, 220.0]]), "labels": torch.tensor([1])}] * batch
    timings = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - start)
    return batch / float(np.median(timings[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        synthesize_digits(folder, train=args.images, val=0, seed=0, config=SceneConfig(size=args.size))
        print(f"rendered {args.images} scenes of {args.size}x{args.size} in {time.perf_counter() - start:.1f} s")
        data, _ = load_dataset(Path(folder), "train")
        size = (args.size, args.size)
        for preset in ("flip", "ssd"):
            dataset = DetectionDataset(data, Augment(preset, size))
            for workers in (0, 1, 2):
                rate = images_per_second(dataset, args.batch, workers)
                print(f"loader  {preset:<5} albumentations  workers={workers}  {rate:7.1f} images/s", flush=True)
        for preset in ("flip", "ssd"):
            ours, theirs = [], []
            for _ in range(3):  # alternate, so that drift hits both alike
                ours.append(images_per_second(DetectionDataset(data, Augment(preset, size)), args.batch, 0, 1))
                theirs.append(images_per_second(TorchvisionPipeline(data.records, args.size, preset), args.batch, 0, 1))
            a, b = float(np.median(ours)), float(np.median(theirs))
            print(
                f"loader  {preset:<5} multibox (albumentations) {a:7.1f} vs torchvision.transforms.v2 {b:7.1f} "
                f"images/s (workers=0, median of 3): {a / b:.2f}x",
                flush=True,
            )
    print(
        f"model   torchvision RetinaNet MobileNetV2-FPN training step at {args.size}x{args.size}: "
        f"{model_images_per_second(args.size):.1f} images/s"
    )


if __name__ == "__main__":
    main()
