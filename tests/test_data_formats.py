import json

import numpy as np
import pytest
from data_helpers import make_images, sample_set
from pycocotools.coco import COCO

from multibox.data import DataError, detect_format, load_dataset, read_dataset, write_dataset
from multibox.data.formats import read_coco, read_voc, read_yolo, write_coco_results
from multibox.structures import Detections


def _same_records(a, b, atol=1e-3):
    assert a.class_names == b.class_names
    assert len(a.records) == len(b.records)
    for ra, rb in zip(
        sorted(a.records, key=lambda r: r.image_path.name),
        sorted(b.records, key=lambda r: r.image_path.name),
        strict=True,
    ):
        assert (ra.height, ra.width) == (rb.height, rb.width)
        assert ra.labels.tolist() == rb.labels.tolist()
        np.testing.assert_allclose(ra.boxes, rb.boxes, atol=atol)


def test_round_trip_voc_coco_yolo_csv_voc(tmp_path):
    original = sample_set(tmp_path / "src")
    current = original
    for step, fmt in enumerate(["voc", "coco", "yolo", "csv", "voc"]):
        where = write_dataset(current, tmp_path / f"{step}-{fmt}", fmt, "train")
        current, report = load_dataset(where, "train", fmt)
        assert not report.problems
        _same_records(original, current)
    assert detect_format(tmp_path / "4-voc") == "voc"


def test_voc_is_one_based_and_keeps_difficult(tmp_path):
    (tmp_path / "JPEGImages").mkdir(parents=True)
    make_images(tmp_path / "JPEGImages", 1)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "img0.xml").write_text(
        "<annotation><filename>img0.jpg</filename><size><width>64</width><height>48</height></size>"
        "<object><name>dog</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax>"
        "<ymax>20</ymax></bndbox></object></annotation>"
    )
    data = read_voc(tmp_path, split="all")
    record = data.records[0]
    assert record.boxes.tolist() == [[0.0, 0.0, 10.0, 20.0]]  # pixels 1..10 -> [0, 10)
    assert record.difficult.tolist() == [True] and data.class_names == ["dog"]


def _coco_file(tmp_path):
    make_images(tmp_path, 3)
    data = {
        "images": [
            {"id": 7, "file_name": "img0.jpg", "width": 64, "height": 48},
            {"id": 9, "file_name": "img1.jpg", "width": 64, "height": 48},
            {"id": 11, "file_name": "img2.jpg", "width": 64, "height": 48},  # no annotations
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [1, 2, 10, 20], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [5.5, 6, 30, 10], "area": 300, "iscrowd": 0},
            {"id": 3, "image_id": 9, "category_id": 3, "bbox": [0, 0, 64, 48], "area": 3072, "iscrowd": 1},
            {"id": 4, "image_id": 9, "category_id": 18, "bbox": [3, 3, 4, 4], "area": 16, "iscrowd": 0},
        ],
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_parser_agrees_with_pycocotools(tmp_path):
    path = _coco_file(tmp_path)
    ours = read_coco(path)
    ref = COCO(str(path))
    assert [r.image_id for r in ours.records] == sorted(ref.getImgIds())
    cat_ids = sorted(ref.getCatIds())
    assert ours.category_ids == cat_ids and ours.class_names == [ref.cats[c]["name"] for c in cat_ids]
    for record in ours.records:
        info = ref.imgs[record.image_id]
        assert (record.height, record.width) == (info["height"], info["width"])
        anns = ref.loadAnns(ref.getAnnIds(imgIds=record.image_id))
        crowd = [a for a in anns if a["iscrowd"]]
        plain = [a for a in anns if not a["iscrowd"]]
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in plain)]).reshape(-1, 4)
        np.testing.assert_allclose(record.boxes, expected)
        assert record.labels.tolist() == [cat_ids.index(a["category_id"]) for a in plain]
        assert len(record.ignore_boxes) == len(crowd)
        assert record.ignore_labels.tolist() == [cat_ids.index(a["category_id"]) for a in crowd]
    assert len(ours.records[2].boxes) == 0  # the image without annotations is kept


def test_coco_write_maps_category_ids_back(tmp_path):
    data = read_coco(_coco_file(tmp_path))
    out = tmp_path / "out" / "train.json"
    write_dataset(data, tmp_path / "out", "coco", "train")
    written = json.loads(out.read_text())
    assert sorted(c["id"] for c in written["categories"]) == [3, 18]
    assert {a["category_id"] for a in written["annotations"]} == {3, 18}
    assert sum(a["iscrowd"] for a in written["annotations"]) == 1
    again = read_coco(out)
    assert again.records[0].boxes.tolist() == data.records[0].boxes.tolist()


def test_coco_results_file(tmp_path):
    det = Detections(np.array([[10.0, 20.0, 30.0, 60.0]]), np.array([0.9]), np.array([1]))
    write_coco_results(tmp_path / "results.json", [42], [det], category_ids=[18, 3])
    assert json.loads((tmp_path / "results.json").read_text()) == [
        {"image_id": 42, "category_id": 3, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.9}
    ]


def test_yolo_names_dict_and_missing_label_file(tmp_path):
    images = make_images(tmp_path / "images" / "val", 2)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val" / "img0.txt").write_text("1 0.5 0.5 0.25 0.5\n\n")
    (tmp_path / "data.yaml").write_text("path: .\nval: images/val\nnames:\n  0: cat\n  1: dog\n")
    data = read_yolo(tmp_path / "data.yaml", "val")
    assert data.class_names == ["cat", "dog"]
    by_name = {r.image_path.name: r for r in data.records}
    assert by_name["img0.jpg"].boxes.tolist() == [[24.0, 12.0, 40.0, 36.0]]
    assert len(by_name["img1.jpg"].boxes) == 0 and images[1].exists()


def test_detect_format_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        detect_format(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="--format"):
        detect_format(tmp_path)


def test_class_list_is_shared_by_splits(tmp_path):
    data = sample_set(tmp_path / "src")
    train = type(data)(data.records[:2], data.class_names)  # no dog in train
    write_dataset(train, tmp_path / "voc", "voc", "train")
    write_dataset(type(data)(data.records[2:], data.class_names), tmp_path / "voc", "voc", "val")
    assert read_dataset(tmp_path / "voc", "train").class_names == read_dataset(tmp_path / "voc", "val").class_names
