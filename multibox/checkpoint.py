"""Checkpoints: written atomically, read with ``weights_only=True`` (a checkpoint can never run
code); a trained network restored from one. Below both the engine (which writes and resumes
them) and the inference wing (which predicts with them).

A checkpoint is a dict: ``model`` (state dict), ``ema`` (``{"module", "updates"}`` or None),
``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``config`` (:meth:`Config.to_dict`),
``class_names``, the run's position (``epoch``, ``batch``, ``step``, ``best``, ...) and
``checksum``: a SHA-256 of everything else, so that a file damaged on disk or in a copy is named
when it is read, not met later as a loss that is not finite.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
from torch import nn

from .config import Config, config_from_dict
from .data.io import atomic_write_bytes
from .kinds import build_model

__all__ = ["CheckpointError", "checksum", "find_checkpoint", "load_checkpoint", "restore", "save_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, damaged, or of another run; the message says which."""


def checksum(state) -> str:
    """SHA-256 of a checkpoint's contents: every tensor's dtype, shape and bytes and every other
    value, dicts in key order; the same on any machine for the same values."""
    digest = hashlib.sha256()

    def add(value) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
            digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                add(key)
                add(value[key])
        elif isinstance(value, list | tuple):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                add(item)
        else:
            digest.update(f"V{type(value).__name__}:{value!r};".encode())

    add(state)
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Serialise ``state`` (tensors and plain Python values only) with its :func:`checksum` to
    ``path`` through a temporary file, fsync and rename: an interrupted write leaves the previous
    checkpoint intact."""
    buffer = io.BytesIO()
    torch.save({**state, "checksum": checksum(state)}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def find_checkpoint(path: str | Path) -> Path:
    """``path``, or the ``last.pt`` in it if it is a run's folder; a :class:`CheckpointError`
    (naming the other checkpoints beside it) if there is no such file."""
    path = Path(path)
    path = path / "last.pt" if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found" + _others(path))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, its checksum verified (checkpoints
    of versions before the checksum load as they are); a :class:`CheckpointError` that names a
    missing or damaged file."""
    path = find_checkpoint(path)
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable multibox checkpoint ({error}){_others(path)}") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: not a multibox checkpoint (it holds a {type(saved).__name__}, not a dict)")
    expected = saved.pop("checksum", None)
    if expected is not None and checksum(saved) != expected:
        raise CheckpointError(
            f"{path}: damaged: its contents no longer match the checksum written with them (a bad copy, "
            f"download or disk){_others(path)}"
        )
    return saved


def _others(path: Path) -> str:
    """Advice naming the other checkpoints beside ``path``, if any."""
    others = sorted(p.name for p in path.parent.glob("*.pt") if p.name != path.name) if path.parent.is_dir() else []
    return f"; other checkpoints in {path.parent}: {', '.join(others)}" if others else ""


def restore(path: str | Path) -> tuple[nn.Module, Config, list[str]]:
    """The network of a checkpoint (its averaged weights where the run kept an EMA), its
    configuration (read with the keys of any earlier layout) and its class names; on the CPU."""
    saved = load_checkpoint(path)
    config = config_from_dict(saved["config"], f"{path} (its configuration)")
    names = list(saved["class_names"])
    model = build_model(config.model, len(names), "none", config.input.size)
    model.load_state_dict(saved["ema"]["module"] if saved.get("ema") else saved["model"])
    return model, config, names
