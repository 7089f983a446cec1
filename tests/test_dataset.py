import numpy as np
import torch
from data_helpers import make_images

from multibox.data.dataset import (
    DetectionDataset,
    denormalize,
    detection_collate,
)
from multibox.data.records import DetectionSet, Record
from multibox.data.transforms import Augment


def _data(tmp_path):
    paths = make_images(tmp_path, 3, size=(40, 60))
    return DetectionSet(
        [
            Record(paths[0], 40, 60, [[1, 1, 10, 10], [5, 5, 55, 35], [20, 2, 30, 12]], [0, 2, 1]),
            Record(paths[1], 40, 60),
            Record(paths[2], 40, 60, [[0, 0, 6, 6]], [1]),
        ],
        ["a", "b", "c"],
    )


def test_item_layout(tmp_path):
    image, target = DetectionDataset(_data(tmp_path), Augment("none", (40, 60)), train=False)[0]
    assert image.shape == (3, 40, 60) and image.dtype == torch.float32
    assert target["boxes"].tolist() == [[1, 1, 10, 10], [5, 5, 55, 35], [20, 2, 30, 12]]
    assert target["labels"].tolist() == [0, 2, 1] and int(target["image_index"]) == 0
    assert abs(float(image.mean())) < 1.5  # normalised


def test_collate_pads_different_sizes_bottom_right():
    a, b = torch.ones(3, 4, 5), torch.full((3, 6, 3), 2.0)
    images, targets = detection_collate([(a, {"i": 0}), (b, {"i": 1})])
    assert images.shape == (2, 3, 6, 5)
    assert images[0, :, 4:].abs().sum() == 0 and images[1, :, :, 3:].abs().sum() == 0
    assert torch.equal(images[0, :, :4, :5], a) and [t["i"] for t in targets] == [0, 1]


def test_denormalize_inverts_normalisation():
    pixels = torch.randint(0, 256, (3, 8, 8)).float()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    normalised = (pixels / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    assert torch.equal(denormalize(normalised), pixels.to(torch.uint8))


def test_dataloader_with_a_worker(tmp_path):
    dataset = DetectionDataset(_data(tmp_path), Augment("flip", (32, 32)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=1, collate_fn=detection_collate)
    images, targets = next(iter(loader))
    assert images.shape == (3, 3, 32, 32) and [len(t["labels"]) for t in targets] == [3, 0, 1]
    assert np.all([(t["boxes"][:, 2:] <= 32).all().item() for t in targets])
