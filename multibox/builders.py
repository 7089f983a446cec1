"""How each kind of :mod:`multibox.kinds` builds its network and its criterion from a configuration."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .anchors import grid_ratios
from .config import Config, FasterRCNNConfig, LossConfig, ModelConfig
from .criterion import RetinaNetCriterion, SingleObjectCriterion, SSDCriterion, YOLOCriterion
from .criterion_faster_rcnn import FasterRCNNCriterion
from .criterion_yolov1 import YOLOv1Criterion
from .models import (
    AnchorConfig,
    GridSSD,
    MobileNetSSD,
    ProposalConfig,
    RoIConfig,
    SingleObjectNet,
    ToySSD,
    YOLOv1,
    YOLOv3,
    build_faster_rcnn,
    build_retinanet,
)

__all__ = [
    "ONE_GRID",
    "faster_rcnn",
    "faster_rcnn_anchors",
    "faster_rcnn_criterion",
    "grid",
    "mobilenet_ssd",
    "retinanet",
    "retinanet_criterion",
    "single",
    "single_criterion",
    "ssd_criterion",
    "toyssd",
    "yolo",
    "yolo_criterion",
    "yolov1",
    "yolov1_criterion",
]

Size = tuple[int, int]


def _backbone(model: ModelConfig, pretrained: str) -> dict:
    b = model.backbone
    return {"backbone": b.name, "pretrained": pretrained, "frozen_bn": b.frozen_bn,
            "trainable_stages": b.trainable_stages}  # fmt: skip


# --- building ----------------------------------------------------------------------------------


def retinanet(model: ModelConfig, classes: int, size: Size, pretrained: str) -> nn.Module:
    r = model.retinanet
    anchors = AnchorConfig(r.anchor_strides, r.anchor_sizes, r.anchor_scales, r.anchor_ratios)
    return build_retinanet(
        classes, **_backbone(model, pretrained), fpn_channels=r.fpn_channels, head_convs=r.head_convs,
        group_norm=r.group_norm, anchors=anchors, p6_from=r.p6_from, separable_head=r.separable_head,
        separable_predictors=r.separable_predictors, separable_fpn=r.separable_fpn,
    )  # fmt: skip


def single(model: ModelConfig, classes: int, size: Size, pretrained: str) -> nn.Module:
    s = model.single
    backbone = _backbone(model, pretrained)
    return SingleObjectNet(classes, model.kind, size, **backbone, hidden=s.hidden, dropout=s.dropout)


# ssd_grid: the course's first SSD, one 4x4 grid with one square anchor a cell
ONE_GRID = {"grids": 1, "zooms": (1.0,), "ratios": ((1.0, 1.0),)}


def grid(model: ModelConfig, classes: int, size: Size, pretrained: str, shapes: dict | None = None) -> nn.Module:
    g = model.grid
    shapes = dict(shapes or {})
    if g.zooms:
        shapes["zooms"] = tuple(g.zooms)
    if g.ratios:
        shapes["ratios"] = grid_ratios(g.ratios)
    return GridSSD(
        classes, size, **shapes, **_backbone(model, pretrained), channels=g.width, dropout=g.dropout,
        grid_from=g.source, align=g.align,
    )  # fmt: skip


def toyssd(model: ModelConfig, classes: int, size: Size, pretrained: str) -> nn.Module:
    return ToySSD(classes, size, model.ssd.scales)  # from scratch: no backbone


def mobilenet_ssd(model: ModelConfig, classes: int, size: Size, pretrained: str, lite: bool = False) -> nn.Module:
    return MobileNetSSD(classes, size, lite, **_backbone(model, pretrained), scales=model.ssd.scales)


def yolo(model: ModelConfig, classes: int, size: Size, pretrained: str) -> nn.Module:
    y = model.yolo
    return YOLOv3(classes, size, y.anchors, **_backbone(model, pretrained), width=y.width, spp=y.spp)


# --- criteria ----------------------------------------------------------------------------------


def _no_soft_targets(loss: LossConfig, kind: str) -> None:
    if loss.soft_targets:
        raise ValueError(f"loss.soft_targets is for the SSD family's bce class loss; {kind} has no such option")


def retinanet_criterion(config: Config, model: nn.Module) -> Callable:
    loss = config.loss
    _no_soft_targets(loss, "retinanet")
    if loss.cls != "focal":
        raise ValueError(f"RetinaNet trains with the sigmoid focal loss (loss.cls=focal), not {loss.cls!r}")
    atss = {}
    if loss.assigner == "atss":
        if config.input.resize == "minmax" and not config.input.tile:
            raise ValueError("loss.assigner=atss needs one input size: input.resize squish or letterbox")
        atss = {"level_sizes": model.level_sizes(config.input.size), "atss_k": loss.atss_k}
    return RetinaNetCriterion(
        pos_iou=loss.pos_iou, neg_iou=loss.neg_iou, alpha=loss.focal_alpha, gamma=loss.focal_gamma,
        box_loss=loss.box, box_weight=loss.box_weight, assigner=loss.assigner, **atss,
    )  # fmt: skip


def _no_atss(loss: LossConfig, kind: str) -> None:
    if loss.assigner != "iou":
        raise ValueError(f"loss.assigner={loss.assigner} is RetinaNet's; {kind} has its own matching")


def single_criterion(config: Config, model: nn.Module) -> Callable:
    _no_soft_targets(config.loss, model.task)
    _no_atss(config.loss, model.task)
    return SingleObjectCriterion(model.task, config.loss.cls_weight)


def ssd_criterion(config: Config, model: nn.Module) -> Callable:
    loss = config.loss
    _no_atss(loss, type(model).__name__)
    sigmoid = model.activation == "sigmoid"
    if sigmoid != (loss.cls in ("bce", "focal")):
        fits = "bce or focal" if sigmoid else "softmax or softmax_focal"
        name = type(model).__name__
        raise ValueError(f"{name} has a {model.activation} head: loss.cls must be {fits}, not {loss.cls!r}")
    return SSDCriterion(
        model.coder, loss.pos_iou, loss.cls, loss.box, loss.focal_alpha, loss.focal_gamma, loss.neg_pos_ratio,
        loss.box_weight, soft_targets=loss.soft_targets,
    )  # fmt: skip


def yolo_criterion(config: Config, model: nn.Module) -> Callable:
    loss = config.loss
    _no_soft_targets(loss, "yolov3")
    _no_atss(loss, "yolov3")
    return YOLOCriterion(
        model.coder, model.level_sizes(), box_loss=loss.box, box_weight=loss.box_weight,
        obj_weight=loss.obj_weight, cls_weight=loss.cls_weight,
    )  # fmt: skip


def yolov1(model: ModelConfig, classes: int, size: Size, pretrained: str) -> nn.Module:
    y = model.yolov1
    return YOLOv1(classes, size, y.grid, y.boxes, **_backbone(model, pretrained), channels=y.channels,
                  hidden=y.hidden, dropout=y.dropout, head=y.head)  # fmt: skip


def yolov1_criterion(config: Config, model: nn.Module) -> Callable:
    loss = config.loss
    _no_soft_targets(loss, "yolov1")
    _no_atss(loss, "yolov1")
    return YOLOv1Criterion(
        model.coder, model.grid, model.boxes, box_weight=loss.box_weight, obj_weight=loss.obj_weight,
        noobj_weight=loss.noobj_weight, cls_weight=loss.cls_weight,
    )  # fmt: skip


def faster_rcnn_anchors(f: FasterRCNNConfig) -> AnchorConfig:
    """The RPN's anchors of a ``model.faster_rcnn`` section."""
    return AnchorConfig(f.anchor_strides, f.anchor_sizes, f.anchor_scales, f.anchor_ratios)


