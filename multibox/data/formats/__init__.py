"""Dataset formats: each module reads into a :class:`~multibox.data.records.DetectionSet` and writes one out."""

from .coco import coco_results, read_coco, write_coco, write_coco_results
from .csv import read_csv, write_csv
from .voc import read_voc, write_voc
from .yolo import read_yolo, write_yolo

__all__ = [
    "coco_results",
    "read_coco",
    "read_csv",
    "read_voc",
    "read_yolo",
    "write_coco",
    "write_coco_results",
    "write_csv",
    "write_voc",
    "write_yolo",
]
