"""One entry point for every format: detect it, read a split, validate, write, convert."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .formats import read_coco, read_csv, read_voc, read_yolo, write_coco, write_csv, write_voc, write_yolo
from .formats.yolo import read_dataset_yaml
from .io import atomic_write_text
from .records import DataError, DetectionSet, ValidationReport, validate

__all__ = [
    "FACTS_FILE",
    "FORMATS",
    "convert",
    "dataset_facts",
    "detect_format",
    "load_dataset",
    "read_dataset",
    "splits",
    "write_dataset",
    "write_facts",
]

FORMATS = ("voc", "coco", "yolo", "csv")
# VOC and CSV files carry class names but no class order: writers save the order in this file
# (one name per line, beside the annotations) and readers use it when present.
CLASS_LIST = "classes.txt"
# What a dataset says of itself beside its annotations, e.g. ``chiral: true`` (mirrored objects
# are not objects: digits, text), read by the settings a recipe leaves to the data
FACTS_FILE = "multibox.yaml"


def detect_format(path: str | Path) -> str:
    """The format of a dataset path: a VOC root, a COCO ``.json``, a YOLO ``.yaml``, a ``.csv``, or a folder of one."""
    path = Path(path)
    if path.is_file():
        by_suffix = {".json": "coco", ".yaml": "yolo", ".yml": "yolo", ".csv": "csv"}
        if path.suffix.lower() in by_suffix:
            return by_suffix[path.suffix.lower()]
    elif path.is_dir():
        if (path / "Annotations").is_dir():
            return "voc"
        if (path / "data.yaml").is_file():
            return "yolo"
        if any(path.glob("*.json")):
            return "coco"
        if any(path.glob("*.csv")):
            return "csv"
    elif not path.exists():
        raise DataError(f"{path}: no such file or folder")
    raise DataError(
        f"{path}: cannot tell the dataset format (a VOC root with Annotations/, a COCO .json, a YOLO data.yaml "
        f"or a .csv, or a folder holding one); pass the format explicitly (--format voc|coco|yolo|csv)"
    )


def _split_file(path: Path, split: str, suffix: str) -> Path:
    return path if path.is_file() else path / f"{split}{suffix}"


def splits(path: str | Path, fmt: str | None = None) -> list[str]:
    """The split names a dataset offers (``train``, ``val``, ...)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "voc":
        return sorted(p.stem for p in (path / "ImageSets" / "Main").glob("*.txt")) or ["all"]
    if fmt == "yolo":
        spec = read_dataset_yaml(path if path.is_file() else path / "data.yaml")
        return [k for k in ("train", "val", "test") if spec.get(k)]
    suffix = ".json" if fmt == "coco" else ".csv"
    return [path.stem] if path.is_file() else sorted(p.stem for p in path.glob(f"*{suffix}"))


def read_dataset(
    path: str | Path,
    split: str = "train",
    fmt: str | None = None,
    class_names: Sequence[str] | None = None,
    image_dir: str | Path | None = None,
) -> DetectionSet:
    """Read one split of a dataset in any format, unvalidated (see :func:`load_dataset`).

    For VOC and CSV without ``class_names``, the class list is read from ``classes.txt`` beside
    the annotations (multibox's writers save it), else it is the sorted names found in all
    splits, so that every split of one dataset numbers its classes alike.
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt in ("voc", "csv") and class_names is None:
        listing = (path if path.is_dir() else path.parent) / CLASS_LIST
        if listing.is_file():
            class_names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        else:
            names: set[str] = set()
            for other in splits(path, fmt):
                names.update(_read(path, other, fmt, None, image_dir).class_names)
            class_names = sorted(names)
    return _read(path, split, fmt, class_names, image_dir)


def _read(path: Path, split: str, fmt: str, class_names, image_dir) -> DetectionSet:
    if fmt == "voc":
        return read_voc(path, split, class_names)
    if fmt == "coco":
        return read_coco(_split_file(path, split, ".json"), image_dir)
    if fmt == "yolo":
        return read_yolo(path if path.is_file() else path / "data.yaml", split)
    return read_csv(_split_file(path, split, ".csv"), class_names)


def load_dataset(
    path: str | Path,
    split: str = "train",
    fmt: str | None = None,
    policy: str = "error",
    class_names: Sequence[str] | None = None,
    image_dir: str | Path | None = None,
) -> tuple[DetectionSet, ValidationReport]:
    """Read and validate one split; see :func:`multibox.data.records.validate` for ``policy``."""
    return validate(read_dataset(path, split, fmt, class_names, image_dir), policy)


def write_dataset(dataset: DetectionSet, root: str | Path, fmt: str, split: str = "train") -> Path:
    """Write a split in ``fmt`` under ``root`` (images copied); returns the path to read it back from."""
    root = Path(root)
    if fmt in ("voc", "csv"):
        atomic_write_text(root / CLASS_LIST, "".join(f"{name}\n" for name in dataset.class_names))
    if fmt == "voc":
        write_voc(dataset, root, split)
        return root
    if fmt == "coco":
        write_coco(dataset, root / f"{split}.json", image_dir=root / "images")
        return root / f"{split}.json"
    if fmt == "yolo":
        return write_yolo(dataset, root, split)
    if fmt == "csv":
        write_csv(dataset, root / f"{split}.csv", image_dir=root / "images")
        return root / f"{split}.csv"
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def convert(
    source: str | Path,
    target: str | Path,
    to: str,
    fmt: str | None = None,
    policy: str = "error",
    image_dir: str | Path | None = None,
) -> dict[str, ValidationReport]:
    """Convert every split of ``source`` into format ``to`` under ``target``; reports per split."""
    if to not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {to!r}")
    fmt = fmt or detect_format(source)
    reports = {}
    for split in splits(source, fmt):
        dataset, reports[split] = load_dataset(source, split, fmt, policy, image_dir=image_dir)
        write_dataset(dataset, target, to, split)
    return reports


def dataset_facts(path: str | Path) -> dict:
    """The facts of the dataset at ``path`` (its folder's :data:`FACTS_FILE`), or {} without one."""
    import yaml

    path = Path(path)
    file = (path if path.is_dir() else path.parent) / FACTS_FILE
    if not path.exists() or not file.is_file():
        return {}
    facts = yaml.safe_load(file.read_text()) or {}
    if not isinstance(facts, dict):
        raise DataError(f"{file}: facts about a dataset are a mapping, e.g. 'chiral: true'")
    return facts


def write_facts(root: str | Path, facts: dict) -> None:
    """Write :data:`FACTS_FILE` into the dataset folder ``root``."""
    import yaml

    atomic_write_text(Path(root) / FACTS_FILE, yaml.safe_dump(facts, sort_keys=False))
