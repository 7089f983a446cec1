"""Faster R-CNN (Ren et al. 2015) on a feature pyramid (Lin et al. 2017): a region proposal
network proposes regions, RoIAlign crops each from the pyramid level its size gives, and a box
head classifies it over C + 1 classes with a box refinement per class.

The network returns :class:`~multibox.structures.TwoStageOutput`, the same type in training and
evaluation; given the targets, the regions its second stage classifies are the proposals and
ground-truth boxes sampled for training (as in the paper), otherwise every proposal. Its loss is
:class:`~multibox.criterion_faster_rcnn.FasterRCNNCriterion`, its post-processing :meth:`detect`.
Module names follow torchvision's ``FasterRCNN`` (``backbone.body``, ``backbone.fpn``,
``rpn.head``, ``roi_heads.box_head``, ``roi_heads.box_predictor``), so the weights of
``fasterrcnn_resnet50_fpn`` load unchanged and give the same proposals and detections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import (
    FeaturePyramidNetwork,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
    roi_align,
)
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..anchors import pyramid_anchors, pyramid_grid_sizes
from ..coding import DeltaCoder
from ..config_model import FasterRCNNConfig
from ..matching import NEGATIVE, match, sample_balanced
from ..structures import Detections, TwoStageOutput
from .backbones import build_backbone
from .necks import FeatureExtractor
from .retinanet import AnchorConfig
from .roi_align import assign_levels, multilevel_roi_align

__all__ = ["FasterRCNN", "ProposalConfig", "RoIConfig", "build_faster_rcnn", "match_rois"]

_DEFAULTS = FasterRCNNConfig()  # the settings' defaults live there once: torchvision's fasterrcnn_resnet50_fpn
# P2-P5 and a max-pooled P6, anchors 32-512 at ratios 0.5, 1, 2
TORCHVISION_ANCHORS = AnchorConfig(_DEFAULTS.anchor_strides, _DEFAULTS.anchor_sizes, _DEFAULTS.anchor_scales,
                                   _DEFAULTS.anchor_ratios)  # fmt: skip
RPN_CODER = DeltaCoder()
ROI_CODER = DeltaCoder((10.0, 10.0, 5.0, 5.0))  # the second stage's deltas, as torchvision's RoIHeads


@dataclass(frozen=True)
class ProposalConfig:
    """The region proposals: per level, the ``pre_nms`` highest-scored anchors are decoded, then
    each image keeps ``post_nms`` after NMS at ``nms_iou`` (NMS within each level); the first of
    each pair is for training, the second for inference. Boxes smaller than ``min_size`` go.
    Defaults: :class:`~multibox.config.FasterRCNNConfig`'s (torchvision's)."""

    pre_nms: tuple[int, int] = _DEFAULTS.rpn_pre_nms
    post_nms: tuple[int, int] = _DEFAULTS.rpn_post_nms
    nms_iou: float = _DEFAULTS.rpn_nms_iou
    min_size: float = 1e-3


@dataclass(frozen=True)
class RoIConfig:
    """The second stage: ``batch`` regions an image sampled in training, at most
    ``positive_fraction`` of them positive (IoU >= ``pos_iou`` with a box, the others background);
    RoIAlign to ``size`` x ``size`` with ``sampling_ratio`` points a bin, each region on the level
    of :func:`~multibox.models.roi_align.roi_levels`. Defaults: :class:`~multibox.config.FasterRCNNConfig`'s."""

    batch: int = _DEFAULTS.roi_batch
    positive_fraction: float = _DEFAULTS.roi_positive_fraction
    pos_iou: float = _DEFAULTS.roi_pos_iou
    size: int = _DEFAULTS.roi_size
    sampling_ratio: int = _DEFAULTS.sampling_ratio
    canonical_scale: float = _DEFAULTS.canonical_scale
    canonical_level: int = _DEFAULTS.canonical_level


def match_rois(boxes: Tensor, targets: Tensor, pos_iou: float) -> Tensor:
    """Each region's box index (IoU >= ``pos_iou``, the best) or :data:`NEGATIVE`; no forced matches."""
    if len(targets) == 0:
        return torch.full((len(boxes),), NEGATIVE, dtype=torch.long, device=boxes.device)
    return match(box_iou(targets, boxes), pos_iou, pos_iou, allow_low_quality=False)


