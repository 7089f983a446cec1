"""The AP a dense detector's matching and box coder allow: a ceiling, not a benchmark.

    python bench/matching_ceiling.py PRESET DATA [key=value ...] [--random-scores]
    python bench/matching_ceiling.py ssd_multihead data/digits3400

On the validation split, every anchor that the preset's matching makes positive predicts its
object as well as the box coder can reach it (``decode(encode(box))``; the TanhCoder of the
grid SSDs bounds the move), scored by that IoU, with the right class; other anchors predict
nothing; class-wise NMS 0.5, then COCO AP. A trained network cannot beat these figures, so
they separate what the anchors and matching can express from what training has learned.
With ``--random-scores`` the positives are ranked at random instead of by that IoU: the
ceiling of a network that boxes as well as its coder allows but whose class scores do not
tell its well-placed boxes from its poorly placed ones.
Grid-SSD presets (SSD matching, ``train.pos_iou``).
"""

from __future__ import annotations

import sys

import torch
from torchvision.ops import batched_nms, box_iou

from multibox.config import load_config
from multibox.data import load_dataset
from multibox.data.transforms import boxes_to_input
from multibox.kinds import build_model
from multibox.matching import batch_iou, match_ssd
from multibox.metrics import coco_map


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--random-scores"]
    random_scores = len(args) < len(sys.argv) - 1
    if len(args) < 2:
        raise SystemExit(__doc__)
    preset, data, overrides = args[0], args[1], args[2:]
    generator = torch.Generator().manual_seed(0)
    config = load_config(preset, overrides)
    val = load_dataset(data, split="val")[0]
    size = tuple(config.input.size)
    model = build_model(config.model, len(val.class_names), pretrained="none", image_size=size)
    anchors, coder = model.anchors(), model.coder
    detections, targets, reached = [], [], []
    for record in val.records:
        orig = (record.height, record.width)
        boxes = boxes_to_input(torch.from_numpy(record.boxes).double(), orig, size, config.input.resize).float()
        labels = torch.from_numpy(record.labels).long()
        targets.append({"boxes": boxes, "labels": labels})
        matched = match_ssd(batch_iou([boxes], anchors), config.loss.pos_iou)[0]
        positive = (matched >= 0).nonzero().squeeze(1)
        box_index = matched[positive]
        best = coder.decode(anchors, coder.encode(anchors, boxes[box_index], positive), positive)
        reach = box_iou(best, boxes[box_index]).diagonal()
        score = torch.rand(len(reach), generator=generator) if random_scores else reach
        keep = batched_nms(best, score, labels[box_index], 0.5)
        detections.append({"boxes": best[keep], "scores": score[keep], "labels": labels[box_index][keep]})
        found = torch.zeros(len(boxes), dtype=torch.bool)
        found[box_index[reach >= 0.5]] = True
        reached.append(found)
    share = float(torch.cat(reached).float().mean())
    metrics = coco_map(detections, targets, len(val.class_names))
    ranked = "random scores" if random_scores else "scored by IoU"
    reachable = f"{share:.3f} of the objects have a positive anchor that reaches IoU 0.5"
    print(f"{preset} {' '.join(overrides)} ({ranked}): {reachable}")
    print("ceiling: " + "  ".join(f"{key} {metrics[key]:.3f}" for key in ("AP", "AP50", "AP75")))


if __name__ == "__main__":
    main()
