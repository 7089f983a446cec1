"""What a run shows and keeps of its progress: CSV logs with TensorBoard scalars, a progress bar
per epoch, and the plot of the losses."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.io import atomic_write_text
from .distributed import Distributed

__all__ = ["Logs", "logged", "plot_losses", "progress", "truncate_logs"]


class Logs:
    """Rows appended to ``FOLDER/NAME.csv`` (a new file per run unless it resumes), each number
    also a TensorBoard scalar ``NAME/column`` under ``FOLDER/tensorboard``."""

    def __init__(self, folder: Path, resume: bool):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self.tensorboard = SummaryWriter(str(folder / "tensorboard"))
        self.files: dict[str, Path] = {}
        self.resume = resume

    def write(self, name: str, row: dict) -> None:
        path = self.folder / f"{name}.csv"
        new = not path.exists() or (name not in self.files and not self.resume)
        with path.open("w" if new else "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.files[name] = path
        step = int(row.get("step", 0))
        for key, value in row.items():
            if key not in ("step", "epoch") and isinstance(value, int | float) and math.isfinite(value):
                self.tensorboard.add_scalar(f"{name}/{key}", value, step)

    def close(self) -> None:
        self.tensorboard.close()


def truncate_logs(folder: Path, last_steps: dict[str, int]) -> None:
    """Drop the rows of ``FOLDER/NAME.csv`` after step ``last_steps[NAME]`` (those a run wrote after
    the checkpoint it resumes from), and the TensorBoard events after the earliest of them."""
    for name, last in last_steps.items():
        path = folder / f"{name}.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        kept = rows[:1] + [row for row in rows[1:] if row and float(row[0]) <= last]
        if len(kept) < len(rows):
            text = io.StringIO()
            csv.writer(text).writerows(kept)
            atomic_write_text(path, text.getvalue())
    if (folder / "tensorboard").is_dir():
        from torch.utils.tensorboard import SummaryWriter

        SummaryWriter(str(folder / "tensorboard"), purge_step=min(last_steps.values()) + 1).close()


def logged(losses: dict[str, Tensor], dist: Distributed) -> dict[str, float]:
    """The loss parts to log: in a distributed run, averaged over the processes (each process's
    losses are normalised by the processes' mean positives, so their mean is the batch's loss)."""
    values = torch.stack([v.detach().float() for v in losses.values()])
    if dist.enabled:
        torch.distributed.all_reduce(values)
        values /= dist.world
    return dict(zip(losses, values.tolist(), strict=True))


def progress(enabled: bool, epoch: int, steps: int):
    """A per-epoch progress bar (loss parts, lr, images/s, ETA); ``update(None)`` closes it."""
    if not enabled:
        return lambda row: None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(f"epoch {epoch}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )
    task = bar.add_task("train", total=steps, info="")
    bar.start()

    def update(row: dict | None) -> None:
        if row is None:
            bar.stop()
            return
        parts = " ".join(f"{k} {row[k]:.3f}" for k in ("cls", "box", "obj") if k in row)
        info = f"loss {row['loss']:.3f} ({parts}) lr {row['lr']:.2e} {row['images_per_s']:.1f} img/s"
        bar.update(task, advance=1, info=info)

    return update


def plot_losses(output: Path) -> None:
    """``losses.png`` from ``train_log.csv``: the total loss and its parts by step."""
    path = output / "train_log.csv"
    if not path.is_file():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    steps = np.array([float(r["step"]) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in (k for k in ("loss", "cls", "box", "obj") if k in rows[0]):
        ax.plot(steps, [float(r[key]) for r in rows], label=key, linewidth=1)
    ax.set(xlabel="step", ylabel="loss", title="training losses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "losses.png", dpi=100)
    plt.close(fig)
