"""COCO JSON: images, categories and ``[x, y, w, h]`` annotations; results files.

Category ids (any integers) map to contiguous classes ``0..C-1`` in id order; the ids are
kept in :attr:`DetectionSet.category_ids` and mapped back when writing. ``iscrowd``
annotations become ignore regions, not training targets; images without annotations stay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io import atomic_write_text, copy_image, read_document
from ..records import DataError, DetectionSet, Problem, Record

__all__ = ["coco_results", "read_coco", "write_coco", "write_coco_results"]


def read_coco(json_path: str | Path, image_dir: str | Path | None = None) -> DetectionSet:
    """Read a COCO-style JSON file.

    Args:
        json_path: the annotation file.
        image_dir: folder that ``file_name`` is relative to; default: the JSON file's folder.
    """
    json_path = Path(json_path)
    data = read_document(json_path, "annotation file")
    if not isinstance(data, dict):
        raise DataError(f"{json_path}: a COCO file is an object with 'images', 'annotations' and 'categories'")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{json_path}: a COCO file needs a '{key}' list")
    image_dir = Path(image_dir) if image_dir is not None else json_path.parent
    problems: list[Problem] = []

    categories = sorted(data["categories"], key=lambda c: c["id"])
    category_ids = [int(c["id"]) for c in categories]
    class_of = {cid: i for i, cid in enumerate(category_ids)}
    images: dict = {}
    for image in data["images"]:
        if image["id"] in images:
            problems.append(
                Problem(f"{json_path} image id {image['id']}", "duplicate image id; the later entry is skipped")
            )
            continue
        images[image["id"]] = {"info": image, "boxes": [], "labels": [], "crowd": [], "crowd_labels": [], "sources": []}

    for ann in data.get("annotations", []):
        _add_annotation(ann, images, class_of, f"{json_path} annotation id {ann.get('id')}", problems)

    records = [
        Record(
            image_path=image_dir / e["info"]["file_name"],
            height=int(e["info"]["height"]),
            width=int(e["info"]["width"]),
            boxes=np.array(e["boxes"], np.float32).reshape(-1, 4),
            labels=np.array(e["labels"], np.int64),
            ignore_boxes=np.array(e["crowd"], np.float32).reshape(-1, 4),
            ignore_labels=np.array(e["crowd_labels"], np.int64),
            image_id=image_id,
            box_sources=e["sources"],
        )
        for image_id, e in images.items()
    ]
    return DetectionSet(records, [str(c["name"]) for c in categories], problems, category_ids)


def _add_annotation(ann: dict, images: dict, class_of: dict, where: str, problems: list[Problem]) -> None:
    """One annotation into its image's entry of ``images`` (a crowd one as an ignore region), or
    a :class:`Problem` naming it."""
    entry = images.get(ann.get("image_id"))
    if entry is None:
        problems.append(Problem(where, f"refers to image id {ann.get('image_id')}, which is not in 'images'"))
        return
    if ann.get("category_id") not in class_of:
        problems.append(Problem(where, f"unknown category id {ann.get('category_id')}; known: {list(class_of)}"))
        return
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
        problems.append(Problem(where, f"bbox must be [x, y, width, height] numbers, got {bbox!r}"))
        return
    x, y, w, h = (float(v) for v in bbox)
    if ann.get("iscrowd", 0):
        entry["crowd"].append((x, y, x + w, y + h))
        entry["crowd_labels"].append(class_of[ann["category_id"]])
        return
    entry["boxes"].append((x, y, x + w, y + h))
    entry["labels"].append(class_of[ann["category_id"]])
    entry["sources"].append(where)


def _category_ids(dataset: DetectionSet) -> list[int]:
    return (
        list(dataset.category_ids) if dataset.category_ids is not None else list(range(1, len(dataset.class_names) + 1))
    )


def _image_ids(dataset: DetectionSet) -> list[int]:
    ids = [r.image_id for r in dataset.records]
    if all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids):
        return ids
    return list(range(1, len(ids) + 1))


def write_coco(dataset: DetectionSet, json_path: str | Path, image_dir: str | Path | None = None) -> None:
    """Write ground truth as COCO JSON; with ``image_dir``, copy the images there.

    ``file_name`` is relative to the JSON file's folder. Classes without category ids get
    ids ``1..C``; images without integer ids are numbered ``1..N``.
    """
    json_path = Path(json_path)
    category_ids = _category_ids(dataset)
    images, annotations = [], []
    for image_id, record in zip(_image_ids(dataset), dataset.records, strict=True):
        path = record.image_path
        if image_dir is not None:
            path = Path(image_dir) / f"{record.image_id if record.image_id is not None else path.stem}{path.suffix}"
            copy_image(record.image_path, path)
        file_name = _relative(path, json_path.parent)
        images.append({"id": image_id, "file_name": file_name, "width": record.width, "height": record.height})
        rows = [(b, int(lab), 0) for b, lab in zip(record.boxes, record.labels, strict=True)]
        rows += [(b, int(lab), 1) for b, lab in zip(record.ignore_boxes, record.ignore_labels, strict=True)]
        for box, label, crowd in rows:
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": crowd,
                }
            )
    categories = [{"id": cid, "name": name} for cid, name in zip(category_ids, dataset.class_names, strict=True)]
    atomic_write_text(json_path, json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def _relative(path: Path, start: Path) -> str:
    try:
        return path.resolve().relative_to(start.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def coco_results(
    detections: Sequence,
    image_ids: Sequence[int] | None = None,
    category_ids: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    decimals: tuple[int, int] | None = None,
) -> list[dict]:
    """Detections as COCO results rows: ``image_id, category_id, bbox [x, y, w, h], score``.

    Args:
        detections: per image, ``boxes [N, 4]`` xyxy pixels, ``scores [N]`` and ``labels [N]``
            (``0..C-1``), as attributes (:class:`~multibox.structures.Detections`) or keys.
        image_ids: COCO image id of each entry (default ``1..N``).
        category_ids: category id of each class (default ``label + 1``).
        names: class names: each row also gets its ``category`` name.
        decimals: ``(box, score)`` decimals to round to, for files; None keeps every bit (evaluation).
    """
    image_ids = range(1, len(detections) + 1) if image_ids is None else image_ids
    results = []
    for image_id, det in zip(image_ids, detections, strict=True):
        boxes = _column(det, "boxes").astype(np.float64).reshape(-1, 4)
        scores, labels = _column(det, "scores").reshape(-1), _column(det, "labels").astype(np.int64).reshape(-1)
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            bbox, score = [x1, y1, x2 - x1, y2 - y1], float(score)
            if decimals is not None:
                bbox, score = [round(v, decimals[0]) for v in bbox], round(score, decimals[1])
            row = {"image_id": int(image_id), "category_id": int(category_ids[label] if category_ids else label + 1)}
            results.append({**row, **({"category": names[label]} if names else {}), "bbox": bbox, "score": score})
    return results


def _column(detections, key: str) -> np.ndarray:
    value = detections[key] if isinstance(detections, Mapping) else getattr(detections, key)
    return np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)


def write_coco_results(
    path: str | Path,
    image_ids: Sequence[int],
    detections: Sequence,
    category_ids: Sequence[int],
    names: Sequence[str] | None = None,
) -> None:
    """Write :func:`coco_results` to ``path`` (atomically), boxes to 0.001 px and scores to 1e-5."""
    atomic_write_text(path, json.dumps(coco_results(detections, image_ids, category_ids, names, decimals=(3, 5))))
