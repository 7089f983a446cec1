"""The shape scenes: a second kind of dataset, rendered reproducibly, validation on other photographs."""

import numpy as np
import pytest
from typer.testing import CliRunner

from multibox.cli import app
from multibox.data import load_dataset
from multibox.data import shapes as shapes_module
from multibox.data.shapes import SHAPE_CLASSES, ShapeConfig, synthesize_shapes

SMALL = ShapeConfig(width=160, height=120, min_side=12, max_side=40, min_objects=3, max_objects=6, distractors=3)


def test_scenes_load_as_voc_with_their_boxes_inside_and_the_same_seed_gives_the_same_files(tmp_path):
    synthesize_shapes(tmp_path / "a", train=4, val=2, seed=5, config=SMALL)
    synthesize_shapes(tmp_path / "b", train=4, val=2, seed=5, config=SMALL)
    for split, count in (("train", 4), ("val", 2)):
        data, _ = load_dataset(tmp_path / "a", split)
        assert data.class_names == list(SHAPE_CLASSES) and len(data.records) == count
        for record in data.records:
            assert (record.height, record.width) == (120, 160) and len(record.boxes) >= 1
            boxes = record.boxes
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 120).all()
            sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
            # a shape of side s has a box of 0.5 s (a thin triangle) to 1.5 s (a rotated square)
            assert (sides >= 0.4 * SMALL.min_side).all() and (sides <= 1.5 * SMALL.max_side).all()
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_training_and_validation_scenes_are_drawn_on_different_photographs(tmp_path, monkeypatch):
    render = shapes_module.render_shapes
    seen = []
    monkeypatch.setattr(
        shapes_module, "render_shapes", lambda photos, rng, config: seen.append(photos) or render(photos, rng, config)
    )
    synthesize_shapes(tmp_path, train=2, val=2, seed=0, config=SMALL)
    train, val = {id(p) for p in seen[0]}, {id(p) for p in seen[-1]}
    assert all({id(p) for p in s} == train for s in seen[:2]) and all({id(p) for p in s} == val for s in seen[2:])
    assert train and val and not train & val


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objects", "5"], "give the objects per scene as MIN,MAX"),
        (["--objects", "6,2"], "give --objects MIN,MAX with 0 <= MIN <= MAX"),
        (["--min-side", "50", "--max-side", "20"], "give 0 < --min-side <= --max-side < --size"),
        (["--size", "64", "--max-side", "100"], "do not fit scenes of 64x64"),
    ],
)
def test_the_cli_names_bad_settings_and_what_to_give(tmp_path, args, message):
    result = CliRunner().invoke(app, ["data", "synth", "shapes", "--out", str(tmp_path / "s"), "--train", "1", *args])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "s").exists()  # nothing half-written
