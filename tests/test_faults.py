"""Faults and bad input (issue 25): broken files, signals, a full disk, a wrong checkpoint, bad
options. Each case: nothing already written is lost, and the answer names the file and what to do.

The signal tests send real SIGINT / SIGTERM / SIGKILL to a real `multibox train` process, then
resume it and compare with a run that went straight through (same process kind, same threads,
`train.deterministic`: the same kernels, so the weights must be equal, not close).
"""

import csv
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from multibox.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from multibox.cli import app
from multibox.config import ConfigError, load_config
from multibox.data import load_dataset
from multibox.data.io import WriteError, damage, read_image, write_image
from multibox.data.records import DataError
from multibox.engine import train

runner = CliRunner()

# A small, fast RetinaNet: MobileNetV2 without pretrained weights (checkpoints of ~20 MB), 64x64 inputs
TINY = [
    "model.backbone=mobilenet_v2", "model.pretrained=none", "model.fpn_channels=16", "input.size=[64, 64]",
    "train.batch_size=4", "train.warmup_steps=2", "train.deterministic=true", "train.augment=flip",
    "train.ema_decay=0.9",
]  # fmt: skip


def _overrides(digits, output, *extra):
    return [f"data.path={digits}", f"output={output}", *TINY, *extra]


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _truncated_copy(source: Path, target: Path, keep: int) -> Path:
    target.write_bytes(source.read_bytes()[:keep])
    return target


# --- broken images ---------------------------------------------------------------------------