def _flatten(level: Tensor, columns: int) -> Tensor:
    """``[B, a * columns, H, W]`` -> ``[B, H * W * a, columns]`` (row, column, then anchor type)."""
    b, _, h, w = level.shape
    return level.view(b, -1, columns, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, columns)


class RegionProposalNetwork(nn.Module):
    """A 3x3 convolution and two 1x1 predictors on every level (torchvision's ``RPNHead``):
    features -> ``objectness [B, A]`` and ``deltas [B, A, 4]`` over the anchors, level-major."""

    def __init__(self, channels: int, per_location: int):
        super().__init__()
        self.head = RPNHead(channels, per_location)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        logits, deltas = self.head(list(features))
        return torch.cat([_flatten(x, 1) for x in logits], 1)[..., 0], torch.cat([_flatten(x, 4) for x in deltas], 1)


def propose(
    objectness: Tensor, deltas: Tensor, anchors: Tensor, level_sizes: Sequence[int], image_size: Sequence[int],
    pre_nms: int, post_nms: int, nms_iou: float, min_size: float = 1e-3,
) -> list[Tensor]:  # fmt: skip
    """Each image's proposals ``[P, 4]``, highest objectness first within NMS's order: the
    ``pre_nms`` best anchors of each level decoded, clipped, small ones dropped, NMS per level."""
    objectness, deltas = objectness.detach().float(), deltas.detach().float()
    top, levels, start = [], [], 0
    for level, count in enumerate(level_sizes):
        k = min(pre_nms, count)
        top.append(objectness[:, start : start + count].topk(k, dim=1).indices + start)
        levels.append(torch.full((k,), level, dtype=torch.long, device=objectness.device))
        start += count
    top, levels = torch.cat(top, 1), torch.cat(levels)
    rows = torch.arange(len(objectness), device=objectness.device)[:, None]
    scores = objectness[rows, top].sigmoid()
    boxes = RPN_CODER.decode(anchors[top], deltas[rows, top])  # [B, N, 4]
    proposals = []
    for image_boxes, image_scores in zip(boxes, scores, strict=True):
        image_boxes = clip_boxes_to_image(image_boxes, tuple(image_size))
        keep = remove_small_boxes(image_boxes, min_size)
        image_boxes, image_scores, image_levels = image_boxes[keep], image_scores[keep], levels[keep]
        keep = batched_nms(image_boxes, image_scores, image_levels, nms_iou)[:post_nms]
        proposals.append(image_boxes[keep])
    return proposals


def sample_rois(proposals: Sequence[Tensor], targets: Sequence[dict], config: RoIConfig) -> Tensor:
    """``[R, 5]`` the regions the second stage trains on: each image's proposals and its boxes
    (so that every box has positive regions from the first step on), sampled by
    :func:`~multibox.matching.sample_balanced`."""
    rois = []
    for image, (boxes, target) in enumerate(zip(proposals, targets, strict=True)):
        boxes = torch.cat([boxes, target["boxes"].to(boxes)])
        positive, negative = sample_balanced(match_rois(boxes, target["boxes"], config.pos_iou), config.batch,
                                             config.positive_fraction)  # fmt: skip
        rois.append(_regions_of(image, boxes[torch.cat([positive, negative])]))
    return torch.cat(rois)


def _regions_of(image: int, boxes: Tensor) -> Tensor:
    """``boxes [N, 4]`` of image ``image`` as RoIAlign's regions ``[N, 5]`` (traced: any ``N``)."""
    return torch.cat([torch.full_like(boxes[:, :1], image), boxes], 1)


def _traced_roi_align(features: Sequence[Tensor], rois: Tensor, strides: Sequence[int], c: RoIConfig) -> Tensor:
    """:func:`~multibox.models.roi_align.multilevel_roi_align` in operations ONNX has: every
    region pooled from every level by ``roi_align`` (ONNX ``RoiAlign``), each kept from its own."""
    levels = assign_levels(rois, strides, c.canonical_scale, c.canonical_level)[:, None, None, None]
    pooled = None
    for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
        here = roi_align(feature, rois, c.size, 1.0 / stride, c.sampling_ratio)
        pooled = here if pooled is None else torch.where(levels == level, here, pooled)
    return pooled


