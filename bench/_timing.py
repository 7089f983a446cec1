"""Shared by the bench scripts: the machine a figure was measured on, whether it was quiet, and
two callables timed interleaved in one process with their ratio."""

from __future__ import annotations

import atexit
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from multibox.hardware import describe_cpu, load_average


def machine() -> str:
    """The machine in one line: CPU and extensions, torch, threads, GPU, load average before the run.

    The first call also starts watching the other processes' CPU use; when the script ends it
    prints how busy they kept the machine, with a warning if they took a core or more at a time
    (on 2 vCPUs one busy neighbour makes a 2-thread forward several times slower).
    """
    global _watch
    if _watch is None:
        _watch = Neighbours()
        atexit.register(lambda: print(_watch.summary(), file=sys.stderr if _watch.busy else sys.stdout))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = load_average()
    before = "load average " + (" / ".join(f"{x:.2f}" for x in load) if load else "unknown") + " before the run"
    return f"{describe_cpu()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; {before}"


class Neighbours:
    """The CPU time other processes took while this script ran, sampled every ``interval`` seconds.

    Busy time of the whole machine (``/proc/stat``) minus this process's and its children's
    (``os.times`` for ended children, ``/proc/<pid>/stat`` for live ones, such as loader
    workers). Without ``/proc`` (not Linux) it measures nothing and says so.
    """

    def __init__(self, interval: float = 0.5, busy_cores: float = 0.5):
        self.interval, self.busy_cores = interval, busy_cores
        self.samples: list[tuple[float, float]] = []  # (seconds, other processes' cores) per interval
        self.stolen = 0.0  # CPU seconds the hypervisor gave to other virtual machines ("steal")
        self._last = _snapshot()
        if self._last is not None:
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            time.sleep(self.interval)
            now = _snapshot()
            (t0, machine0, ours0, steal0), (t1, machine1, ours1, steal1) = self._last, now
            self.samples.append((t1 - t0, max(0.0, (machine1 - machine0) - (ours1 - ours0)) / (t1 - t0)))
            self.stolen += steal1 - steal0
            self._last = now

    @property
    def busy(self) -> bool:
        """Whether other processes kept ``busy_cores`` or more busy for a sampled interval."""
        return any(cores >= self.busy_cores for _, cores in self.samples)

    def summary(self) -> str:
        if self._last is None:
            return "other processes: not measured (no /proc/stat)"
        total = sum(seconds for seconds, _ in self.samples) or 1e-9
        mean = sum(seconds * cores for seconds, cores in self.samples) / total
        loud = sum(seconds for seconds, cores in self.samples if cores >= self.busy_cores)
        line = f"other processes used {mean:.2f} cores on average over {total:.0f} s"
        if self.stolen > 0.01 * total:  # on a virtual machine: time the host gave to other guests
            line += f" (and the hypervisor took {self.stolen / total:.2f} cores: steal)"
        if not self.busy:
            return line + ": quiet"
        peak = max(cores for _, cores in self.samples)
        return (
            f"WARNING: {line}, {self.busy_cores} or more for {loud:.0f} s (up to {peak:.1f}): "
            "the timings above are not those of a quiet machine; run again when it is"
        )


_watch: Neighbours | None = None
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _snapshot() -> tuple[float, float, float, float] | None:
    """(wall seconds, CPU seconds the machine spent busy, CPU seconds of this process tree, steal)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(ticks[:3]) + sum(ticks[5:7])  # user, nice, system, irq, softirq (not idle, iowait, steal)
    times = os.times()
    ours = times.user + times.system + times.children_user + times.children_system + _live_children_seconds()
    return time.monotonic(), busy / _TICK, ours, ticks[7] / _TICK


def _live_children_seconds() -> float:
    """CPU seconds of this process's live descendants (ended ones are in ``os.times``)."""
    parents, seconds = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        parents[int(entry.name)] = int(fields[1])
        seconds[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICK
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    stack, total = list(children.get(os.getpid(), [])), 0.0
    while stack:
        pid = stack.pop()
        total += seconds[pid]
        stack += children.get(pid, [])
    return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(
    ours: Callable[[], object], theirs: Callable[[], object], repeats: int, device: torch.device, block: int = 1
) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``theirs``, run alternately so that drift hits both alike.

    With ``block`` > 1 they alternate in blocks of ``block`` back-to-back calls, each block after
    an untimed call: for runtimes with thread pools of their own (OpenVINO's, onnxruntime's), whose
    threads fall asleep while the other runs and take milliseconds to wake; a block times them as a
    busy server runs them.
    """
    for fn in (ours, theirs):  # warm-up
        fn()
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    while len(times["ours"]) < repeats:
        for name, fn in (("ours", ours), ("theirs", theirs)):
            if block > 1:
                fn()
            for _ in range(min(block, repeats - len(times[name]))):
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["ours"]), statistics.median(times["theirs"])


def training_step(run) -> Callable[[], None]:
    """One optimisation step of a :class:`multibox.engine.Trainer` a call, on its epoch-0 batches."""
    batches = iter(run.loader(0))

    def step() -> None:
        images, targets = next(batches)
        run.step(run.losses(images, targets))

    return step


def report(label: str, ours: float, theirs: float, peer: str) -> None:
    print(f"{label:<34} multibox {ours * 1e3:8.1f} ms   {peer} {theirs * 1e3:8.1f} ms   speed-up {theirs / ours:5.2f}x")
