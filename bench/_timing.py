"""Shared by the bench scripts: time two callables interleaved in one process and report the ratio."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads, {device}"


def canonical(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Detections as rows ``[score, label, x1, y1, x2, y2]`` sorted by score, ties by label and box.

    Two correct NMS implementations may order detections of exactly equal score differently.
    """
    rows = torch.cat((scores[:, None], labels[:, None].to(scores), boxes), dim=1).cpu().double()
    for column in reversed(range(1, rows.shape[1])):
        rows = rows[rows[:, column].argsort(stable=True)]
    return rows[(-rows[:, 0]).argsort(stable=True)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(
    ours: Callable[[], object], theirs: Callable[[], object], repeats: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``theirs``, run alternately so that drift hits both alike."""
    for fn in (ours, theirs):  # warm-up
        fn()
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("theirs", theirs)):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["ours"]), statistics.median(times["theirs"])


def report(label: str, ours: float, theirs: float, peer: str) -> None:
    print(f"{label:<34} multibox {ours * 1e3:8.1f} ms   {peer} {theirs * 1e3:8.1f} ms   speed-up {theirs / ours:5.2f}x")