def test_truncated_jpegs_and_pngs_are_named_whatever_the_length(tmp_path, digits):
    source = sorted((digits / "JPEGImages").glob("*.jpg"))[0]
    size = source.stat().st_size
    for keep in (size // 3, 700, size - 2):
        cut = _truncated_copy(source, tmp_path / f"cut{keep}.jpg", keep)
        assert damage(cut) is not None and f"{keep:,} bytes" in damage(cut)
        with pytest.raises(DataError, match=rf"cut{keep}.jpg: damaged image file"):
            read_image(cut)
    assert damage(source) is None
    # bytes after a JPEG's end (some cameras append data) are not damage: decoded to decide
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes(source.read_bytes() + b"extra metadata")
    assert damage(trailing) is None and read_image(trailing).shape == read_image(source).shape
    png = tmp_path / "whole.png"
    write_image(png, read_image(source))
    assert damage(png) is None
    cut = _truncated_copy(png, tmp_path / "cut.png", png.stat().st_size // 2)
    assert "damaged image file" in damage(cut)


def _voc_with_a_truncated_image(digits, tmp_path) -> tuple[Path, Path]:
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(digits, root)
    victim = sorted((root / "JPEGImages").glob("train_*.jpg"))[1]
    victim.write_bytes(victim.read_bytes()[:700])
    return root, victim


def test_data_check_training_and_predict_on_a_truncated_jpeg(digits, tmp_path, capsys):
    root, victim = _voc_with_a_truncated_image(digits, tmp_path)
    result = runner.invoke(app, ["data", "check", str(root), "--no-plot"])
    assert result.exit_code == 1
    assert f"problem: {victim}: damaged image file, 700 bytes" in result.output
    # training: an error naming the file (data.policy=error) ...
    with pytest.raises(DataError, match=rf"(?s){victim.name}: damaged image file.*data.policy=skip"):
        train(load_config(None, _overrides(root, tmp_path / "run", "train.max_steps=1")), progress=False)
    # ... or the image skipped and counted (data.policy=skip)
    config = load_config(None, _overrides(root, tmp_path / "run", "train.max_steps=1", "data.policy=skip"))
    train(config, progress=False)
    assert "0 box(es) and 1 image(s) skipped" in capsys.readouterr().out
    assert victim.name in (tmp_path / "run" / "data_report.txt").read_text()
    # predict: an error naming the file, exit 2
    result = runner.invoke(app, ["predict", "--weights", str(tmp_path / "run" / "last.pt"), str(victim),
                                 "--out", str(tmp_path / "p")])  # fmt: skip
    assert result.exit_code == 2 and f"{victim}: damaged image file" in result.output


def test_geotiff_tags_leave_stderr_quiet(tmp_path, capfd):
    from PIL import Image, TiffImagePlugin

    tags = TiffImagePlugin.ImageFileDirectory_v2()
    for tag, values, kind in ((33550, (0.5, 0.5, 0.0), 12), (33922, (0.0,) * 6, 12), (34735, (1, 1, 0, 0), 3)):
        tags[tag], tags.tagtype[tag] = values, kind  # pixel scale, tie point, GeoKey directory
    path = tmp_path / "aerial.tif"
    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(path, tiffinfo=tags)
    capfd.readouterr()
    assert read_image(path).shape == (32, 48, 3)
    assert "TIFF" not in capfd.readouterr().err


# --- what the splits hold, and the plot -------------------------------------------------------


def _split_by_class(tmp_path: Path) -> Path:
    """A CSV dataset whose val split holds a class ('bird') that train does not."""
    from data_helpers import make_images

    make_images(tmp_path, 4)
    (tmp_path / "train.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\nimg0.jpg,1,1,30,30,cat\n"
                                        "img1.jpg,2,2,40,40,dog\n")  # fmt: skip
    (tmp_path / "val.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\nimg2.jpg,1,1,30,30,bird\n"
                                      "img3.jpg,1,1,20,20,bird\nimg3.jpg,5,5,30,30,cat\n")  # fmt: skip
    return tmp_path


def test_a_class_only_in_val_is_named_by_data_check_and_train(tmp_path, capsys):
    from multibox.engine.data import load_splits

    root = _split_by_class(tmp_path)
    result = runner.invoke(app, ["data", "check", str(root), "--no-plot"])
    assert result.exit_code == 0
    assert "class(es) of 'val' have no box in 'train': bird (2 boxes)" in result.output
    config = load_config(None, [f"data.path={root}", "data.format=csv"])
    load_splits(config, tmp_path)
    assert "warning: 1 class(es) of 'val' have no box in 'train': bird (2 boxes)" in capsys.readouterr().out


def test_data_check_plots_every_split_beside_the_data_or_to_out(tmp_path, monkeypatch):
    import matplotlib.axes

    root = _split_by_class(tmp_path / "data")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    labels = []
    original = matplotlib.axes.Axes.legend
    monkeypatch.setattr(matplotlib.axes.Axes, "legend", lambda self, *a, **k: labels.append(
        [t for t in self.get_legend_handles_labels()[1]]) or original(self, *a, **k))  # fmt: skip
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert (root / "box_statistics.png").is_file() and not any(elsewhere.iterdir())
    assert labels == [["train (2)", "val (3)"]]
    result = runner.invoke(app, ["data", "check", str(root), "--out", str(tmp_path / "plots" / "boxes.png")])
    assert result.exit_code == 0 and (tmp_path / "plots" / "boxes.png").is_file()


# --- signals during training ----------------------------------------------------------------


def _start(overrides: list[str], resume: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "multibox", "train", *overrides]
    command += ["--resume", str(resume)] if resume is not None else ["--config", "cpu_digits"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_steps(run: Path, process: subprocess.Popen, steps: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    log = run / "train_log.csv"
    while not (log.is_file() and len(_rows(log)) >= steps):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run did not reach its first steps"
        time.sleep(0.05)


def _straight(digits, tmp_path, steps: int) -> dict:
    """A run that is never interrupted, stopped at ``steps`` (train.max_steps: the same schedule)."""
    output = tmp_path / f"straight{steps}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the processes it is compared with (OMP_NUM_THREADS=1): the same kernels
    try:
        config = load_config("cpu_digits", _overrides(digits, output, "train.epochs=100", f"train.max_steps={steps}"))
        train(config, progress=False)
    finally:
        torch.set_num_threads(threads)
    return load_checkpoint(output / "last.pt")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for part in ("model",):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key
    for key, value in a["ema"]["module"].items():
        assert torch.equal(value, b["ema"]["module"][key]), key


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_current_step_and_the_resumed_run_equals_a_straight_one(digits, tmp_path, signum):
    run = tmp_path / "run"
    process = _start(_overrides(digits, run, "train.epochs=100"))
    _wait_for_steps(run, process, 6)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err[-2000:]
    saved = load_checkpoint(run / "last.pt")
    step = saved["step"]
    assert f"stopped at step {step} of 400" in err
    assert f"saved {run / 'last.pt'}; continue with: multibox train --resume {run / 'last.pt'}" in err
    assert int(_rows(run / "train_log.csv")[-1]["step"]) == step  # saved at the step it reached
    assert (run / "losses.png").is_file()  # the plot of the losses so far
    # resumed with the checkpoint's own configuration, a few steps further, then compared
    target = step + 3
    process = _start([f"train.max_steps={target}"], resume=run / "last.pt")
    _, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-2000:]
    _assert_same_weights(load_checkpoint(run / "last.pt"), _straight(digits, tmp_path, target))
    steps = [int(r["step"]) for r in _rows(run / "train_log.csv")]
    assert steps == list(range(1, target + 1))


def test_a_second_ctrl_c_stops_at_once(digits, tmp_path):
    run = tmp_path / "run"
    process = _start(_overrides(digits, run, "train.epochs=100", "train.checkpoint_every=1"))
    _wait_for_steps(run, process, 3)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "stopped at once" in err or "continue with" in err  # the second may land after the save
    load_checkpoint(run / "last.pt")  # whatever happened, last.pt is whole (its checksum holds)


def test_kill_9_while_saving_leaves_the_last_checkpoint_whole_and_the_resume_cleans_up(digits, tmp_path):
    run = tmp_path / "run"
    process = _start(_overrides(digits, run, "train.epochs=100", "train.checkpoint_every=1"))
    _wait_for_steps(run, process, 4)
    deadline = time.monotonic() + 60
    while not list(run.glob(".last.pt.*.tmp")):  # a checkpoint is written every step: catch one mid-write
        assert time.monotonic() < deadline and process.poll() is None, "no checkpoint write seen"
        time.sleep(0.001)
    process.kill()
    process.communicate(timeout=60)
    saved = load_checkpoint(run / "last.pt")  # the previous one, whole (its checksum holds)
    logged = len(_rows(run / "train_log.csv"))
    assert logged >= saved["step"]
    if not list(run.glob(".*.tmp")):  # the kill landed just after the rename
        (run / ".last.pt.leftover.tmp").write_bytes(b"\0" * 1000)
    target = max(saved["step"], logged) + 2
    process = _start([f"train.max_steps={target}"], resume=run / "last.pt")
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-2000:]
    assert "removed the temporary files" in out and not list(run.glob(".*.tmp"))
    steps = [int(r["step"]) for r in _rows(run / "train_log.csv")]
    assert steps == list(range(1, target + 1))  # no step logged twice
    _assert_same_weights(load_checkpoint(run / "last.pt"), _straight(digits, tmp_path, target))


# --- checkpoints ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(digits, tmp_path_factory):
    """A finished two-epoch run (8 steps)."""
    run = tmp_path_factory.mktemp("finished")
    train(load_config(None, _overrides(digits, run, "train.epochs=2")), progress=False)
    return run


def test_resume_of_a_missing_file_is_one_line(tmp_path):
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "nothing.pt")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'nothing.pt'}: checkpoint not found"


