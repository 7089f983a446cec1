"""Detection metrics: COCO AP (faster-coco-eval, numbers identical to pycocotools) and VOC AP.

Both take, per image, detections (``boxes [N, 4]`` xyxy pixels, ``scores [N]``, ``labels [N]``
in ``0..C-1``, as :class:`~multibox.structures.Detections` or a dict) and targets (``boxes``,
``labels``; optional ``difficult [G]`` for VOC, ``ignore_boxes [M, 4]`` / ``ignore_labels [M]``
for COCO crowd regions). Images without boxes or without detections are fine.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

import numpy as np

from .boxes import box_iou_numpy
from .data.formats.coco import coco_results

__all__ = ["COCO_KEYS", "coco_map", "multilabel_metrics", "single_object_metrics", "voc_ap", "voc_map"]

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _get(item, key: str, default=None):
    value = item.get(key, default) if isinstance(item, Mapping) else getattr(item, key, default)
    if value is None:
        return default
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _boxes(item, key: str = "boxes") -> np.ndarray:
    return np.asarray(_get(item, key, np.zeros((0, 4))), np.float64).reshape(-1, 4)


def _labels(item, key: str = "labels") -> np.ndarray:
    return np.asarray(_get(item, key, np.zeros(0)), np.int64).reshape(-1)


def coco_ground_truth(targets: Sequence, num_classes: int | None = None) -> dict:
    """A COCO ground-truth dict (images ``1..N``, categories ``1..C``) for ``targets``."""
    if num_classes is None:
        labels = [_labels(t) for t in targets] + [_labels(t, "ignore_labels") for t in targets]
        num_classes = int(max((lab.max() + 1 for lab in labels if len(lab)), default=1))
    images, annotations = [], []
    for image_id, target in enumerate(targets, start=1):
        size = _get(target, "orig_size")
        height, width = (int(size[0]), int(size[1])) if size is not None else (0, 0)
        images.append({"id": image_id, "width": width, "height": height})
        rows = [(b, lab, 0) for b, lab in zip(_boxes(target), _labels(target), strict=True)]
        rows += [
            (b, lab, 1) for b, lab in zip(_boxes(target, "ignore_boxes"), _labels(target, "ignore_labels"), strict=True)
        ]
        for (x1, y1, x2, y2), label, crowd in rows:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": crowd,
                }
            )
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_map(detections: Sequence, targets: Sequence, num_classes: int | None = None, per_class: bool = False) -> dict:
    """COCO box AP/AR, computed by faster-coco-eval (equal to pycocotools' ``COCOeval``).

    Args:
        detections: per image, ``boxes`` (xyxy pixels), ``scores``, ``labels``.
        targets: per image, ``boxes``, ``labels`` and optionally crowd ``ignore_boxes`` /
            ``ignore_labels``; areas for the size ranges are box areas.
        num_classes: number of classes (default: the largest label seen, plus one).
        per_class: also return ``"per_class"``: AP (IoU 0.5:0.95) of each class, NaN where a
            class has no ground truth; and ``"pr50"``: per class, COCO's interpolated precision
            at the 101 recall points 0, 0.01, ..., 1 at IoU 0.5 (``-1`` where a class has no
            ground truth), the precision-recall curves of :func:`multibox.viz.plot_pr_curves`.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
        "ARl"}`` as floats (``-1`` where COCO defines none, e.g. no small objects).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    if len(detections) != len(targets):
        raise ValueError(f"got detections for {len(detections)} images and targets for {len(targets)}")
    ground_truth = coco_ground_truth(targets, num_classes)
    results = coco_results(detections)
    if not ground_truth["annotations"]:
        empty = {k: -1.0 for k in COCO_KEYS}
        if not per_class:
            return empty
        classes = len(ground_truth["categories"])
        return {**empty, "per_class": [float("nan")] * classes, "pr50": [[-1.0] * 101 for _ in range(classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ground_truth)
        dt = gt.loadRes(results) if results else COCO({**ground_truth, "annotations": []})
        evaluator = COCOeval_faster(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    out = {key: float(value) for key, value in zip(COCO_KEYS, evaluator.stats[: len(COCO_KEYS)], strict=True)}
    if per_class:
        precision = np.asarray(evaluator.eval["precision"])  # [T, R, K, areas, maxDets]
        per = []
        for k in range(precision.shape[2]):
            values = precision[:, :, k, 0, -1]
            values = values[values > -1]
            per.append(float(values.mean()) if values.size else float("nan"))
        out["per_class"] = per
        out["pr50"] = precision[0, :, :, 0, -1].T.tolist()  # IoU 0.5, all areas, 100 detections
    return out


def voc_ap(recall: np.ndarray, precision: np.ndarray, method: str = "area") -> float:
    """Average precision from a precision/recall curve (detections sorted by score).

    ``voc07``: mean of the highest precision at recall >= 0, 0.1, ..., 1 (11 points);
    ``area``: area under the monotone precision envelope (VOC 2010 onwards).
    """
    if method == "voc07":
        return float(
            np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.linspace(0, 1, 11)])
        )
    if method != "area":
        raise ValueError(f"method must be 'voc07' or 'area', got {method!r}")
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([0.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def voc_map(
    detections: Sequence, targets: Sequence, iou: float = 0.5, method: str = "voc07", num_classes: int | None = None
) -> dict:
    """Pascal VOC mean AP at one IoU threshold, difficult objects ignored.

    Per class, detections of all images are ranked by score; each takes the unmatched ground
    truth of its image and class with the highest IoU above ``iou`` (true positive), or is a
    false positive; one matched to a *difficult* object counts as neither, and difficult
    objects are not in the recall's denominator (the VOC devkit's rules).

    Returns:
        ``{"mAP": mean over classes with ground truth, "AP": [per-class AP, NaN where a class
        has no non-difficult ground truth]}``.
    """
    if len(detections) != len(targets):
        raise ValueError(f"got detections for {len(detections)} images and targets for {len(targets)}")
    gt_boxes = [_boxes(t) for t in targets]
    gt_labels = [_labels(t) for t in targets]
    gt_difficult = [
        np.asarray(_get(t, "difficult", np.zeros(len(b), bool)), bool).reshape(-1)
        for t, b in zip(targets, gt_boxes, strict=True)
    ]
    if num_classes is None:
        seen = [lab.max() + 1 for lab in gt_labels + [_labels(d) for d in detections] if len(lab)]
        num_classes = int(max(seen, default=0))
    ap = []
    for c in range(num_classes):
        npos = sum(int(((lab == c) & ~dif).sum()) for lab, dif in zip(gt_labels, gt_difficult, strict=True))
        entries = []  # (score, image, box)
        for i, det in enumerate(detections):
            labels = _labels(det)
            for box, score in zip(
                _boxes(det)[labels == c], _get(det, "scores", np.zeros(0)).reshape(-1)[labels == c], strict=True
            ):
                entries.append((float(score), i, box))
        if npos == 0:
            ap.append(float("nan"))
            continue
        entries.sort(key=lambda e: -e[0])
        tp, fp = _voc_outcomes(entries, c, gt_boxes, gt_labels, gt_difficult, iou)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap.append(voc_ap(recall, precision, method) if len(entries) else 0.0)
    valid = [a for a in ap if not np.isnan(a)]
    return {"mAP": float(np.mean(valid)) if valid else float("nan"), "AP": ap}


def _voc_outcomes(entries: list, c: int, gt_boxes: list, gt_labels: list, gt_difficult: list, iou: float):
    """True and false positive flags of class ``c``'s ranked detections ``entries`` (score, image,
    box): each takes the best unused ground truth above ``iou``; one on a difficult object is neither."""
    used = [np.zeros(int((lab == c).sum()), bool) for lab in gt_labels]
    tp, fp = np.zeros(len(entries)), np.zeros(len(entries))
    for n, (_, i, box) in enumerate(entries):
        mine = gt_labels[i] == c
        candidates = gt_boxes[i][mine]
        if len(candidates) == 0:
            fp[n] = 1
            continue
        overlaps = box_iou_numpy(box, candidates)
        best = int(overlaps.argmax())
        if overlaps[best] <= iou:
            fp[n] = 1
        elif not gt_difficult[i][mine][best]:
            if used[i][best]:
                fp[n] = 1
            else:
                tp[n], used[i][best] = 1, True
    return tp, fp


def single_object_metrics(detections: Sequence, targets: Sequence, num_classes: int, task: str) -> dict:
    """The single-object steps' metrics, over images with at least one box.

    Each image's ground truth is its largest box and that box's class; each detection list
    holds the model's one answer (boxes and targets in the same pixels, e.g. the originals).

    Returns ``images`` (counted) and, as the task has them: ``accuracy`` (class of the largest
    object), ``IoU`` (mean IoU of the predicted and the largest box) and ``L1`` (mean absolute
    coordinate error, pixels), and for ``single_object`` COCO ``AP``, ``AP50``, ``AP75`` of the
    one detection per image against the largest object.
    """
    kept = [(d, t) for d, t in zip(detections, targets, strict=True) if len(_boxes(t))]
    metrics: dict = {"images": len(kept)}
    if not kept:
        return metrics
    truth_boxes, truth_labels, found_boxes, found_labels = [], [], [], []
    for det, target in kept:
        boxes = _boxes(target)
        largest = int(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).argmax())
        truth_boxes.append(boxes[largest])
        truth_labels.append(int(_labels(target)[largest]))
        found_boxes.append(_boxes(det)[0])
        found_labels.append(int(_labels(det)[0]))
    truth_boxes, found_boxes = np.stack(truth_boxes), np.stack(found_boxes)
    if task in ("largest_cls", "single_object"):
        metrics["accuracy"] = float(np.mean(np.array(truth_labels) == np.array(found_labels)))
    if task in ("largest_box", "single_object"):
        ious = [box_iou_numpy(t, f[None])[0] for t, f in zip(truth_boxes, found_boxes, strict=True)]
        metrics["IoU"] = float(np.mean(ious))
        metrics["L1"] = float(np.mean(np.abs(truth_boxes - found_boxes)))
    if task == "single_object":
        largest = [{"boxes": b[None], "labels": np.array([c])} for b, c in zip(truth_boxes, truth_labels, strict=True)]
        coco = coco_map([d for d, _ in kept], largest, num_classes)
        metrics.update({k: coco[k] for k in ("AP", "AP50", "AP75")})
    return metrics


def multilabel_metrics(probabilities: np.ndarray, present: np.ndarray, threshold: float = 0.5) -> dict:
    """Multi-label classification: ``probabilities`` and 0/1 ``present`` are ``[N, C]``.

    Returns ``accuracy`` (per image and class, at ``threshold``), ``exact`` (images whose
    whole label set is right), ``F1`` (micro-averaged) and ``mAP`` (mean over classes with a
    positive of the average precision, ``sum_n (R_n - R_{n-1}) P_n`` over the ranked images).
    """
    probabilities, present = np.asarray(probabilities, np.float64), np.asarray(present) > 0.5
    predicted = probabilities >= threshold
    tp = float(np.sum(predicted & present))
    fp, fn = float(np.sum(predicted & ~present)), float(np.sum(~predicted & present))
    aps = []
    for c in range(present.shape[1]):
        if not present[:, c].any():
            continue
        order = np.argsort(-probabilities[:, c], kind="stable")
        hits = present[order, c]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float(np.sum(precision[hits]) / hits.sum()))
    return {
        "accuracy": float(np.mean(predicted == present)),
        "exact": float(np.mean(np.all(predicted == present, axis=1))),
        "F1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "mAP": float(np.mean(aps)) if aps else -1.0,
    }
