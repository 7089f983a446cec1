"""YOLO (Ultralytics layout): a dataset YAML and one ``labels/*.txt`` per image.

The YAML holds ``path`` (dataset root, relative to the YAML's folder when relative),
``train`` / ``val`` / ``test`` (image folders or ``.txt`` lists, relative to ``path``) and
``names`` (a list, or a dict from class index to name). The labels of ``.../images/x.jpg``
are in ``.../labels/x.txt``, one ``class cx cy w h`` line per box, normalised to ``[0, 1]``.
An image without a label file has no boxes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ..io import IMAGE_SUFFIXES, atomic_write_text, copy_image, image_size, read_document
from ..records import DataError, DetectionSet, Problem, Record

__all__ = ["label_path", "read_dataset_yaml", "read_yolo", "write_yolo"]


def label_path(image_path: Path) -> Path:
    """The label file of an image: the last ``images`` folder becomes ``labels``, the suffix ``.txt``."""
    parts = list(image_path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_dataset_yaml(yaml_path: Path) -> dict:
    """The dataset YAML as a dict; a :class:`DataError` naming the file if it is missing, malformed or has no names."""
    spec = read_document(yaml_path, "dataset YAML")
    if not isinstance(spec, dict) or "names" not in spec:
        raise DataError(f"{yaml_path}: a YOLO dataset YAML needs 'names' (and 'path', 'train', 'val')")
    return spec


def _names(spec: dict, yaml_path: Path) -> list[str]:
    names = spec["names"]
    if isinstance(names, dict):
        if sorted(int(k) for k in names) != list(range(len(names))):
            raise DataError(f"{yaml_path}: 'names' keys must be 0..{len(names) - 1}")
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names]


def read_yolo(yaml_path: str | Path, split: str = "train") -> DetectionSet:
    """Read one split of a YOLO dataset described by its YAML file."""
    yaml_path = Path(yaml_path)
    spec = read_dataset_yaml(yaml_path)
    names = _names(spec, yaml_path)
    root = Path(spec.get("path") or ".")
    root = root if root.is_absolute() else (yaml_path.parent / root)
    if split not in spec:
        raise DataError(f"{yaml_path}: no '{split}' entry; it lists {[k for k in spec if k not in ('path', 'names')]}")
    images = _images(root, spec[split], yaml_path)
    records, problems = [], []
    for image in images:
        try:
            height, width = image_size(image)
        except DataError as error:
            problems.append(Problem(str(image), f"{str(error).split(': ', 1)[1]}; the image is skipped"))
            continue
        boxes, labels, sources = [], [], []
        labels_file = label_path(image)
        lines = labels_file.read_text().splitlines() if labels_file.is_file() else []
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{labels_file} line {number}"
            if len(fields) != 5:
                problems.append(
                    Problem(where, f"expected 5 fields 'class cx cy w h', got {len(fields)}: {line.strip()!r}")
                )
                continue
            try:
                cls = int(fields[0])
                cx, cy, w, h = (float(v) for v in fields[1:])
            except ValueError:
                problems.append(Problem(where, f"class must be an integer and the box numbers: {line.strip()!r}"))
                continue
            if not 0 <= cls < len(names):
                problems.append(
                    Problem(where, f"unknown class {cls}; the YAML names {len(names)} classes (0..{len(names) - 1})")
                )
                continue
            boxes.append(((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height))
            labels.append(cls)
            sources.append(where)
        records.append(
            Record(
                image,
                height,
                width,
                np.array(boxes, np.float32).reshape(-1, 4),
                np.array(labels, np.int64),
                image_id=image.stem,
                box_sources=sources,
            )
        )
    return DetectionSet(records, names, problems)


def _images(root: Path, entry, yaml_path: Path) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        location = root / str(item)
        if location.is_dir():
            images += sorted(p for p in location.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif location.suffix == ".txt" and location.is_file():
            for line in location.read_text().splitlines():
                if line.strip():
                    path = Path(line.strip())
                    images.append(path if path.is_absolute() else root / path)
        else:
            raise DataError(f"{yaml_path}: {location} is neither an image folder nor a .txt list of images")
    return images


def write_yolo(dataset: DetectionSet, root: str | Path, split: str = "train") -> Path:
    """Write a split as ``images/{split}/``, ``labels/{split}/`` and ``data.yaml``; returns the YAML path."""
    root = Path(root)
    for record in dataset.records:
        name = f"{record.image_id if record.image_id is not None else record.image_path.stem}"
        image = root / "images" / split / f"{name}{record.image_path.suffix}"
        copy_image(record.image_path, image)
        lines = []
        for (x1, y1, x2, y2), label in zip(record.boxes.tolist(), record.labels.tolist(), strict=True):
            cx, cy = (x1 + x2) / 2 / record.width, (y1 + y2) / 2 / record.height
            w, h = (x2 - x1) / record.width, (y2 - y1) / record.height
            lines.append(f"{label} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
        atomic_write_text(label_path(image), "".join(lines))
    yaml_path = root / "data.yaml"
    spec = yaml.safe_load(yaml_path.read_text()) if yaml_path.is_file() else {}
    spec.update({"path": ".", split: f"images/{split}", "names": dict(enumerate(dataset.class_names))})
    atomic_write_text(yaml_path, yaml.safe_dump(spec, sort_keys=False))
    return yaml_path
