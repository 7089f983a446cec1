"""What the default recipe decides from the data: input size and tiles, augmentation, flips,
anchors, the schedule from a time budget; and the warnings of a run gone wrong."""

import numpy as np
import pytest
import torch
from data_helpers import make_images

import multibox.engine.budget as budget
from multibox.auto import describe, recommend_input, resolve, unresolved
from multibox.config import load_config
from multibox.data.dataset import DetectionDataset
from multibox.data.loading import write_facts
from multibox.data.records import DetectionSet, Record
from multibox.data.transforms import Augment, random_crop
from multibox.kinds import KINDS


def _data(tmp_path, images: int, side: int, box: float, count: int = 2) -> DetectionSet:
    """``images`` records of ``side x side`` with ``count`` square boxes of side ``box`` each."""
    paths = make_images(tmp_path, 1, size=(8, 8)) * images  # the pixels are never read here
    boxes = [[10 + 3 * box * i, 10, 10 + 3 * box * i + box, 10 + box] for i in range(count)]
    return DetectionSet([Record(p, side, side, boxes, [0] * count) for p in paths], ["thing"])


def _auto(*extra):
    return load_config("default", ["data.path=nowhere", *extra])


def test_the_input_keeps_small_objects_at_12_px_or_cuts_tiles(tmp_path):
    shape = describe(_data(tmp_path, 10, 400, 10.0))
    assert (shape.images, shape.boxes, shape.side, shape.small, shape.median) == (10, 20, 400, 10, 10)
    cases = [  # (image side, object side) -> (input size, tile)
        ((256, 40.0), (256, 0)),  # large objects: the smallest input
        ((400, 10.0), (480, 0)),  # 10 px objects upscaled by 1.2: 480
        ((2048, 40.0), (608, 0)),  # 2048 -> 608 keeps 40 px objects at 12 px
        ((2048, 12.0), (512, 512)),  # they would be 3.75 px: tiles at native resolution
        ((2048, 6.0), (640, 320)),  # 6 px objects need 2x: tiles of 320 px upscaled to 640
    ]
    for (side, box), (size, tile) in cases:
        config = _auto()
        resolve(config, _data(tmp_path, 10, side, box))
        assert (config.input.size, config.input.tile) == ((size, size), tile), (side, box)
    config = _auto("input.size=[320, 320]")  # given: kept, whole images
    choices = resolve(config, _data(tmp_path, 10, 2048, 6.0))
    assert config.input.size == (320, 320) and config.input.tile == 0 and "input.size" not in [c.key for c in choices]
    assert [c.value for c in recommend_input(_data(tmp_path, 10, 2048, 12.0))] == [[512, 512], 512]


def test_augmentation_follows_the_dataset_size_and_flips_its_chirality(tmp_path):
    config = _auto()
    resolve(config, _data(tmp_path, 300, 256, 40.0))
    assert (config.train.augment, config.train.hflip) == ("strong", 0.5)
    config = _auto("data.chiral=true")
    resolve(config, _data(tmp_path, 3000, 256, 40.0))
    assert (config.train.augment, config.train.hflip) == ("none", 0.0)  # flips off leave nothing to do
    config = _auto()
    resolve(config, _data(tmp_path, 3000, 256, 40.0))
    assert (config.train.augment, config.train.hflip) == ("flip", 0.5)
    write_facts(tmp_path, {"chiral": True})  # the dataset says so itself
    config = _auto(f"data.path={tmp_path}")
    choices = resolve(config, _data(tmp_path, 3000, 256, 40.0))
    assert config.train.hflip == 0.0 and "multibox.yaml" in str(choices[-1])
    config = _auto()
    resolve(config, _data(tmp_path, 30, 2048, 12.0))  # 30 images, each 16 tiles: 480 samples
    assert config.train.augment == "strong" and config.input.tile == 512


def test_retinanet_anchors_are_fitted_where_they_cover_more(tmp_path):
    config = _auto()
    data = _data(tmp_path, 20, 256, 11.0, count=3)
    resolve(config, data)
    choices = KINDS["retinanet"].fit(config, data)
    assert [c.key for c in choices] == ["model.retinanet.anchor_sizes", "model.retinanet.anchor_ratios"]
    assert "fitted" in choices[0].reason and min(config.model.retinanet.anchor_sizes) < 32
    assert unresolved(config) == ["train.epochs", "train.eval_every", "train.warmup_steps"]
    given = _auto("model.retinanet.anchor_sizes=[16, 32, 64]", "model.retinanet.anchor_ratios=[1.0]")
    resolve(given, data)
    assert KINDS["retinanet"].fit(given, data) == []


