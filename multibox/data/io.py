"""Image and file I/O for datasets: headers, decoding, atomic writes."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "WriteError",
    "atomic_write_bytes",
    "atomic_write_text",
    "copy_image",
    "damage",
    "image_size",
    "read_document",
    "read_image",
    "remove_temporary",
    "write_image",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TEMP_SUFFIX = ".tmp"  # an atomic write's file until its rename: ``.NAME.RANDOM.tmp`` beside NAME


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


def damage(path: Path) -> str | None:
    """What is wrong with the image file at ``path`` if it ends before its image data does (a
    JPEG or PNG cut short by an interrupted copy or download), else None.

    OpenCV decodes such a file without an error (libjpeg fills the missing rows with grey and only
    prints "Premature end of JPEG file"). The check reads the file's last bytes: a JPEG ends with
    its EOI marker, a PNG with its IEND chunk; only a file that does not (a JPEG with bytes after
    its end, say) is decoded in full to decide.
    """
    with open(path, "rb") as handle:
        head = handle.read(8)
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 16))
        tail = handle.read()
    if head.startswith(b"\xff\xd8"):
        if tail.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
            return None
    elif head.startswith(b"\x89PNG"):
        if tail.endswith(b"IEND\xaeB`\x82"):
            return None
    else:
        return None  # other formats: OpenCV refuses a damaged file itself
    try:
        with Image.open(path) as image:
            image.draft("L", (max(1, image.width // 8), max(1, image.height // 8)))  # JPEG: decode at 1/8
            image.load()
    except (OSError, SyntaxError, ValueError) as error:
        return f"damaged image file, {size:,} bytes ({error})"
    return None


@contextmanager
def _quiet_opencv():
    """OpenCV's warnings off (libtiff's "Unknown field with tag 33550" for every GeoTIFF tag)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Decode an image as RGB ``uint8 [H, W, 3]`` with OpenCV (grey with other ``flags``); a
    :class:`DataError` naming the file if it is missing, truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found (`multibox data check` lists such files)")
    problem = damage(path)
    with _quiet_opencv():
        data = None if problem else cv2.imread(str(path), flags)
    if data is None:
        problem = problem or "corrupt or unreadable image"
        raise DataError(f"{path}: {problem}; replace or remove the file (`multibox data check` lists such files)")
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB) if data.ndim == 3 else data


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


class WriteError(OSError):
    """A file that could not be written (the disk full, a folder not writable), named with what to do."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(error.errno, _write_problem(path, error)) from error
        raise


def _write_problem(path: Path, error: OSError) -> str:
    kept = f"; the previous {path.name} is intact" if path.exists() else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path("."))
        free = shutil.disk_usage(folder).free / 2**20
        return (f"{path}: no space left on the device ({free:,.0f} MB free in {folder}){kept}; free some space, or "
                f"write elsewhere (train: output=DIR, predict and export: --out)")  # fmt: skip
    return f"{path}: cannot be written ({error.strerror or error}){kept}"


def remove_temporary(folder: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in ``folder`` (a process
    killed with -9 runs no clean-up); returns them."""
    left = [p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in left:
        p.unlink(missing_ok=True)
    return left


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
