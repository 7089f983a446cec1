"""Every bad input gets a message that names the place."""

import json

import numpy as np
import pytest
import torch
from data_helpers import make_images, sample_set

from multibox.data import DataError, load_dataset, validate, write_dataset
from multibox.data.dataset import DetectionDataset, detection_collate
from multibox.data.io import read_image
from multibox.data.records import DetectionSet, Record
from multibox.data.transforms import Augment


def _csv(tmp_path, rows, header="image_path,xmin,ymin,xmax,ymax,label"):
    make_images(tmp_path, 2)
    path = tmp_path / "train.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_box_outside_the_image_error_clip_skip(tmp_path):
    path = _csv(tmp_path, ["img0.jpg,10,10,80,20,cat", "img0.jpg,1,1,5,5,cat", "img1.jpg,70,60,90,70,dog"])
    with pytest.raises(
        DataError, match=r"train.csv line 2: box \[10, 10, 80, 20\] lies partly outside the 64x48 image"
    ):
        load_dataset(path)
    data, report = load_dataset(path, policy="clip")
    assert data.records[0].boxes.tolist()[0] == [10, 10, 64, 20]
    assert report.clipped == 1 and report.skipped_boxes == 1  # img1's box is wholly outside: cannot clip
    assert "line 4" in str(report) and "outside the 64x48 image" in str(report)
    data, report = load_dataset(path, policy="skip")
    assert [len(r.boxes) for r in data.records] == [1, 0] and report.skipped_boxes == 2


def test_rounding_past_an_edge_is_snapped_not_reported(tmp_path):
    path = _csv(tmp_path, ["img0.jpg,-0.004,0,64.003,48.0,cat", "img1.jpg,-0.5,1,5,5,dog"])
    with pytest.raises(DataError, match=r"line 3: box \[-0.5, 1, 5, 5\] lies partly outside") as error:
        load_dataset(path)
    assert "line 2" not in str(error.value)  # 0.004 px past the edge is float rounding (YOLO: 6 decimals)
    data, report = load_dataset(path, policy="clip")
    assert data.records[0].boxes.tolist() == [[0, 0, 64, 48]] and report.clipped == 1


@pytest.mark.parametrize(
    "row,message",
    [
        ("img0.jpg,10,10,5,20,cat", r"line 2: box \[10, 10, 5, 20\] has zero or negative width or height"),
        ("img0.jpg,10,10,10,20,cat", "line 2: .* zero or negative width"),
        ("img0.jpg,nan,10,20,20,cat", "line 2: .* NaN or infinite"),
        ("img0.jpg,a,10,20,20,cat", r"line 2: xmin, ymin, xmax, ymax must be numbers"),
    ],
)
def test_bad_csv_boxes(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_dataset(_csv(tmp_path, [row]))


def test_unknown_class_names(tmp_path):
    with pytest.raises(DataError, match=r"line 2: unknown class 'zebra'; known classes: cat, dog"):
        load_dataset(_csv(tmp_path, ["img0.jpg,1,1,5,5,zebra"]), class_names=["cat", "dog"])
    data = sample_set(tmp_path / "voc-src")
    write_dataset(data, tmp_path / "voc", "voc")
    with pytest.raises(DataError, match=r"img0.xml object 2 \(bird\): unknown class 'bird'"):
        load_dataset(tmp_path / "voc", class_names=["cat", "dog"])


def test_missing_csv_column(tmp_path):
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) \['label'\]"):
        load_dataset(_csv(tmp_path, [], header="image_path,xmin,ymin,xmax,ymax"))