def test_the_time_budget_fits_epochs_and_validations():
    config = _auto("train.time_budget=10")
    # 0.25 s a step of 8 images, 100 steps an epoch (25 s), 200 validation images (3.125 s each time)
    choices = budget.fit_budget(config, 0.25, 100, 200)
    # 570 s: 21 epochs and 7 validations (every 3rd) take 546.9 s; 22 epochs and 8 would take 575
    assert (config.train.epochs, config.train.eval_every) == (21, 3)
    assert [c.key for c in choices] == ["train.epochs", "train.eval_every"] and "timed" in choices[0].reason
    choices = budget.default_schedule(config, 100)
    assert config.train.warmup_steps == 200 and [c.key for c in choices] == ["train.warmup_steps"]
    short = _auto("train.time_budget=1", "train.eval_every=1")
    budget.fit_budget(short, 1.0, 100, 0)  # one epoch is 100 s, over the budget: still one epoch
    assert short.train.epochs == 1 and short.train.eval_every == 1
    budget.default_schedule(short, 100)
    assert short.train.warmup_steps == 10


def test_random_tiles_keep_what_they_show_of_each_box():
    image = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[10, 10, 30, 30], [90, 40, 130, 60], [150, 80, 160, 100]], np.float32)
    for seed in range(20):
        tile, kept, labels = random_crop((image, boxes, np.arange(3)), np.random.default_rng(seed), side=64)
        assert tile.shape == (64, 64, 3)
        assert bool((kept >= 0).all() and (kept <= 64).all())
        for box, label in zip(kept, labels, strict=True):  # at least a quarter of each kept box
            area = np.prod(boxes[label, 2:] - boxes[label, :2])
            assert np.prod(box[2:] - box[:2]) >= 0.25 * area - 1e-3
    small = random_crop((image[:50, :40], boxes[:1], np.arange(1)), np.random.default_rng(0), side=64)
    assert small[0].shape == (50, 40, 3) and small[1].tolist() == [[10, 10, 30, 30]]  # nothing to crop


def test_a_dataset_of_tiles_repeats_each_image_and_decodes_it_once(tmp_path, monkeypatch):
    import multibox.data.dataset as dataset_module

    paths = make_images(tmp_path, 2, size=(200, 300))
    data = DetectionSet([Record(p, 200, 300, [[10, 10, 50, 50]], [0]) for p in paths], ["thing"])
    reads = []
    original = dataset_module.read_image
    monkeypatch.setattr(dataset_module, "read_image", lambda path: reads.append(path) or original(path))
    tiles = DetectionDataset(data, Augment("flip", (64, 64), crop=64), seed=0, repeat=4)
    assert len(tiles) == 8
    items = [tiles[i] for i in range(8)]
    assert [int(t["image_index"]) for _, t in items] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all(image.shape == (3, 64, 64) for image, _ in items) and len(reads) == 2  # cached
    assert not torch.equal(items[0][0], items[1][0])  # different random tiles of one image


def test_timing_steps_leaves_the_run_as_it_found_it(digits, tmp_path):
    from multibox.engine import Trainer

    tiny = ["model.pretrained=none", "model.fpn_channels=16", "train.image_size=[64, 64]", "train.batch_size=4"]
    run = Trainer(load_config("cpu_digits", [f"data.path={digits}", f"output={tmp_path}", *tiny]))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = budget.time_steps(run, steps=2, warmup=1)
    assert seconds > 0 and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in run.model.state_dict().items())
    assert not run.optimizer.state  # no moments left behind either


def test_the_run_warns_of_a_long_warm_up_and_of_memorising(digits, tmp_path, capsys, monkeypatch):
    from multibox.engine import train

    tiny = ["model.pretrained=none", "model.fpn_channels=16", "train.image_size=[64, 64]", "train.batch_size=4",
            "train.epochs=1", "train.warmup_steps=50"]  # fmt: skip
    seen = {"AP50": 0.9}  # as if the model scored 0.9 on training images
    monkeypatch.setattr(budget, "evaluate", lambda model, data, config: (seen, []))
    train(load_config("cpu_digits", [f"data.path={digits}", f"output={tmp_path}", *tiny]), progress=False)
    out = capsys.readouterr().out
    assert "train.warmup_steps (50) is not shorter than the run (4 steps)" in out
    assert "the model memorises its training images: AP50 0.900" in out and "train.augment=strong" in out


def test_auto_settings_left_unresolved_are_a_clear_error():
    from multibox.data.preprocess import Preprocess

    config = _auto()
    assert {"input.size", "input.tile", "train.epochs"} <= set(unresolved(config))
    with pytest.raises(ValueError, match=r"input\.size and input\.tile are 'auto'"):
        Preprocess.of(config.input)
