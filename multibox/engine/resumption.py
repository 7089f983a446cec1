"""What a resumed checkpoint must be: of this run's classes and network (else a
:class:`~multibox.checkpoint.CheckpointError` that says which), and not at its end already
(:class:`RunFinished`, with the command that trains longer)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..checkpoint import CheckpointError
from ..config import Config, TrainConfig, config_from_dict

__all__ = ["RunFinished", "check_same_run", "check_unfinished"]


class RunFinished(Exception):
    """A resumed checkpoint that is already at the end of its run; the message says how to train longer."""


def check_same_run(path: str | Path, saved: dict, config: Config, class_names: Sequence[str]) -> None:
    """A CheckpointError when the checkpoint ``saved`` (read from ``path``) was trained on other
    classes than ``class_names``, or is another network (model or input settings) than ``config``."""
    names, have = list(saved["class_names"]), list(class_names)
    if names != have:
        raise CheckpointError(
            f"{path}: this checkpoint was trained on {len(names)} classes ({_listed(names)}) and the data "
            f"({config.data.path}) has {len(have)} ({_listed(have)}); resume it with its own data "
            f"(data.path=...), or train a new run on this data without --resume"
        )
    before = config_from_dict(saved["config"], f"{path} (its configuration)").to_dict()
    now = config.to_dict()
    changed = [
        f"{key}: {a} -> {b}" for part in ("model", "input") for key, a, b in _differences(before[part], now[part], part)
    ]
    if changed:
        raise CheckpointError(
            f"{path}: this checkpoint is another network than the configuration asks for ({'; '.join(changed)});"
            f" resume without --config and these overrides (`multibox train --resume {path}` uses the "
            f"checkpoint's own configuration)"
        )


def check_unfinished(path: str | Path, train: TrainConfig, state: dict, schedule_steps: int, total_steps: int) -> None:
    """A :class:`RunFinished` when the resumed position ``state`` is at the end of the run's
    ``schedule_steps`` (or of ``train.max_steps``: ``total_steps``)."""
    step, metrics = state["step"], state["metrics"]
    final = "".join(f", {k} {metrics[k]:.4f}" for k in ("AP", "AP50", "accuracy", "mAP") if k in metrics)
    if step >= schedule_steps:
        raise RunFinished(
            f"{path}: this run is finished ({train.epochs} epochs, step {step} of {schedule_steps}{final}); to "
            f"train longer, resume with more epochs: multibox train --resume {path} train.epochs={2 * train.epochs} "
            f"(the learning-rate schedule is stretched to the new length)"
        )
    if step >= total_steps:
        raise RunFinished(
            f"{path}: this run stopped at train.max_steps={train.max_steps} (step {step} of {schedule_steps}); to "
            f"go on: multibox train --resume {path} train.max_steps=0"
        )


def _listed(names: list[str], most: int = 12) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names) - most} more)" if len(names) > most else "")


def _differences(a: dict, b: dict, prefix: str):
    """``(key, value in a, value in b)`` for each setting that differs between two nested dicts."""
    for key in a:
        name = f"{prefix}.{key}"
        if isinstance(a[key], dict) and isinstance(b.get(key), dict):
            yield from _differences(a[key], b[key], name)
        elif a[key] != b.get(key):
            yield name, a[key], b.get(key)
