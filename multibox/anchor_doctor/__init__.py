"""The anchor doctor: can every object be matched by an anchor?

A detector only learns an object if some anchor overlaps it enough to be a positive (IoU >= 0.5
for RetinaNet). :func:`anchor_coverage` measures, on a dataset as the network sees it (boxes
resized like the evaluation pipeline), how many ground-truth boxes have a best anchor reaching
IoU 0.5 (and 0.4), by object size, how many positives each object gets, and which boxes no
anchor can catch. :func:`suggest_anchors` fits anchor sizes and aspect ratios to the boxes with
k-means, keeping the model's pyramid (strides and octave scales).

    coverage = anchor_coverage(train_set, AnchorConfig(...), image_size=(256, 256))
    print(coverage.table())
"""

from .coverage import SIZE_BUCKETS, Coverage, FixedAnchors, anchor_coverage, draw_missed
from .fit import fit_grid_shapes, fit_ssd_scales, fit_yolo_anchors, suggest_anchors

__all__ = [
    "SIZE_BUCKETS",
    "Coverage",
    "FixedAnchors",
    "anchor_coverage",
    "draw_missed",
    "fit_grid_shapes",
    "fit_ssd_scales",
    "fit_yolo_anchors",
    "suggest_anchors",
]
