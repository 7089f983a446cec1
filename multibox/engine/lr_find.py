"""The learning-rate finder (Smith 2015; fastai's ``lr_find``).

Train from the run's initial weights for up to ``steps`` batches while the learning rate grows
exponentially from ``start_lr`` to ``end_lr``; record the loss, smoothed with a bias-corrected
exponential moving average, and stop once it exceeds ``diverge`` times its minimum. Nothing of
the run is changed: the model is rebuilt from the configuration, and only the plot and a CSV
are written.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.io import atomic_write_bytes, atomic_write_text
from .trainer import Trainer

__all__ = ["LRFinderResult", "lr_find"]


@dataclass
class LRFinderResult:
    """The sweep: learning rates, raw and smoothed losses, and the suggestions.

    Attributes:
        lrs, losses, smoothed: one entry per step taken.
        minimum: the learning rate of the lowest smoothed loss.
        steepest: the learning rate where the smoothed loss falls fastest (in ``log lr``),
            before the minimum.
        suggestion: ``minimum / 10``, fastai's rule: an order of magnitude below where the
            loss stops falling (``steepest`` is the other common reading of the plot).
        diverged: whether the sweep stopped early on a rising loss.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    minimum: float
    steepest: float
    suggestion: float
    diverged: bool


def _analyse(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
    """The rates of the lowest smoothed loss and of its steepest fall (the first tenth of the
    sweep, where the moving average is still settling, is left out of both)."""
    skip = max(3, len(lrs) // 10)
    best = skip + int(np.argmin(smoothed[skip:])) if len(lrs) > skip else int(np.argmin(smoothed))
    minimum = float(lrs[best])
    if best - skip < 2:
        return minimum, minimum
    slope = np.gradient(smoothed[skip : best + 1], np.log(lrs[skip : best + 1]))
    return minimum, float(lrs[skip + int(np.argmin(slope))])


def lr_find(
    config: Config,
    out: str | Path | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
) -> LRFinderResult:
    """Sweep learning rates on the training split of ``config``; write ``lr_find.png`` / ``.csv`` into ``out``.

    Args:
        config: the run (data, model, optimizer, augmentation) whose learning rate is wanted;
            ``train.lr`` is ignored, warm-up and schedule are not used.
        out: folder for the plot and the CSV (default: ``config.output``).
        start_lr, end_lr: the sweep's range, covered geometrically in ``steps`` steps.
        steps: most batches to train (the training split is cycled if it is shorter).
        beta: smoothing of the loss (0.98 as in fastai).
        diverge: stop once the smoothed loss exceeds this multiple of its minimum.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if steps < 5:
        raise ValueError(f"the sweep needs at least 5 steps, got {steps}")
    out = Path(out if out is not None else config.output)
    out.mkdir(parents=True, exist_ok=True)
    run = Trainer(config)
    run.model.train()
    growth = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, losses, smoothed = [], [], []
    average, best, diverged, epoch = 0.0, math.inf, False, 0
    while len(lrs) < steps and not diverged:
        for images, targets in run.loader(epoch):
            lr = start_lr * growth ** len(lrs)
            for group in run.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            batch_losses = run.losses(images, targets)
            loss = batch_losses["total"].item()
            if not math.isfinite(loss):
                diverged = True
                break
            run.step(batch_losses)
            average = beta * average + (1 - beta) * loss
            value = average / (1 - beta ** (len(lrs) + 1))  # bias-corrected
            lrs.append(lr), losses.append(loss), smoothed.append(value)
            best = min(best, value)
            if len(lrs) > 5 and value > diverge * best:
                diverged = True
                break
            if len(lrs) == steps:
                break
        epoch += 1
    if len(lrs) < 3:
        raise FloatingPointError(f"the loss was not finite from the start ({start_lr:g}); lower start_lr")
    minimum, steepest = _analyse(np.array(lrs), np.array(smoothed))
    result = LRFinderResult(lrs, losses, smoothed, minimum, steepest, max(minimum / 10, start_lr), diverged)
    _write(result, out)
    return result


def _write(result: LRFinderResult, out: Path) -> None:
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["step", "lr", "loss", "smoothed"])
    for step, row in enumerate(zip(result.lrs, result.losses, result.smoothed, strict=True)):
        writer.writerow([step, *row])
    atomic_write_text(out / "lr_find.csv", table.getvalue())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=1.5, label="smoothed")
    ax.axvline(result.suggestion, color="C3", linestyle="--", label=f"suggestion {result.suggestion:.2e}")
    ax.axvline(result.minimum, color="0.4", linestyle=":", label=f"minimum {result.minimum:.2e}")
    ax.axvline(result.steepest, color="C2", linestyle=":", label=f"steepest {result.steepest:.2e}")
    top = min(max(result.smoothed), 4 * min(result.smoothed)) if result.smoothed else 1
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="learning-rate finder", ylim=(0, top * 1.1))
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out / "lr_find.png", buffer.getvalue())
