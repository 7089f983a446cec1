"""Pascal VOC: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``.

VOC pixel coordinates are 1-based and inclusive: a box ``xmin..xmax`` covers the pixels
``xmin - 1 .. xmax - 1``, i.e. ``[xmin - 1, xmax)`` in 0-based continuous coordinates (the
convention of detectron2). Reading subtracts 1 from ``xmin``/``ymin``; writing adds it back.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import atomic_write_text, copy_image, image_size
from ..records import DataError, DetectionSet, Problem, Record

__all__ = ["read_voc", "write_voc"]


def _ids(root: Path, split: str | None) -> list[str]:
    if split is not None:
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        if listing.is_file():
            return [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        if split not in ("all",):
            raise DataError(
                f"{listing}: split list not found; VOC splits are listed in ImageSets/Main/<split>.txt "
                f"(or use every file in Annotations/ with the split 'all': data.train_split=all, --split all)"
            )
    return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))


def read_voc(root: str | Path, split: str | None = "train", class_names: Sequence[str] | None = None) -> DetectionSet:
    """Read a VOC dataset split.

    Args:
        root: folder holding ``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/``.
        split: name of the list in ``ImageSets/Main`` (``"all"`` or ``None``: every XML file).
        class_names: the class list; objects of other classes are reported as problems.
            Without it, the sorted names found in the split.

    Returns:
        A :class:`DetectionSet`; ``difficult`` objects are kept and flagged.
    """
    root = Path(root)
    if not (root / "Annotations").is_dir():
        raise DataError(f"{root}: no Annotations/ folder; is this a Pascal VOC dataset?")
    parsed, problems = [], []
    for image_id in _ids(root, split):
        xml_path = root / "Annotations" / f"{image_id}.xml"
        try:
            parsed.append(_parse(xml_path, image_id, root, problems))
        except (ET.ParseError, FileNotFoundError) as error:
            problems.append(Problem(str(xml_path), f"cannot be read as VOC XML ({error}); the image is skipped"))
    names = list(class_names) if class_names is not None else sorted({o[0] for *_, objs in parsed for o in objs})
    index = {name: i for i, name in enumerate(names)}
    records = []
    for path, (height, width), image_id, objects in parsed:
        keep = [o for o in objects if o[0] in index]
        for name, _, _, source in objects:
            if name not in index:
                problems.append(Problem(source, f"unknown class {name!r}; known classes: {', '.join(names)}"))
        records.append(
            Record(
                image_path=path,
                height=height,
                width=width,
                boxes=np.array([o[1] for o in keep], np.float32).reshape(-1, 4),
                labels=np.array([index[o[0]] for o in keep], np.int64),
                difficult=np.array([o[2] for o in keep], bool),
                image_id=image_id,
                box_sources=[o[3] for o in keep],
            )
        )
    return DetectionSet(records, names, problems)


def _parse(xml_path: Path, image_id: str, root: Path, problems: list[Problem]):
    tree = ET.parse(xml_path).getroot()
    filename = tree.findtext("filename") or f"{image_id}.jpg"
    image_path = root / "JPEGImages" / filename
    size = tree.find("size")
    try:
        height, width = int(float(size.findtext("height"))), int(float(size.findtext("width")))
        if height <= 0 or width <= 0:
            raise ValueError
    except (AttributeError, TypeError, ValueError):
        height, width = image_size(image_path)
    objects = []
    for k, obj in enumerate(tree.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        source = f"{xml_path} object {k} ({name or 'no name'})"
        try:
            bnd = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(bnd.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            problems.append(Problem(source, "bndbox needs numeric xmin, ymin, xmax, ymax; the object is skipped"))
            continue
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
        objects.append((name, (xmin - 1, ymin - 1, xmax, ymax), difficult, source))
    return image_path, (height, width), image_id, objects


def write_voc(dataset: DetectionSet, root: str | Path, split: str = "train") -> None:
    """Write ``dataset`` as a VOC split: XML per image, images copied into ``JPEGImages/``."""
    root = Path(root)
    ids = []
    for record in dataset.records:
        image_id = str(record.image_id if record.image_id is not None else record.image_path.stem)
        filename = f"{image_id}{record.image_path.suffix}"
        copy_image(record.image_path, root / "JPEGImages" / filename)
        atomic_write_text(root / "Annotations" / f"{image_id}.xml", _xml(record, filename, dataset.class_names))
        ids.append(image_id)
    atomic_write_text(root / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{i}\n" for i in ids))


def _xml(record: Record, filename: str, class_names: Sequence[str]) -> str:
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = "JPEGImages"
    ET.SubElement(annotation, "filename").text = filename
    size = ET.SubElement(annotation, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for box, label, difficult in zip(record.boxes, record.labels, record.difficult, strict=True):
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = class_names[label]
        ET.SubElement(obj, "difficult").text = "1" if difficult else "0"
        bnd = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = box.tolist()
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bnd, tag).text = format(round(value, 3), ".10g")
    ET.indent(annotation)
    return ET.tostring(annotation, encoding="unicode") + "\n"
