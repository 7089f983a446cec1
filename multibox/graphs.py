"""The detection graphs that :mod:`multibox.export` traces to ONNX: a dense detector with its
post-processing in operations ONNX has (:class:`DetectionGraph`), and a two-stage detector with
its own (:class:`TwoStageGraph`). Each gives fixed-size ``boxes [B, max_det, 4]``, ``scores
[B, max_det]`` (0 in unused slots) and ``labels [B, max_det]``: what the detector's ``detect``
gives, padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .postprocess import class_scores

__all__ = ["DetectionGraph", "TwoStageGraph"]


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX's ``NonMaxSuppression`` (class-wise, batched): ``selected [N, 3]`` rows of
    ``(image, class, box)``, each class's boxes in descending score order, the images and classes
    in order. Eager, it computes the same with torchvision's NMS; exported, it is the ONNX op."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: Tensor, iou: Tensor, threshold: Tensor) -> Tensor:
        from torchvision.ops import nms

        rows = []
        for image in range(scores.shape[0]):
            for cls in range(scores.shape[1]):
                candidates = (scores[image, cls] > threshold).nonzero().flatten()
                keep = candidates[nms(boxes[image, candidates], scores[image, cls, candidates], float(iou))]
                keep = keep[: int(max_per_class)]
                rows.append(torch.stack((torch.full_like(keep, image), torch.full_like(keep, cls), keep), dim=1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou, threshold):
        return g.op("NonMaxSuppression", boxes, scores, max_per_class, iou, threshold)


class DetectionGraph(nn.Module):
    """A dense detector plus its post-processing, in operations that export to ONNX.

    ``forward(images [B, 3, H, W])`` gives ``boxes [B, max_det, 4]`` (input pixels, clipped),
    ``scores [B, max_det]`` (highest first, 0 where there are fewer detections) and ``labels
    [B, max_det]``: per image, the result of ``model.detect`` with the same settings, padded.

    Args:
        model: a detector with ``anchors``, ``level_sizes``, ``coder`` and ``activation``.
        image_size: the ``(height, width)`` of its inputs (the anchors follow from it).
        score_thresh, topk, nms_iou, max_det: as :func:`~multibox.postprocess.postprocess`.
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: Sequence[int],
        score_thresh: float = 0.05,
        topk: int = 1000,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ):
        super().__init__()
        self.model = model
        self.size = (int(image_size[0]), int(image_size[1]))
        self.register_buffer("anchors", model.anchors(self.size).float(), persistent=False)
        self.level_sizes = list(model.level_sizes(self.size))
        self.topk, self.max_det = topk, max_det
        self.register_buffer("settings", torch.tensor([nms_iou, score_thresh]), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cls_logits, box_deltas = self.model(images)
        scores, labels, anchor, num_classes = self._candidates(self.model.scored_logits(cls_logits.float()))
        batch, count = scores.shape
        # only the candidates are decoded (a few thousand boxes, not every anchor's); rows of the
        # flattened deltas, as a gather along anchors of a sliced head output (YOLOv3's) does not
        # convert to OpenVINO
        rows = anchor + torch.arange(batch, device=anchor.device)[:, None] * box_deltas.shape[1]
        deltas = box_deltas.float().reshape(-1, 4)[rows.reshape(-1)].reshape(batch, count, 4)
        boxes = self.model.coder.decode(self.anchors, deltas, anchor_index=anchor)
        height, width = self.size
        boxes = torch.stack(
            (boxes[..., 0].clamp(0, width), boxes[..., 1].clamp(0, height),
             boxes[..., 2].clamp(0, width), boxes[..., 3].clamp(0, height)), dim=-1,
        )  # fmt: skip
        # class-wise NMS: a candidate scores in its own class's row only (0 elsewhere, below any threshold)
        classes = torch.arange(num_classes, device=labels.device)[None, :, None]
        by_class = torch.where(labels[:, None, :] == classes, scores[:, None, :], torch.zeros_like(scores[:, None, :]))
        max_per_class = torch.tensor([self.max_det], dtype=torch.long)
        nms_iou, score_thresh = self.settings[:1], self.settings[1:]
        selected = _NonMaxSuppression.apply(boxes, by_class, max_per_class, nms_iou, score_thresh)
        image, candidate = selected[:, 0], selected[:, 2]
        # the survivors' scores in a dense [B, candidates] grid, then the best max_det of each image
        kept = torch.zeros_like(scores).index_put((image, candidate), scores[image, candidate])
        top_scores, top = kept.topk(min(self.max_det, count), dim=1)
        top_boxes = boxes.gather(1, top[..., None].expand(-1, -1, 4))
        return top_boxes, top_scores, labels.gather(1, top)

    def _candidates(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """The top-k (anchor, class) entries of each level as ``scores, labels, anchor [B, C]``,
        and the number of classes: :func:`~multibox.postprocess.postprocess`'s candidates before
        its score threshold (which NMS applies here). A sigmoid head ranks its logits (the
        sigmoid is monotonic) and activates the candidates only."""
        sigmoid = self.model.activation == "sigmoid"
        ranking = logits if sigmoid else class_scores(logits, self.model.activation)
        num_classes = ranking.shape[2]
        values, labels, anchors, start = [], [], [], 0
        for size in self.level_sizes:
            v, label, anchor = _best_entries(ranking[:, start : start + size], self.topk)
            values.append(v)
            labels.append(label)
            anchors.append(anchor + start)
            start += size
        values = torch.cat(values, dim=1)
        scores = values.sigmoid() if sigmoid else values
        return scores, torch.cat(labels, dim=1), torch.cat(anchors, dim=1), num_classes


def _best_entries(level: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest (anchor, class) entries of a level's ``[B, A, K]`` scores, unsorted:
    ``values, labels, anchors [B, k]`` (all entries where there are fewer).

    An entry among the ``k`` largest has an anchor among the ``k`` whose best class scores
    highest (fewer than ``k`` anchors can beat it), so the ``k`` best anchors are found first
    (a ``topk`` over ``A``, not ``A * K``) and the entries ranked among their ``k * K`` scores:
    the same entries, ties apart, at a fraction of the cost.
    """
    batch, num_anchors, num_classes = level.shape
    if num_anchors > k and num_classes > 1:
        anchors = level.amax(dim=2).topk(k, dim=1, sorted=False).indices
        level = level.gather(1, anchors[..., None].expand(-1, -1, num_classes))
    else:
        anchors = torch.arange(num_anchors, device=level.device).expand(batch, -1)
    flat = level.reshape(batch, -1)
    values, index = flat.topk(min(k, flat.shape[1]), dim=1, sorted=False)
    slot = torch.div(index, num_classes, rounding_mode="floor")
    return values, index % num_classes, anchors.gather(1, slot)


class TwoStageGraph(nn.Module):
    """A two-stage detector (Faster R-CNN) with its post-processing, for one image, in operations
    that export to ONNX: the RPN, its per-level top-k and NMS, RoIAlign (ONNX ``RoiAlign``) on the
    proposals, the box head and :meth:`~multibox.models.FasterRCNN.detect`; the outputs as
    :class:`DetectionGraph`'s for a batch of one (``boxes [1, max_det, 4]``, ``scores`` 0 where
    there are fewer detections, ``labels``).
    """

    def __init__(self, model: nn.Module, image_size: Sequence[int], **settings):
        super().__init__()
        self.model, self.size, self.settings = model, (int(image_size[0]), int(image_size[1])), settings

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        found = self.model.detect(self.model(images), self.size, **self.settings)[0]
        count = self.settings["max_det"]
        boxes = torch.cat([found.boxes, found.boxes.new_zeros((count, 4))])[:count]
        scores = torch.cat([found.scores, found.scores.new_zeros(count)])[:count]
        labels = torch.cat([found.labels, found.labels.new_zeros(count)])[:count]
        return boxes[None], scores[None], labels[None]
