"""CSV: ``image_path,xmin,ymin,xmax,ymax,label``, one row per box (the DeepForest layout).

Coordinates are 0-based pixels; an image without boxes is one row with empty coordinates
and label. Relative image paths are relative to the CSV file's folder.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import atomic_write_text, copy_image, image_size
from ..records import DataError, DetectionSet, Problem, Record

__all__ = ["COLUMNS", "read_csv", "write_csv"]

COLUMNS = ("image_path", "xmin", "ymin", "xmax", "ymax", "label")


def read_csv(csv_path: str | Path, class_names: Sequence[str] | None = None) -> DetectionSet:
    """Read a CSV annotation file; classes are ``class_names`` or the sorted labels found."""
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text()
    except FileNotFoundError:
        raise DataError(f"{csv_path}: annotation file not found") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{csv_path} line 1: missing column(s) {missing}; the header must be {','.join(COLUMNS)}")
    images: dict[str, list] = {}
    problems = []
    for row in reader:
        line = reader.line_num
        where = f"{csv_path} line {line}"
        entry = images.setdefault(row["image_path"], [])
        coords = [row[c] for c in COLUMNS[1:5]]
        if all(not (v or "").strip() for v in coords) and not (row["label"] or "").strip():
            continue  # an image without boxes
        try:
            box = tuple(float(v) for v in coords)
        except (TypeError, ValueError):
            problems.append(Problem(where, f"xmin, ymin, xmax, ymax must be numbers, got {coords}"))
            continue
        entry.append((box, (row["label"] or "").strip(), where))
    names = list(class_names) if class_names is not None else sorted({b[1] for rows in images.values() for b in rows})
    index = {name: i for i, name in enumerate(names)}
    records = []
    for image, rows in images.items():
        path = Path(image) if Path(image).is_absolute() else csv_path.parent / image
        try:
            height, width = image_size(path)
        except DataError as error:
            problems.append(Problem(str(path), f"{str(error).split(': ', 1)[1]}; its {len(rows)} row(s) are skipped"))
            continue
        known = []
        for box, label, where in rows:
            if label in index:
                known.append((box, label, where))
            else:
                problems.append(Problem(where, f"unknown class {label!r}; known classes: {', '.join(names)}"))
        records.append(
            Record(
                path,
                height,
                width,
                np.array([k[0] for k in known], np.float32).reshape(-1, 4),
                np.array([index[k[1]] for k in known], np.int64),
                image_id=path.stem,
                box_sources=[k[2] for k in known],
            )
        )
    return DetectionSet(records, names, problems)


def write_csv(dataset: DetectionSet, csv_path: str | Path, image_dir: str | Path | None = None) -> None:
    """Write ``dataset`` as CSV (atomically); with ``image_dir``, copy the images there first."""
    csv_path = Path(csv_path)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for record in dataset.records:
        path = record.image_path
        if image_dir is not None:
            path = Path(image_dir) / f"{record.image_id if record.image_id is not None else path.stem}{path.suffix}"
            copy_image(record.image_path, path)
        try:
            name = path.resolve().relative_to(csv_path.parent.resolve()).as_posix()
        except ValueError:
            name = str(path.resolve())
        if len(record.boxes) == 0:
            writer.writerow([name, "", "", "", "", ""])
        for box, label in zip(record.boxes.tolist(), record.labels.tolist(), strict=True):
            writer.writerow([name, *(_number(v) for v in box), dataset.class_names[label]])
    atomic_write_text(csv_path, out.getvalue())


def _number(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and float(value).is_integer() else repr(round(value, 4))
