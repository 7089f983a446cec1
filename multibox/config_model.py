"""The ``model`` section of a run's configuration: the kind, its backbone and one subsection per
family of networks (:mod:`multibox.config` reads and checks them)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "BackboneConfig",
    "FasterRCNNConfig",
    "GridConfig",
    "ModelConfig",
    "RetinaNetConfig",
    "SSDConfig",
    "SingleConfig",
    "YOLOConfig",
    "YOLOv1Config",
]


@dataclass
class BackboneConfig:
    """The pretrained network under every model (:func:`multibox.models.build_backbone`):
    ``name``, ``pretrained`` (``imagenet`` or ``none``), BatchNorm frozen, how many of the last
    stages train, and how many leading MobileNetV2 blocks stay frozen inside them."""

    name: str = "mobilenet_v2"
    pretrained: str = "imagenet"
    frozen_bn: bool = True
    trainable_stages: int = 3
    frozen_blocks: int = 0


@dataclass
class RetinaNetConfig:
    """``retinanet`` (:func:`multibox.models.build_retinanet`): FPN and head widths and layers,
    where P6 comes from, and the anchors (one size per stride, times scales, at ratios h / w)."""

    fpn_channels: int = 256
    head_convs: int = 4
    group_norm: bool = False
    separable_head: bool = False
    separable_predictors: bool = False
    separable_fpn: bool = False
    p6_from: str = "c5"
    anchor_strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    anchor_sizes: tuple[float, ...] | None = (32, 64, 128, 256, 512)
    anchor_scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    anchor_ratios: tuple[float, ...] | None = (0.5, 1.0, 2.0)


@dataclass
class GridConfig:
    """The course's grid SSDs ``ssd_grid`` and ``ssd_multihead`` (:class:`multibox.models.GridSSD`):
    the head's ``width`` and ``dropout``; each cell's anchors, ``zooms`` (the longer side, in
    cells) and ``ratios`` (height / width; empty: the course's); the map the head reads,
    ``source`` ``c5`` or ``p4`` (C5 merged into C4); ``align``, that map resized so that the
    stride-2 convs halve it exactly."""

    width: int = 256
    dropout: float = 0.5
    zooms: tuple[float, ...] = ()
    ratios: tuple[float, ...] = ()
    source: str = "c5"
    align: bool = False


@dataclass
class SSDConfig:
    """``toyssd``, ``ssd300``, ``ssdlite`` (:class:`multibox.models.ToySSD`, ``MobileNetSSD``): the
    default boxes' ``scales``, fractions of the side per map plus one (empty: the paper's)."""

    scales: tuple[float, ...] = ()


@dataclass
class YOLOConfig:
    """``yolov3`` (:class:`multibox.models.YOLOv3`): the neck's ``width`` at stride 8, ``spp``, and
    nine ``anchors`` ``[w, h]`` in input pixels (empty: fitted by k-means when training starts)."""

    width: int = 256
    spp: bool = False
    anchors: tuple[tuple[float, float], ...] = ()


@dataclass
class YOLOv1Config:
    """``yolov1`` (:class:`multibox.models.YOLOv1`): ``grid`` cells a side, ``boxes`` a cell, the
    head's convolution ``channels``, its ``head`` (``fc``: the paper's two fully connected layers,
    ``hidden`` units; ``conv``: a 1x1 convolution per cell) and ``dropout``."""

    grid: int = 7
    boxes: int = 2
    channels: int = 64
    hidden: int = 512
    dropout: float = 0.5
    head: str = "fc"


@dataclass
class FasterRCNNConfig:
    """``faster_rcnn`` (:func:`multibox.models.build_faster_rcnn`): the pyramid (one anchor size a
    stride; the first stride, 4 or 8, is the first backbone level C2 or C3, and a stride of 64 is
    the max-pooled level after P5 that only the RPN sees) and its channels; the region proposal
    network (proposals kept before and after its NMS, in training and in inference; 256 anchors
    sampled an image, half positives at IoU ``rpn_pos_iou``, negatives under ``rpn_neg_iou``);
    and the RoI head (``roi_batch`` RoIs sampled an image in training, ``roi_positive_fraction``
    of them positives at IoU ``roi_pos_iou``; RoIAlign to ``roi_size`` squares, each RoI on the
    level ``canonical_level + log2(sqrt(area) / canonical_scale)`` (FPN's equation 1); two fully
    connected layers of ``representation`` units)."""

    fpn_channels: int = 256
    anchor_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    anchor_sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    anchor_scales: tuple[float, ...] = (1.0,)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms: tuple[int, int] = (2000, 1000)
    rpn_post_nms: tuple[int, int] = (2000, 1000)
    rpn_nms_iou: float = 0.7
    rpn_batch: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pos_iou: float = 0.7
    rpn_neg_iou: float = 0.3
    roi_batch: int = 512
    roi_positive_fraction: float = 0.25
    roi_pos_iou: float = 0.5
    roi_size: int = 7
    sampling_ratio: int = 2
    canonical_scale: float = 224.0
    canonical_level: int = 4
    representation: int = 1024


@dataclass
class SingleConfig:
    """The single-object steps (:class:`multibox.models.SingleObjectNet`): ``single_object``'s
    hidden layer and dropout."""

    hidden: int = 256
    dropout: float = 0.5


@dataclass
class ModelConfig:
    """The network: its ``kind`` (one of :data:`multibox.kinds.KINDS`), its backbone, and the
    section of its family (the others are ignored)."""

    kind: str = "retinanet"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    retinanet: RetinaNetConfig = field(default_factory=RetinaNetConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    ssd: SSDConfig = field(default_factory=SSDConfig)
    yolo: YOLOConfig = field(default_factory=YOLOConfig)
    yolov1: YOLOv1Config = field(default_factory=YOLOv1Config)
    faster_rcnn: FasterRCNNConfig = field(default_factory=FasterRCNNConfig)
    single: SingleConfig = field(default_factory=SingleConfig)
