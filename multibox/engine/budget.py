"""A run's length from a time budget, and the checks that say a run went wrong in a way the loss
does not show: a warm-up longer than the run, a model that memorises its training images."""

from __future__ import annotations

import copy
import math
import statistics
import time

import torch

from ..auto import Choice
from ..config import Config
from ..data.records import DetectionSet
from ..evaluation import evaluate

__all__ = ["default_schedule", "fit_budget", "memorisation", "time_steps"]

EVALUATIONS = 8  # validations in a run whose evaluation interval is auto
# forward alone on a batch, as a share of a training step's time, and what scoring adds
EVAL_SHARE = 0.5


def time_steps(run, steps: int = 5, warmup: int = 2) -> float:
    """Mean seconds of a training step of ``run`` (a :class:`~multibox.engine.Trainer`; loading,
    and a new epoch's start, included) over ``steps`` after ``warmup``; the model, optimizer,
    scaler and RNG are restored afterwards, so the run starts as if nothing had been timed."""
    saved = (copy.deepcopy(run.model.state_dict()), copy.deepcopy(run.optimizer.state_dict()),
             run.scaler.state_dict(), torch.get_rng_state())  # fmt: skip
    times: list[float] = []
    epoch = 0
    while len(times) < warmup + steps:
        started = time.perf_counter()
        for images, targets in run.loader(epoch):
            run.step(run.losses(images, targets))
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
            if len(times) == warmup + steps:
                break
        epoch += 1
    run.model.load_state_dict(saved[0])
    run.optimizer.load_state_dict(saved[1])
    run.scaler.load_state_dict(saved[2])
    torch.set_rng_state(saved[3])
    return statistics.fmean(times[warmup:])


def fit_budget(
    config: Config, step_seconds: float, steps_per_epoch: int, val_images: int, tiles_per_image: float = 1.0
) -> list[Choice]:
    """``train.epochs`` (and ``eval_every`` if auto) so that training and its validations fit
    ``train.time_budget`` minutes, from the measured ``step_seconds``."""
    t = config.train
    budget = t.time_budget * 60 * 0.95  # start-up, the last checkpoint and the plots
    epoch_seconds = step_seconds * steps_per_epoch
    # a validation image costs about EVAL_SHARE of a training image's step, per tile
    eval_seconds = val_images * tiles_per_image * step_seconds / t.batch_size * EVAL_SHARE
    epochs, every = 1, t.eval_every or 1
    for candidate in range(1, 10_000):
        every = t.eval_every or max(1, math.ceil(candidate / EVALUATIONS))
        if candidate * epoch_seconds + math.ceil(candidate / every) * eval_seconds > budget:
            break
        epochs = candidate
    every = t.eval_every or max(1, math.ceil(epochs / EVALUATIONS))
    t.epochs = epochs
    spent = (epochs * epoch_seconds + math.ceil(epochs / every) * eval_seconds) / 60
    reason = (f"{t.time_budget:g} minutes at {t.batch_size / step_seconds:.1f} images/s (timed): "
              f"{epochs} x {steps_per_epoch} steps, about {spent:.1f} minutes with validation")  # fmt: skip
    if epoch_seconds > budget:
        reason += "; one epoch is already over the budget"
    choices = [Choice("train.epochs", epochs, reason)]
    if t.eval_every is None:
        t.eval_every = every
        choices.append(_validations(config))
    return choices


def default_schedule(config: Config, steps_per_epoch: int) -> list[Choice]:
    """``warmup_steps`` and ``eval_every`` left auto, once ``train.epochs`` is known."""
    t, choices = config.train, []
    total = steps_per_epoch * t.epochs
    if t.warmup_steps is None:
        t.warmup_steps = min(200, max(1, total // 10))
        choices.append(Choice("train.warmup_steps", t.warmup_steps, f"a tenth of the run's {total} steps, at most 200"))
    if t.eval_every is None:
        t.eval_every = max(1, math.ceil(t.epochs / EVALUATIONS))
        choices.append(_validations(config))
    return choices


def _validations(config: Config) -> Choice:
    t = config.train
    count = math.ceil(t.epochs / t.eval_every)
    when = "every epoch" if t.eval_every == 1 else f"every {t.eval_every} epochs"
    return Choice("train.eval_every", t.eval_every, f"{when}: {count} validations, at most {EVALUATIONS} in a run")


def memorisation(run, images: int = 100, gap: float = 0.25) -> str | None:
    """A warning when the final model of ``run`` (a finished :class:`~multibox.engine.Trainer`)
    scores far better on (up to ``images``) training images than on the validation split: AP50
    ``gap`` or more above it."""
    val = run.metrics.get("AP50")
    if val is None or run.val_data is None:
        return None
    sample = DetectionSet(run.train_data.records[:images], run.train_data.class_names)
    model = run.ema.module if run.ema is not None else run.model
    seen, _ = evaluate(model, sample, run.config)
    if seen["AP50"] < val + gap:
        return None
    return (
        f"warning: the model memorises its training images: AP50 {seen['AP50']:.3f} on {len(sample.records)} of them, "
        f"{val:.3f} on the validation split. More augmentation (train.augment=strong), fewer epochs, or more "
        f"varied training images would help; `multibox data check` shows what the splits hold"
    )
