"""Datasets: parsers for VOC / COCO / YOLO / CSV into one record shape, validation, synthetic scenes."""

from .loading import FORMATS, convert, detect_format, load_dataset, read_dataset, splits, write_dataset
from .records import DataError, DetectionSet, Problem, Record, ValidationReport, validate

__all__ = [
    "FORMATS",
    "DataError",
    "DetectionSet",
    "Problem",
    "Record",
    "ValidationReport",
    "convert",
    "detect_format",
    "load_dataset",
    "read_dataset",
    "splits",
    "validate",
    "write_dataset",
]
