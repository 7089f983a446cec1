"""``multibox data check``: a dataset's summary and every problem in it, plus box statistics plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .io import atomic_write_bytes, read_image
from .loading import detect_format, read_dataset, splits
from .records import DataError, DetectionSet, Problem, validate

__all__ = ["SplitCheck", "check_dataset", "plot_box_statistics", "unseen_classes", "unseen_warning"]


@dataclass
class SplitCheck:
    """The findings for one split: its summary, its problems, and the classes it holds that the
    training split does not (name -> boxes)."""

    split: str
    summary: dict
    problems: list[Problem] = field(default_factory=list)
    unseen: dict[str, int] = field(default_factory=dict)


def check_dataset(
    path: str | Path,
    fmt: str | None = None,
    split: str | None = None,
    decode: bool = True,
    image_dir: str | Path | None = None,
) -> tuple[list[SplitCheck], dict[str, DetectionSet]]:
    """Check every split (or one): annotations, box geometry, image files (missing, truncated),
    and classes that other splits hold and the training split does not.

    Every problem names the file, the line or annotation id, and the box. With ``decode``,
    each image is decoded too, to find corrupt files. Returns the checks and each split's records
    (for plots).
    """
    fmt = fmt or detect_format(path)
    results, datasets = [], {}
    for name in [split] if split else splits(path, fmt):
        raw = read_dataset(path, name, fmt, image_dir=image_dir)
        clean, report = validate(raw, policy="skip", check_files=True)
        problems = list(report.problems)
        if decode:
            for record in clean.records:
                try:
                    read_image(record.image_path, cv2.IMREAD_REDUCED_GRAYSCALE_8)  # an eighth of the pixels: fast
                except DataError:
                    problems.append(Problem(str(record.image_path), "corrupt or unreadable image"))
        ids: dict = {}
        for record in raw.records:  # COCO's parser reports duplicate ids itself
            if record.image_id is not None and record.image_id in ids and fmt != "coco":
                problems.append(
                    Problem(str(record.image_path), f"image id {record.image_id!r} also used by {ids[record.image_id]}")
                )
            ids.setdefault(record.image_id, record.image_path)
        results.append(SplitCheck(name, raw.summary(), problems))
        datasets[name] = raw
    training = next((r for r in results if r.split == "train"), None)
    for result in results:
        if training is not None and result is not training:
            result.unseen = unseen_classes(training.summary, result.summary)
    return results, datasets


def unseen_classes(train: dict, other: dict) -> dict[str, int]:
    """The classes with boxes in the split ``other`` summarises and none in ``train`` (name -> boxes):
    a detector trained on ``train`` never learns them, and scores 0 on them."""
    return {name: count for name, count in other["classes"].items() if count and not train["classes"].get(name)}


def unseen_warning(split: str, unseen: dict[str, int], train: str = "train") -> str:
    """The warning for classes of ``split`` that the training split (``train``) does not hold."""
    listed = ", ".join(f"{name} ({count} boxes)" for name, count in unseen.items())
    return (f"{len(unseen)} class(es) of '{split}' have no box in '{train}': {listed}; a detector trained on '{train}' "
            f"never learns them (their AP is 0): add training images of them, or move some from '{split}'")  # fmt: skip


def plot_box_statistics(datasets: dict[str, DetectionSet], out: str | Path) -> None:
    """Histograms of box size (sqrt of area, pixels) and aspect (width / height) of every split,
    one outline each, saved as PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes, aspects = {}, {}
    for name, dataset in datasets.items():
        boxes = np.concatenate([r.boxes for r in dataset.records]) if dataset.records else np.zeros((0, 4))
        finite = np.isfinite(boxes).all(axis=1)
        wh = boxes[finite, 2:] - boxes[finite, :2]
        wh = wh[(wh > 0).all(axis=1)]
        sizes[f"{name} ({len(wh)})"], aspects[name] = np.sqrt(wh.prod(axis=1)), np.log2(wh[:, 0] / wh[:, 1])
    fig, (ax_size, ax_aspect) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, values in ((ax_size, sizes), (ax_aspect, aspects)):
        data = np.concatenate(list(values.values()))
        bins = np.histogram_bin_edges(data, bins=40) if len(data) else 40
        for label, series in values.items():
            ax.hist(series, bins=bins, histtype="step", linewidth=1.5, label=label)
    for edge in (32, 96):
        ax_size.axvline(edge, color="#555", linestyle="--", linewidth=1)
    ax_size.set(title="box size (COCO small < 32 < medium < 96 < large)", xlabel="sqrt(area) [px]", ylabel="boxes")
    ax_aspect.set(title="box aspect", xlabel="log2(width / height)", ylabel="boxes")
    ax_size.legend(title="split (boxes)", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(out), buffer.getvalue())