class RoIHead(nn.Module):
    """The second stage: RoIAlign, two fully connected layers (``box_head``, torchvision's
    ``TwoMLPHead``) and the class and box predictors (``box_predictor``, ``FastRCNNPredictor``)."""

    def __init__(self, channels: int, num_classes: int, strides: Sequence[int], config: RoIConfig, representation: int):
        super().__init__()
        self.strides, self.config = tuple(strides), config
        self.box_head = TwoMLPHead(channels * config.size**2, representation)
        self.box_predictor = FastRCNNPredictor(representation, num_classes + 1)

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        c, features = self.config, features[: len(self.strides)]
        if torch.jit.is_tracing():  # ONNX export: RoiAlign ops
            pooled = _traced_roi_align(features, rois, self.strides, c)
        else:
            pooled = multilevel_roi_align(features, rois, self.strides, c.size, c.sampling_ratio, c.canonical_scale,
                                          c.canonical_level)  # fmt: skip
        cls_logits, box_deltas = self.box_predictor(self.box_head(pooled))
        return cls_logits, box_deltas.unflatten(1, (-1, 4))


class FasterRCNN(nn.Module):
    """Faster R-CNN: images ``[B, 3, H, W]`` (normalised), and optionally the targets, ->
    :class:`~multibox.structures.TwoStageOutput`.

    Args:
        backbone: images -> pyramid levels, one per anchor stride (a stride of 64: the max-pooled
            level after P5, seen by the RPN alone).
        num_classes: foreground classes.
        anchors: the RPN's anchor sizes and shapes, one size per stride.
        proposals: the proposals' counts and NMS.
        rois: the second stage's sampling and pooling.
        representation: units of the box head's two fully connected layers.
    """

    activation = "softmax"  # class scores: a softmax over background and the classes
    coder = ROI_CODER

    def __init__(self, backbone: FeatureExtractor, num_classes: int, anchors: AnchorConfig, proposals: ProposalConfig,
                 rois: RoIConfig, representation: int = 1024):  # fmt: skip
        super().__init__()
        strides = tuple(anchors.strides)
        self.backbone = backbone
        self.num_classes, self.anchor_config, self.proposal_config = num_classes, anchors, proposals
        self.rpn = RegionProposalNetwork(backbone.out_channels, anchors.per_location)
        self.roi_heads = RoIHead(backbone.out_channels, num_classes, [s for s in strides if s <= 32], rois,
                                 representation)  # fmt: skip
        self._anchors: dict[tuple[int, int], Tensor] = {}

    def forward(self, images: Tensor, targets: Sequence[dict] | None = None) -> TwoStageOutput:
        """The RPN's outputs over the anchors and the second stage's on the regions: every
        proposal, or with ``targets`` (``[{"boxes": [G, 4], ...}]`` input pixels) those sampled."""
        size = (int(images.shape[-2]), int(images.shape[-1]))
        features = self.backbone(images)
        objectness, rpn_deltas = self.rpn(features)
        training = targets is not None
        p = self.proposal_config
        proposals = propose(objectness, rpn_deltas, self.anchors(size).to(images.device), self.level_sizes(size),
                            size, p.pre_nms[not training], p.post_nms[not training], p.nms_iou, p.min_size)  # fmt: skip
        if training:
            rois = sample_rois(proposals, targets, self.roi_heads.config)
        else:
            rois = torch.cat([_regions_of(image, boxes) for image, boxes in enumerate(proposals)])
        cls_logits, box_deltas = self.roi_heads(features, rois)
        return TwoStageOutput(objectness, rpn_deltas, rois, cls_logits, box_deltas)

    def anchors(self, image_size: Sequence[int]) -> Tensor:
        """``[A, 4]`` the RPN's anchors for inputs of ``image_size = (height, width)`` (cached)."""
        size = (int(image_size[0]), int(image_size[1]))
        if size not in self._anchors:
            c = self.anchor_config
            self._anchors[size] = pyramid_anchors(size, c.strides, c.sizes, c.scales, c.ratios)
        return self._anchors[size]

    def level_sizes(self, image_size: Sequence[int]) -> list[int]:
        """Anchors per pyramid level for ``image_size``."""
        c = self.anchor_config
        return [h * w * c.per_location for h, w in pyramid_grid_sizes(image_size, c.strides)]

    def detect(
        self, output: TwoStageOutput, image_size: Sequence[int], score_thresh: float = 0.05, topk: int = 1000,
        nms_iou: float = 0.5, max_det: int = 100,
    ) -> list[Detections]:  # fmt: skip
        """Detections (input pixels) of each image: softmax scores, each region's box for each
        class, clipped; scores above ``score_thresh``, boxes of 0.01 px or more, NMS per class,
        the best ``max_det`` (as torchvision's ``RoIHeads``). ``topk`` is not used: each image
        has at most its proposals' count of regions."""
        rois, cls_logits, box_deltas = output.rois, output.cls_logits.float(), output.box_deltas.float()
        size = (int(image_size[0]), int(image_size[1]))
        boxes = clip_boxes_to_image(ROI_CODER.decode(rois[:, None, 1:], box_deltas), size)[:, 1:]
        scores = cls_logits.softmax(-1)[:, 1:]
        labels = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
        found = []
        for image in range(output.objectness.shape[0]):
            mine = rois[:, 0] == image
            b, s, c = boxes[mine].reshape(-1, 4), scores[mine].reshape(-1), labels[mine].reshape(-1)
            keep = torch.where(s > score_thresh)[0]
            b, s, c = b[keep], s[keep], c[keep]
            keep = remove_small_boxes(b, 1e-2)
            b, s, c = b[keep], s[keep], c[keep]
            keep = batched_nms(b, s, c, nms_iou)[:max_det]
            found.append(Detections(b[keep], s[keep], c[keep]))
        return found


