"""RetinaNet (Lin et al. 2017): a backbone with its FPN, a head, and anchors for any input size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from ..anchors import RETINA_RATIOS, RETINA_SCALES, RETINA_SIZES, RETINA_STRIDES, pyramid_anchors, pyramid_grid_sizes
from ..structures import DenseOutput
from .backbones import build_backbone
from .detectors import DenseDetector
from .heads import RetinaNetHead
from .necks import FeatureExtractor, retinanet_fpn

__all__ = ["AnchorConfig", "RetinaNet", "build_retinanet"]


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


class RetinaNet(DenseDetector):
    """RetinaNet: images ``[B, 3, H, W]`` (normalised) -> ``DenseOutput``, from its parts.

    The same output in training and evaluation: ``cls_logits [B, A, K]`` and ``box_deltas
    [B, A, 4]`` over the anchors of :meth:`anchors` for that input size. Loss
    (:class:`~multibox.criterion.RetinaNetCriterion`) and post-processing
    (:func:`~multibox.postprocess.postprocess`) are separate callables. The parts are laid out
    as torchvision's ``RetinaNet(backbone, ..., head=...)``, whose weights load unchanged:
    ``backbone`` is the body with its FPN (``backbone.body``, ``backbone.fpn``: torchvision's
    ``BackboneWithFPN``), ``head`` the class and box subnets. :func:`build_retinanet` wires them.

    Args:
        backbone: images -> one feature map per pyramid level.
        head: feature maps -> ``[B, A, K]`` class logits and ``[B, A, 4]`` box deltas.
        anchors: the anchors' sizes and shapes; one stride per level of ``backbone``.
    """

    def __init__(self, backbone: FeatureExtractor, head: RetinaNetHead, anchors: AnchorConfig = AnchorConfig()):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = head.num_classes
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


def build_retinanet(
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
) -> RetinaNet:
    """A :class:`RetinaNet` of ``num_classes`` foreground classes from its settings.

    Args:
        backbone, pretrained, frozen_bn, trainable_stages: see :func:`~multibox.models.build_backbone`.
        fpn_channels: channels of P3-P7 and of the head.
        head_convs: 3x3 convs per subnet.
        group_norm: GroupNorm in the head.
        anchors: anchor sizes and shapes; five strides give P3-P7, three P3-P5.
        p6_from: ``"c5"`` (the paper) or ``"p5"`` (torchvision's ``retinanet_resnet50_fpn``).
        separable_head: depthwise-separable tower convs in the head (for CPUs).
        separable_predictors: depthwise-separable final convs of the head.
        separable_fpn: depthwise-separable FPN output convs.
    """
    levels = len(anchors.strides)
    if levels not in (3, 5) or len(anchors.sizes) != levels:
        raise ValueError("anchors need five strides and sizes (P3-P7) or three (P3-P5), one size per stride")
    body = build_backbone(backbone, pretrained, frozen_bn, trainable_stages)
    fpn = retinanet_fpn(body.out_channels, fpn_channels, p6_from, levels, separable_fpn)
    head = RetinaNetHead(
        fpn_channels, anchors.per_location, num_classes, head_convs, group_norm,
        separable=separable_head, separable_predictor=separable_predictors,
    )  # fmt: skip
    return RetinaNet(FeatureExtractor(body.body, fpn, fpn_channels), head, anchors)
