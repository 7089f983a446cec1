"""Image and file I/O for datasets: headers, decoding, atomic writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .records import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "atomic_write_bytes",
    "atomic_write_text",
    "copy_image",
    "image_size",
    "read_document",
    "read_image",
    "write_image",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image, from its header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{path}: not a readable image ({error}); replace or remove the file") from None
    return height, width


def read_image(path: Path) -> np.ndarray:
    """Decode an image as RGB ``uint8 [H, W, 3]`` with OpenCV."""
    data = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if data is None:
        what = "image file not found" if not Path(path).is_file() else "corrupt or unreadable image"
        raise DataError(f"{path}: {what}; replace or remove the file (`multibox data check` lists such files)")
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)


def read_document(path: Path, kind: str) -> object:
    """Parse a JSON (``.json``) or YAML file; a :class:`DataError` naming the file if it is missing or malformed."""
    import json

    import yaml

    path = Path(path)
    is_json = path.suffix.lower() == ".json"
    try:
        text = path.read_text()
        return json.loads(text) if is_json else yaml.safe_load(text)
    except FileNotFoundError:
        raise DataError(f"{path}: {kind} not found") from None
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise DataError(f"{path}: not valid {'JSON' if is_json else 'YAML'} ({error})") from None


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never a half-written file."""
    _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_image(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    """Encode an RGB ``uint8`` image by its suffix (JPEG quality ``quality``) and write it atomically."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if Path(path).suffix.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(Path(path).suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise DataError(f"{path}: OpenCV cannot encode an image with this suffix")
    atomic_write_bytes(path, encoded.tobytes())


def copy_image(source: Path, target: Path) -> None:
    """Copy an image file unless ``target`` is the same file already."""
    source, target = Path(source), Path(target)
    if target.exists() and source.resolve() == target.resolve():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