def test_flipped_bytes_and_a_cut_checkpoint_are_named_at_load(finished, tmp_path):
    data = bytearray((finished / "last.pt").read_bytes())
    rng = np.random.default_rng(0)
    for position in rng.choice(np.arange(len(data) // 4, 3 * len(data) // 4), size=200, replace=False):
        data[position] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"flipped.pt: (damaged: its contents no longer match the checksum|"
                                              r"not a readable multibox checkpoint)"):  # fmt: skip
        load_checkpoint(tmp_path / "flipped.pt")
    # one flipped bit inside a weight: torch reads it, the checksum does not
    state = load_checkpoint(finished / "last.pt")
    raw = bytearray((finished / "last.pt").read_bytes())
    weight = next(v for v in state["model"].values() if v.numel() > 1000 and v.dtype == torch.float32)
    needle = weight.flatten()[:64].numpy().tobytes()
    raw[raw.index(needle) + 100] ^= 0x01
    (tmp_path / "bit.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"bit.pt: damaged: its contents no longer match the checksum"):
        load_checkpoint(tmp_path / "bit.pt")
    (tmp_path / "cut.pt").write_bytes((finished / "last.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"cut.pt: not a readable multibox checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "bit.pt")])
    assert result.exit_code == 2 and "damaged" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_checkpoint_of_other_classes_or_another_network_is_refused_by_name(finished, digits, tmp_path):
    from multibox.data.synthetic import SceneConfig, synthesize_digits

    other = tmp_path / "two_digits"
    synthesize_digits(other, train=8, val=2, seed=1, classes=["1", "7"], config=SceneConfig(size=64, max_digits=2))
    result = runner.invoke(app, ["train", "--resume", str(finished / "last.pt"), f"data.path={other}"])
    assert result.exit_code == 2
    assert "was trained on 10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9) and the data" in result.output
    assert "has 2 (1, 7)" in result.output
    result = runner.invoke(app, ["train", "--resume", str(finished / "last.pt"), "model.retinanet.fpn_channels=32"])
    assert result.exit_code == 2
    assert "another network than the configuration asks for (model.retinanet.fpn_channels: 16 -> 32" in result.output


def test_resuming_a_finished_run_says_how_to_train_longer(finished):
    result = runner.invoke(app, ["train", "--resume", str(finished)])
    assert result.exit_code == 0
    assert "this run is finished (2 epochs, step 8 of 8" in result.output
    assert f"multibox train --resume {finished / 'last.pt'} train.epochs=4" in result.output
    assert "final:" not in result.output


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match=rf"{path}: no space left on the device \([\d,]+ MB free in {tmp_path}\); "
                                         r"the previous last.pt is intact"):  # fmt: skip
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    assert load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_full_disk_during_training_is_one_line(digits, tmp_path, monkeypatch):
    import multibox.checkpoint

    def full(path, data):
        raise WriteError(errno.ENOSPC, f"{path}: no space left on the device (0 MB free in {tmp_path})")

    monkeypatch.setattr(multibox.checkpoint, "atomic_write_bytes", full)
    result = runner.invoke(app, ["train", *_overrides(digits, tmp_path, "train.epochs=1")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(f"error: {tmp_path}/")
    assert "no space left on the device" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("value", ["0", "-1"])
def test_epochs_that_train_nothing_are_an_error(digits, tmp_path, value):
    with pytest.raises(ConfigError, match=rf"train.epochs must be at least 1, got {value}"):
        load_config(None, [f"train.epochs={value}"])
    result = runner.invoke(app, ["train", *_overrides(digits, tmp_path, f"train.epochs={value}")])
    assert result.exit_code == 2 and "train.epochs must be at least 1" in result.output


# --- options and advice -----------------------------------------------------------------------


def test_predict_and_export_options(finished, digits, tmp_path):
    image = str(sorted((digits / "JPEGImages").glob("val_*.jpg"))[0])
    weights = str(finished / "best.pt")
    for args, words in (
        (["--conf", "1.5"], "--conf is a score threshold between 0 and 1, got 1.5"),
        (["--overlap", "0.3"], "--overlap is the overlap of tiles: give --tile N with it"),
        (["--tile", "64", "--overlap", "1"], "--overlap is a fraction of a tile"),
        (["--iou", "-0.1"], "--iou is an IoU threshold"),
    ):
        result = runner.invoke(app, ["predict", "--weights", weights, image, *args])
        assert result.exit_code == 2 and words in result.output, result.output
    target = tmp_path / "new" / "folder" / "x.onnx"
    result = runner.invoke(app, ["export", "--weights", weights, "--out", str(target)])
    assert result.exit_code == 0 and target.is_file(), result.output
    assert [p.name for p in target.parent.iterdir()] == ["x.onnx"]


def test_every_hint_names_a_real_key_or_flag(digits, tmp_path):
    from multibox.data.formats.voc import read_voc

    with pytest.raises(DataError) as caught:
        load_dataset(_bad_box_csv(tmp_path))
    message = str(caught.value)
    assert "data.policy=clip" in message and "--policy clip" in message and "data.policy=skip" in message
    for key in ("data.policy=clip", "data.policy=skip"):
        load_config(None, [key])  # a key the configuration knows
    result = runner.invoke(app, ["data", "convert", "--help"])
    assert "--policy" in result.output
    with pytest.raises(DataError, match=r"data.train_split=all, --split all") as caught:
        read_voc(digits, "nosuchsplit")
    load_config(None, ["data.train_split=all"])


def _bad_box_csv(tmp_path: Path) -> Path:
    from data_helpers import make_images

    make_images(tmp_path, 1)
    (tmp_path / "train.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\nimg0.jpg,-5,1,5,5,cat\n")
    return tmp_path / "train.csv"


def test_eval_on_data_of_other_classes_names_them(finished, tmp_path):
    root = _split_by_class(tmp_path)
    result = runner.invoke(app, ["eval", "--weights", str(finished / "best.pt"), "--data", str(root)])
    assert result.exit_code == 2
    assert "was trained on 10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)" in result.output
    assert "has boxes of 2 others: bird, cat" in result.output and "Fix the annotations" not in result.output


# --- large images -----------------------------------------------------------------------------


def test_predict_on_a_large_image_shows_tile_progress_and_writes_a_sane_copy(finished, tmp_path):
    from multibox.viz import _caption_scale

    rng = np.random.default_rng(0)
    image = tmp_path / "aerial.png"
    write_image(image, rng.integers(0, 255, (1500, 2500, 3), dtype=np.uint8))
    result = runner.invoke(app, ["predict", "--weights", str(finished / "best.pt"), str(image), "--tile", "64",
                                 "--out", str(tmp_path / "out"), "--conf", "0", "--max-side", "1000"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "aerial.png: tiles" in result.output  # the progress bar (stderr)
    copy = read_image(tmp_path / "out" / "aerial.png.jpg")
    assert copy.shape == (600, 1000, 3)
    # captions follow the objects' size, not only the image's: small boxes on a huge image
    boxes = np.array([[0, 0, 20, 20]] * 5, float)
    assert _caption_scale((10_000, 10_000), boxes) < 0.5 < _caption_scale((10_000, 10_000), boxes * 10)
    assert _caption_scale((256, 256), boxes) == 256 / 700  # a small image: as before, by its size


def test_tile_progress_is_reported_after_each_batch(finished):
    import multibox

    detector = multibox.load(finished / "best.pt")
    seen = []
    detector.predict(
        np.zeros((300, 300, 3), np.uint8), tile=64, batch_size=8, progress=lambda d, t: seen.append((d, t))
    )
    total = seen[-1][1]
    assert seen == [(min(done, total), total) for done in range(8, total + 8, 8)]
