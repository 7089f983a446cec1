"""Checkpoints: written atomically, read with ``weights_only=True`` (a checkpoint can never run code)."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..data.io import atomic_write_bytes

__all__ = ["load_checkpoint", "save_checkpoint"]


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