def build_faster_rcnn(
    num_classes: int,
    backbone: str = "resnet50",
    pretrained: str = "imagenet",
    frozen_bn: bool = True,
    trainable_stages: int = 3,
    fpn_channels: int = _DEFAULTS.fpn_channels,
    anchors: AnchorConfig = TORCHVISION_ANCHORS,
    proposals: ProposalConfig = ProposalConfig(),
    rois: RoIConfig = RoIConfig(),
    representation: int = _DEFAULTS.representation,
) -> FasterRCNN:
    """A :class:`FasterRCNN` of ``num_classes`` foreground classes; the defaults are torchvision's
    ``fasterrcnn_resnet50_fpn`` (P2-P5 and a max-pooled P6, anchors 32-512 at ratios 0.5, 1, 2).

    The strides choose the pyramid: the first (4 or 8) is C2 or C3, each next one doubles, up to
    32 (C5), and a last 64 adds the max-pooled level.
    """
    strides = tuple(anchors.strides)
    first = strides[0]
    valid = first in (4, 8) and strides[strides.index(32) if 32 in strides else 0 :] in ((32,), (32, 64))
    if not valid or strides != tuple(first * 2**i for i in range(len(strides))):
        raise ValueError(f"Faster R-CNN's anchor strides are 4 or 8 doubling up to 32, then 64 for a max-pooled "
                         f"level (e.g. [4, 8, 16, 32, 64] or [8, 16, 32]), got {list(strides)}")  # fmt: skip
    if len(anchors.sizes) != len(strides):
        raise ValueError(f"one anchor size a stride: {len(strides)} strides, {len(anchors.sizes)} sizes")
    body = build_backbone(backbone, pretrained, frozen_bn, trainable_stages, first_level=int(math.log2(first)))
    extra = LastLevelMaxPool() if strides[-1] == 64 else None
    fpn = FeaturePyramidNetwork(body.out_channels, fpn_channels, extra_blocks=extra)
    return FasterRCNN(FeatureExtractor(body.body, fpn, fpn_channels), num_classes, anchors, proposals, rois,
                      representation)  # fmt: skip