def test_missing_and_corrupt_images(tmp_path):
    path = _csv(tmp_path, ["img0.jpg,1,1,5,5,cat"])
    (tmp_path / "img0.jpg").unlink()
    with pytest.raises(DataError, match=r"img0.jpg: image file not found"):
        load_dataset(path)
    (tmp_path / "img0.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with pytest.raises(DataError, match=r"img0.jpg: not a readable image"):
        load_dataset(path)
    with pytest.raises(DataError, match=r"img0.jpg: damaged image file, 23 bytes"):
        read_image(tmp_path / "img0.jpg")


def test_corrupt_image_inside_the_loader_names_the_file(tmp_path):
    make_images(tmp_path, 1)
    data = DetectionSet([Record(tmp_path / "img0.jpg", 48, 64)], ["cat"])
    (tmp_path / "img0.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"img0.jpg: corrupt or unreadable image"):
        DetectionDataset(data, Augment("none", (32, 32)))[0]


def test_yolo_wrong_field_count_and_unknown_class(tmp_path):
    make_images(tmp_path / "images" / "train", 1)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "img0.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n7 0.5 0.5 0.1 0.1\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [cat, dog]\n")
    with pytest.raises(DataError) as error:
        load_dataset(tmp_path / "data.yaml")
    message = str(error.value)
    assert "img0.txt line 2: expected 5 fields 'class cx cy w h', got 4" in message
    assert "img0.txt line 3: unknown class 7; the YAML names 2 classes (0..1)" in message
    data, report = load_dataset(tmp_path / "data.yaml", policy="skip")
    assert len(data.records[0].boxes) == 1 and report.skipped_boxes == 2


def test_coco_duplicate_ids_unknown_category_and_bad_bbox(tmp_path):
    make_images(tmp_path, 1)
    (tmp_path / "train.json").write_text(
        json.dumps(
            {
                "images": [
                    {"id": 1, "file_name": "img0.jpg", "width": 64, "height": 48},
                    {"id": 1, "file_name": "img0.jpg", "width": 64, "height": 48},
                ],
                "categories": [{"id": 1, "name": "cat"}],
                "annotations": [
                    {"id": 5, "image_id": 1, "category_id": 2, "bbox": [1, 1, 2, 2]},
                    {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2]},
                    {"id": 7, "image_id": 3, "category_id": 1, "bbox": [1, 1, 2, 2]},
                ],
            }
        )
    )
    with pytest.raises(DataError) as error:
        load_dataset(tmp_path / "train.json")
    message = str(error.value)
    assert "image id 1: duplicate image id" in message
    assert "annotation id 5: unknown category id 2" in message
    assert "annotation id 6: bbox must be [x, y, width, height] numbers" in message
    assert "annotation id 7: refers to image id 3, which is not in 'images'" in message


def test_malformed_files(tmp_path):
    (tmp_path / "train.json").write_text("{not json")
    with pytest.raises(DataError, match=r"train.json: not valid JSON"):
        load_dataset(tmp_path / "train.json")
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "Annotations" / "a.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"a.xml: cannot be read as VOC XML"):
        load_dataset(voc, split="all")
    (voc / "Annotations" / "a.xml").write_text(
        "<annotation><size><width>9</width><height>9</height></size><object><name>cat</name>"
        "<bndbox><xmin>1</xmin><ymin>x</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object></annotation>"
    )
    with pytest.raises(DataError, match=r"a.xml object 1 \(cat\): bndbox needs numeric"):
        load_dataset(voc, split="all")


def test_error_message_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"data.policy=clip.*data.policy=skip"):
        load_dataset(_csv(tmp_path, ["img0.jpg,-5,1,5,5,cat"]))


def test_empty_image_through_the_whole_loader(tmp_path):
    path = _csv(tmp_path, ["img0.jpg,,,,,", "img1.jpg,1,2,30,40,cat"])
    data, report = load_dataset(path)
    assert [len(r.boxes) for r in data.records] == [0, 1] and not report.problems
    for preset in ("none", "flip", "ssd", "retina", "mosaic"):
        dataset = DetectionDataset(data, Augment(preset, (32, 32)))
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=detection_collate)
        images, targets = next(iter(loader))
        assert images.shape == (2, 3, 32, 32)
        assert targets[0]["boxes"].shape[1] == 4 and targets[0]["labels"].dtype == torch.long
        if preset != "mosaic":  # a mosaic borrows boxes from other images
            assert targets[0]["boxes"].shape == (0, 4)


def test_validate_rejects_unknown_policy():
    with pytest.raises(ValueError, match=r"policy"):
        validate(DetectionSet([], []), "ignore")


def test_record_checks_its_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"2 boxes, 1 labels"):
        Record(tmp_path / "x.jpg", 10, 10, np.zeros((2, 4)), [0])
