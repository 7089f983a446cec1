"""Where a trained detector's AP goes: its confident detections sorted by error, and the objects
it finds by size. A diagnostic, not a benchmark.

    python bench/detection_errors.py WEIGHTS DATA [--images N] [--score S]
    python bench/detection_errors.py runs/ssd_multihead/best.pt data/digits3400

On the first ``N`` validation images (200), each detection scoring at least ``S`` (0.3), best
first, is one of: ``right`` (IoU >= 0.5 with an object of its class not yet found),
``duplicate`` (such an object already found), ``wrong class`` (IoU >= 0.5 with an object of
another class), ``loose`` (IoU 0.1-0.5 with an object) or ``background``. Then, by the object's
longer side at the network's input, the share of objects that some detection above the
predictor's score threshold boxes at IoU >= 0.5 with the right class: the recall that ranking
cannot raise.
"""

from __future__ import annotations

import argparse
from collections import Counter
from itertools import pairwise

import torch
from torchvision.ops import box_iou

from multibox import load
from multibox.data import load_dataset
from multibox.data.transforms import boxes_to_input

SIDES = (0, 24, 32, 48, 96, float("inf"))
KINDS = ("right", "duplicate", "wrong class", "loose", "background")


def kinds(iou: torch.Tensor, right_class: torch.Tensor) -> list[str]:
    """The error kind of each detection (columns of ``iou [G, D]``, best first)."""
    found, out = set(), []
    for j in range(iou.shape[1]):
        if iou.shape[0] == 0 or float(iou[:, j].max()) < 0.1:
            out.append("background")
            continue
        g = int(iou[:, j].argmax())
        if float(iou[g, j]) < 0.5:
            out.append("loose")
        elif not bool(right_class[g, j]):
            out.append("wrong class")
        elif g in found:
            out.append("duplicate")
        else:
            found.add(g)
            out.append("right")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights")
    parser.add_argument("data")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--score", type=float, default=0.3)
    args = parser.parse_args()
    detector = load(args.weights, device="cpu")
    height, width = detector.config.input.size
    resize = detector.config.input.resize
    val, _ = load_dataset(args.data, detector.config.data.val_split)
    counts, sizes = Counter(), []  # sizes: (longer side at the input, found)
    for record in val.records[: args.images]:
        found = detector.predict(str(record.image_path))
        order = found.scores.argsort(descending=True)
        boxes, labels = torch.from_numpy(record.boxes).float(), torch.from_numpy(record.labels)
        iou = box_iou(boxes, found.boxes.float()[order])  # [G, D], detections best first
        right_class = labels[:, None] == found.labels[order][None, :]
        confident = found.scores[order] >= args.score
        counts.update(kinds(iou[:, confident], right_class[:, confident]))
        hit = ((iou >= 0.5) & right_class).any(dim=1)
        seen = boxes_to_input(boxes.double(), (record.height, record.width), (height, width), resize)
        longer = (seen[:, 2:] - seen[:, :2]).max(dim=1).values
        sizes += list(zip(longer.tolist(), hit.tolist(), strict=True))
    print(f"{args.weights}: detections scoring >= {args.score} on {min(args.images, len(val.records))} images")
    print("  " + ", ".join(f"{kind} {counts[kind]}" for kind in KINDS))
    print(f"objects boxed at IoU >= 0.5 with the right class, by longer side at {width}x{height}:")
    for low, high in pairwise(SIDES):
        hits = [hit for length, hit in sizes if low <= length < high]
        if hits:
            print(f"  {low:>3}-{high:<4} px: {sum(hits) / len(hits):.2f} of {len(hits)}")


if __name__ == "__main__":
    main()
