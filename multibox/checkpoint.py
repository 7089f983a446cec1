"""Checkpoints: written atomically, read with ``weights_only=True`` (a checkpoint can never run
code); a trained network restored from one. Below both the engine (which writes and resumes
them) and the inference wing (which predicts with them).

A checkpoint is a dict: ``model`` (state dict), ``ema`` (``{"module", "updates"}`` or None),
``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``config`` (:meth:`Config.to_dict`),
``class_names``, and the run's position (``epoch``, ``batch``, ``step``, ``best``, ...).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from .config import Config, config_from_dict
from .data.io import atomic_write_bytes
from .kinds import build_model

__all__ = ["load_checkpoint", "restore", "save_checkpoint"]


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Serialise ``state`` (tensors and plain Python values only) to ``path`` through a temporary
    file, fsync and rename: an interrupted write leaves the previous checkpoint intact."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear error for a missing or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise RuntimeError(f"{path}: not a readable multibox checkpoint ({error})") from None


def restore(path: str | Path) -> tuple[nn.Module, Config, list[str]]:
    """The network of a checkpoint (its averaged weights where the run kept an EMA), its
    configuration (read with the keys of any earlier layout) and its class names; on the CPU."""
    saved = load_checkpoint(path)
    config = config_from_dict(saved["config"], f"{path} (its configuration)")
    names = list(saved["class_names"])
    model = build_model(config.model, len(names), "none", config.input.size)
    model.load_state_dict(saved["ema"]["module"] if saved.get("ema") else saved["model"])
    return model, config, names
