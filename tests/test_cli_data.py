import json

from typer.testing import CliRunner

from multibox.cli import app

runner = CliRunner()


def test_synth_check_convert_show(tmp_path):
    result = runner.invoke(
        app, ["data", "synth", "digits", "--out", str(tmp_path / "d"), "--train", "12", "--val", "4", "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "check", str(tmp_path / "d"), "--plot", str(tmp_path / "boxes.png")])
    assert result.exit_code == 0, result.output
    assert "[train] 12 images" in result.output and "[val] 4 images" in result.output
    assert "0 problem(s) found" in result.output and (tmp_path / "boxes.png").stat().st_size > 1000
    for fmt in ("coco", "yolo", "csv"):
        result = runner.invoke(app, ["data", "convert", str(tmp_path / "d"), str(tmp_path / fmt), "--to", fmt])
        assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "coco" / "val.json").read_text())["images"]) == 4
    result = runner.invoke(
        app, ["data", "show", str(tmp_path / "yolo"), "--split", "val", "--n", "4", "--out", str(tmp_path / "grid.png")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_check_lists_problems_and_fails(tmp_path):
    (tmp_path / "img.jpg").write_bytes(b"not an image")
    (tmp_path / "train.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\nimg.jpg,1,1,5,5,cat\n")
    result = runner.invoke(app, ["data", "check", str(tmp_path / "train.csv"), "--no-plot"])
    assert result.exit_code == 1 and "img.jpg: not a readable image" in result.output


def test_check_reports_each_box_problem(tmp_path):
    import numpy as np

    from multibox.data.io import write_image

    write_image(tmp_path / "a.jpg", np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "train.csv").write_text(
        "image_path,xmin,ymin,xmax,ymax,label\na.jpg,1,1,50,5,cat\na.jpg,4,4,2,8,cat\na.jpg,1,1,3,3,cat\n"
    )
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--plot", str(tmp_path / "stats.png")])
    assert result.exit_code == 1 and (tmp_path / "stats.png").is_file()
    assert "train.csv line 2: box [1, 1, 50, 5] lies partly outside the 30x20 image" in result.output
    assert "train.csv line 3: box [4, 4, 2, 8] has zero or negative width or height" in result.output
    assert "2 problem(s) found" in result.output


def test_convert_unknown_target_format(tmp_path):
    runner.invoke(app, ["data", "synth", "digits", "--out", str(tmp_path / "d"), "--train", "2", "--val", "1"])
    result = runner.invoke(app, ["data", "convert", str(tmp_path / "d"), str(tmp_path / "x"), "--to", "kitti"])
    assert result.exit_code == 2 and "format must be one of" in result.output


def test_check_finds_duplicate_image_ids_and_corrupt_images(tmp_path):
    import numpy as np

    from multibox.data.io import write_image

    for sub in ("a", "b"):
        write_image(tmp_path / "images" / "train" / sub / "x.jpg", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "images" / "train" / "c").mkdir()
    (tmp_path / "images" / "train" / "c" / "y.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [cat]\n")
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--no-plot", "--no-decode"])
    assert result.exit_code == 1 and "y.jpg: not a readable image" in result.output
    (tmp_path / "images" / "train" / "c" / "y.jpg").unlink()
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--no-plot"])
    assert result.exit_code == 1 and "image id 'x' also used by" in result.output


def test_coco_images_in_another_folder(tmp_path):
    import numpy as np

    from multibox.data.io import write_image

    write_image(tmp_path / "val2017" / "a.jpg", np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg", "width": 30, "height": 20}],
                "categories": [{"id": 1, "name": "cat"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}],
            }
        )
    )
    json_path = str(tmp_path / "annotations" / "instances_val2017.json")
    result = runner.invoke(app, ["data", "check", json_path, "--no-plot"])
    assert result.exit_code == 1 and "a.jpg: image file not found" in result.output
    result = runner.invoke(app, ["data", "check", json_path, "--no-plot", "--images", str(tmp_path / "val2017")])
    assert result.exit_code == 0, result.output