def faster_rcnn(model: ModelConfig, classes: int, size: Size, pretrained: str) -> nn.Module:
    f = model.faster_rcnn
    anchors = faster_rcnn_anchors(f)
    proposals = ProposalConfig(f.rpn_pre_nms, f.rpn_post_nms, f.rpn_nms_iou)
    rois = RoIConfig(f.roi_batch, f.roi_positive_fraction, f.roi_pos_iou, f.roi_size, f.sampling_ratio,
                     f.canonical_scale, f.canonical_level)  # fmt: skip
    return build_faster_rcnn(classes, **_backbone(model, pretrained), fpn_channels=f.fpn_channels, anchors=anchors,
                             proposals=proposals, rois=rois, representation=f.representation)  # fmt: skip


def faster_rcnn_criterion(config: Config, model: nn.Module) -> Callable:
    """Its settings are ``model.faster_rcnn``'s (the sampling belongs to the network's second
    stage as much as to the loss) and ``loss.box_weight``."""
    _no_soft_targets(config.loss, "faster_rcnn")
    _no_atss(config.loss, "faster_rcnn")
    f = config.model.faster_rcnn
    return FasterRCNNCriterion(f.rpn_batch, f.rpn_positive_fraction, f.rpn_pos_iou, f.rpn_neg_iou, f.roi_pos_iou,
                               config.loss.box_weight)  # fmt: skip
