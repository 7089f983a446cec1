"""What every detector with anchors shares: ``detect`` from its anchors, coder and activation."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..coding import Coder, DeltaCoder
from ..postprocess import postprocess
from ..structures import DenseOutput, Detections

__all__ = ["DenseDetector"]


class DenseDetector(nn.Module):
    """What the detectors with anchors share: ``detect`` from their ``anchors``, ``level_sizes``,
    box ``coder`` and class ``activation`` (``sigmoid``, ``softmax`` or ``objectness``, see
    :func:`~multibox.postprocess.postprocess`). A head with ``background_column`` has ``K + 1``
    class outputs, the background in column 0; a sigmoid head ignores that column."""

    coder: Coder = DeltaCoder()
    activation = "sigmoid"
    background_column = False

    def anchors(self, image_size: Sequence[int]) -> Tensor:
        raise NotImplementedError

    def level_sizes(self, image_size: Sequence[int]) -> list[int]:
        raise NotImplementedError

    def scored_logits(self, cls_logits: Tensor) -> Tensor:
        """The columns of ``cls_logits`` that :func:`~multibox.postprocess.class_scores` turns
        into class scores with :attr:`activation`: all but a sigmoid head's unused background."""
        return cls_logits[..., 1:] if self.background_column and self.activation == "sigmoid" else cls_logits

    def detect(
        self,
        output: DenseOutput,
        image_size: Sequence[int],
        score_thresh: float = 0.05,
        topk: int = 1000,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ) -> list[Detections]:
        """Detections (input pixels) of a batch of ``image_size`` inputs: score threshold, top-k
        per level, decoding, class-wise NMS, ``max_det`` per image."""
        cls_logits, box_deltas = output
        size = (int(image_size[0]), int(image_size[1]))
        return postprocess(
            self.scored_logits(cls_logits),
            box_deltas,
            self.anchors(size).to(cls_logits.device),
            [size] * cls_logits.shape[0],
            coder=self.coder,
            level_sizes=self.level_sizes(size),
            activation=self.activation,
            score_thresh=score_thresh,
            topk=topk,
            nms_iou=nms_iou,
            max_det=max_det,
        )
