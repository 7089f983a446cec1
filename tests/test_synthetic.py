import hashlib

import numpy as np
import pytest

import multibox.data.synthetic as synthetic
from multibox.data import load_dataset
from multibox.data.synthetic import SceneConfig, load_digits, render_scene, synthesize_digits


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_identical_files_other_seed_different(tmp_path):
    synthesize_digits(tmp_path / "a", train=12, val=4, seed=5)
    synthesize_digits(tmp_path / "b", train=12, val=4, seed=5)
    synthesize_digits(tmp_path / "c", train=12, val=4, seed=6)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_validation_digits_never_appear_in_training(tmp_path, monkeypatch):
    seen = {}
    original = synthetic.render_scene

    def spy(photos, digits, labels, rng, config):
        seen.setdefault(len(seen), digits)
        return original(photos, digits, labels, rng, config)

    monkeypatch.setattr(synthetic, "render_scene", spy)
    synthesize_digits(tmp_path, train=1, val=1, seed=0)
    train_pool, val_pool = seen[0], seen[1]
    assert len(train_pool) == 4000 and len(val_pool) == 1000
    train_keys = {d.tobytes() for d in train_pool}
    assert not any(d.tobytes() in train_keys for d in val_pool)


@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_read_back_by_the_users_parsers_and_balanced(tmp_path, fmt):
    paths = synthesize_digits(tmp_path, train=300, val=20, seed=1, fmt=fmt)
    train, report = load_dataset(paths["train"], "train")
    val, _ = load_dataset(paths["val"], "val")
    assert not report.problems and len(train.records) == 300 and len(val.records) == 20
    assert train.class_names == [str(d) for d in range(10)]
    counts = np.bincount(np.concatenate([r.labels for r in train.records]), minlength=10)
    assert (np.abs(counts - counts.mean()) <= 0.2 * counts.mean()).all(), counts
    assert any(len(r.boxes) == 0 for r in train.records)  # empty scenes are valid data
    heights = np.concatenate([r.boxes[:, 3] - r.boxes[:, 1] for r in train.records])
    assert heights.min() < 20 and heights.max() > 128


def test_one_class_subset(tmp_path):
    paths = synthesize_digits(tmp_path, train=10, val=2, seed=0, classes=["3"])
    data, _ = load_dataset(paths["train"], "train")
    assert data.class_names == ["3"]
    assert all((r.labels == 0).all() for r in data.records)
    with pytest.raises(ValueError, match="distinct digits"):
        synthesize_digits(tmp_path / "x", classes=["3", "x"])


def test_boxes_are_tight_around_the_ink(monkeypatch):
    monkeypatch.setattr(synthetic, "_background", lambda photos, size, rng: np.full((size, size, 3), 128.0))
    digits, labels = load_digits()
    flat = [np.full((200, 200, 3), 128, np.uint8)]
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(20):
        image, boxes, _ = render_scene(flat, digits, labels, rng, SceneConfig(size=128, max_digits=1))
        if not len(boxes):
            continue
        changed = np.abs(image.astype(int) - 128).max(axis=2) > 0
        ys, xs = np.nonzero(changed)
        x1, y1, x2, y2 = boxes[0]
        # every pixel outside the box is background-ish (faint antialiasing at most one pixel out)
        assert xs.min() >= x1 - 2 and ys.min() >= y1 - 2 and xs.max() < x2 + 2 and ys.max() < y2 + 2
        # the box is no larger than the ink: each edge row/column of the box holds painted pixels
        inside = changed[int(y1) : int(y2), int(x1) : int(x2)]
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        checked += 1
    assert checked >= 10


def test_load_digits_sample():
    digits, labels = load_digits()
    assert digits.shape == (5000, 28, 28) and np.bincount(labels).tolist() == [500] * 10
