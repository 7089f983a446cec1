"""Multi-process training (torchrun, gloo, real processes): the same steps as one process with the
whole batch; sharded evaluation; a killed process fails the run cleanly."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from multibox.config import load_config
from multibox.engine import train
from multibox.engine.data import EpochSampler

# the same run either way: SGD (Adam's normalised steps would magnify float noise in tiny gradients)
RECIPE = ["train.image_size=[64, 64]", "model.fpn_channels=16", "train.epochs=2", "train.optimizer=sgd",
          "train.lr=0.01", "train.warmup_steps=0", "model.pretrained=none"]  # fmt: skip


def torchrun(*args: str, processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "multibox", "train", "--config", "cpu_digits", *args]  # fmt: skip


def _log(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_the_processes_share_out_each_global_batch():
    single = list(EpochSampler(20, seed=3, batch_size=8))
    shards = [list(EpochSampler(20, seed=3, batch_size=4, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 8  # two global batches of 8; the last 4 images dropped
    for step in range(2):
        together = shards[0][4 * step : 4 * step + 4] + shards[1][4 * step : 4 * step + 4]
        assert together == single[8 * step : 8 * step + 8]


def test_two_processes_take_the_steps_of_one_with_twice_the_batch(digits, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config("cpu_digits", [f"data.path={digits}", f"output={one}", "train.batch_size=8", *RECIPE]),
          progress=False)  # fmt: skip
    result = subprocess.run(
        torchrun(f"data.path={digits}", f"output={two}", "train.batch_size=4", *RECIPE),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    a = torch.load(one / "last.pt", weights_only=True)
    b = torch.load(two / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    # stated tolerance: 1e-5 on every weight after 4 SGD steps (float summation order differs)
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-5), key
    # the logged losses are the whole batch's, averaged over the processes
    for row_a, row_b in zip(_log(one / "train_log.csv"), _log(two / "train_log.csv"), strict=True):
        for key in ("loss", "cls", "box"):
            assert abs(float(row_a[key]) - float(row_b[key])) <= 1e-5, (key, row_a, row_b)
    # evaluation split over the processes and gathered on rank 0: the same metrics
    val_a, val_b = _log(one / "val_log.csv"), _log(two / "val_log.csv")
    assert len(val_a) == len(val_b) == 2
    for row_a, row_b in zip(val_a, val_b, strict=True):
        assert abs(float(row_a["AP"]) - float(row_b["AP"])) <= 1e-6 and row_a["AR100"] == row_b["AR100"]
    # only rank 0 wrote: one log row per step
    assert len(_log(two / "train_log.csv")) == 4
    # stopped after 2 steps and resumed, the two processes end where the uninterrupted run did
    half = tmp_path / "half"
    common = [f"data.path={digits}", f"output={half}", "train.batch_size=4", *RECIPE]
    first = subprocess.run(torchrun(*common, "train.max_steps=2"), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run(torchrun(*common, "--resume", str(half / "last.pt")), capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    c = torch.load(half / "last.pt", weights_only=True)
    assert c["step"] == 4
    for key, value in b["model"].items():
        assert torch.allclose(value.float(), c["model"][key].float(), atol=1e-6), key


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _rank(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    values = dict(item.split(b"=", 1) for item in environ if b"=" in item)
    return int(values[b"RANK"]) if b"RANK" in values else None


def test_a_killed_process_fails_the_run_cleanly(digits, tmp_path):
    out = tmp_path / "run"
    # long enough to be killed mid-run (later overrides win)
    args = [f"data.path={digits}", f"output={out}", "train.batch_size=2", "train.checkpoint_every=1", *RECIPE,
            "train.epochs=200"]  # fmt: skip
    process = subprocess.Popen(torchrun(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "train_log.csv").is_file() and len(_log(out / "train_log.csv")) >= 3):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.2)
        workers = {_rank(pid): pid for pid in _children(process.pid)}
        os.kill(workers[1], signal.SIGKILL)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert time.monotonic() - started < 60  # the survivor is stopped, not left waiting in a collective
    assert "multibox" in stderr and ("SIGKILL" in stderr or "Signal 9" in stderr or "exitcode" in stderr), stderr[
        -2000:
    ]
    # what rank 0 wrote is whole (written atomically): the last checkpoint loads
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["step"] >= 1
