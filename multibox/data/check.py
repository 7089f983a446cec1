"""``multibox data check``: a dataset's summary and every problem in it, plus box statistics plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .io import atomic_write_bytes
from .loading import detect_format, read_dataset, splits
from .records import DetectionSet, Problem, validate

__all__ = ["SplitCheck", "check_dataset", "plot_box_statistics"]


@dataclass
class SplitCheck:
    """The findings for one split."""

    split: str
    summary: dict
    problems: list[Problem] = field(default_factory=list)


def check_dataset(
    path: str | Path,
    fmt: str | None = None,
    split: str | None = None,
    decode: bool = True,
    image_dir: str | Path | None = None,
) -> tuple[list[SplitCheck], DetectionSet | None]:
    """Check every split (or one): annotations, box geometry, image files.

    Every problem names the file, the line or annotation id, and the box. With ``decode``,
    each image is decoded too, to find corrupt files. Returns the checks and the last split's
    records (for plots).
    """
    fmt = fmt or detect_format(path)
    results, dataset = [], None
    for name in [split] if split else splits(path, fmt):
        raw = read_dataset(path, name, fmt, image_dir=image_dir)
        clean, report = validate(raw, policy="skip", check_files=True)
        problems = list(report.problems)
        if decode:
            for record in clean.records:
                if cv2.imread(str(record.image_path), cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
                    problems.append(Problem(str(record.image_path), "corrupt or unreadable image"))
        ids: dict = {}
        for record in raw.records:  # COCO's parser reports duplicate ids itself
            if record.image_id is not None and record.image_id in ids and fmt != "coco":
                problems.append(
                    Problem(str(record.image_path), f"image id {record.image_id!r} also used by {ids[record.image_id]}")
                )
            ids.setdefault(record.image_id, record.image_path)
        results.append(SplitCheck(name, raw.summary(), problems))
        dataset = raw
    return results, dataset


def plot_box_statistics(dataset: DetectionSet, out: str | Path) -> None:
    """Histograms of box size (sqrt of area, pixels) and aspect (width / height), saved as PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    boxes = np.concatenate([r.boxes for r in dataset.records]) if dataset.records else np.zeros((0, 4))
    finite = np.isfinite(boxes).all(axis=1)
    wh = boxes[finite, 2:] - boxes[finite, :2]
    wh = wh[(wh > 0).all(axis=1)]
    fig, (ax_size, ax_aspect) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_size.hist(np.sqrt(wh.prod(axis=1)), bins=40, color="#3b7dd8")
    for edge in (32, 96):
        ax_size.axvline(edge, color="#555", linestyle="--", linewidth=1)
    ax_size.set(title="box size (COCO small < 32 < medium < 96 < large)", xlabel="sqrt(area) [px]", ylabel="boxes")
    ax_aspect.hist(np.log2(wh[:, 0] / wh[:, 1]), bins=40, color="#d8823b")
    ax_aspect.set(title="box aspect", xlabel="log2(width / height)", ylabel="boxes")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(out), buffer.getvalue())
