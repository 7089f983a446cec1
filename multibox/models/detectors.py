"""RetinaNet: backbone + FPN + head -> DenseOutput, with its anchors for any input size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from ..anchors import RETINA_RATIOS, RETINA_SCALES, RETINA_SIZES, RETINA_STRIDES, pyramid_anchors, pyramid_grid_sizes
from ..coding import Coder, DeltaCoder
from ..postprocess import postprocess
from ..structures import DenseOutput, Detections
from .backbones import build_backbone
from .heads import RetinaNetHead
from .necks import FeatureExtractor, retinanet_fpn

__all__ = ["AnchorConfig", "DenseDetector", "RetinaNet"]


@dataclass(frozen=True)
class AnchorConfig:
    """RetinaNet anchors: one base size per pyramid level, times scales, at aspect ratios (h / w)."""

    strides: tuple[int, ...] = RETINA_STRIDES
    sizes: tuple[float, ...] = RETINA_SIZES
    scales: tuple[float, ...] = RETINA_SCALES
    ratios: tuple[float, ...] = RETINA_RATIOS

    @property
    def per_location(self) -> int:
        return len(self.scales) * len(self.ratios)


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


class RetinaNet(DenseDetector):
    """RetinaNet (Lin et al. 2017): images ``[B, 3, H, W]`` (normalised) -> ``DenseOutput``.

    The same output in training and evaluation: ``cls_logits [B, A, K]`` and ``box_deltas
    [B, A, 4]`` over the anchors of :meth:`anchors` for that input size. Loss
    (:class:`~multibox.criterion.RetinaNetCriterion`) and post-processing
    (:func:`~multibox.postprocess.postprocess`) are separate callables.

    Args:
        num_classes: foreground classes ``K``.
        backbone: see :func:`~multibox.models.backbones.build_backbone`.
        pretrained: ``"imagenet"`` or ``"none"``.
        fpn_channels: channels of P3-P7 and of the head.
        head_convs: 3x3 convs per subnet.
        group_norm: GroupNorm in the head.
        anchors: anchor sizes and shapes.
        p6_from: ``"c5"`` (the paper) or ``"p5"`` (torchvision's ``retinanet_resnet50_fpn``).
        frozen_bn, trainable_stages: backbone options.
        separable_head: depthwise-separable tower convs in the head (for CPUs).
        separable_predictors: depthwise-separable final convs of the head.
        separable_fpn: depthwise-separable FPN output convs.

    The number of anchor strides picks the pyramid: five (P3-P7) or three (P3-P5).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: str = "imagenet",
        fpn_channels: int = 256,
        head_convs: int = 4,
        group_norm: bool = False,
        anchors: AnchorConfig = AnchorConfig(),
        p6_from: str = "c5",
        frozen_bn: bool = True,
        trainable_stages: int = 3,
        separable_head: bool = False,
        separable_predictors: bool = False,
        separable_fpn: bool = False,
    ):
        super().__init__()
        levels = len(anchors.strides)
        if levels not in (3, 5) or len(anchors.sizes) != levels:
            raise ValueError("anchors need five strides and sizes (P3-P7) or three (P3-P5), one size per stride")
        body = build_backbone(backbone, pretrained, frozen_bn, trainable_stages)
        fpn = retinanet_fpn(body.out_channels, fpn_channels, p6_from, levels, separable_fpn)
        self.backbone = FeatureExtractor(body.body, fpn, fpn_channels)
        self.head = RetinaNetHead(
            fpn_channels, anchors.per_location, num_classes, head_convs, group_norm,
            separable=separable_head, separable_predictor=separable_predictors,
        )  # fmt: skip
        self.num_classes = num_classes
        self.anchor_config = anchors

    def forward(self, images: Tensor) -> DenseOutput:
        cls_logits, box_deltas = self.head(self.backbone(images))
        return DenseOutput(cls_logits, box_deltas)

    def anchors(self, image_size: Sequence[int]) -> Tensor:
        """``[A, 4]`` xyxy anchors for inputs of ``image_size = (height, width)``, in output order."""
        c = self.anchor_config
        return pyramid_anchors(image_size, c.strides, c.sizes, c.scales, c.ratios)

    def level_sizes(self, image_size: Sequence[int]) -> list[int]:
        """Anchors per pyramid level for ``image_size``, for per-level top-k in post-processing."""
        return [
            h * w * self.anchor_config.per_location
            for h, w in pyramid_grid_sizes(image_size, self.anchor_config.strides)
        ]
