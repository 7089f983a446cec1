"""The model kinds: one entry per kind, and everything else asks this table.

An entry (:class:`Kind`) says how to build the network from the configuration, its training
criterion, the metric that picks ``best.pt``, how it is evaluated, what it fits from the
training data before training, and its anchor doctor. The trainer, evaluation, the predictor,
export, the anchor doctor and the CLI look a kind up in :data:`KINDS`; none of them branches on
the kind's name. Adding a kind is a model file plus an entry (docs/ARCHITECTURE.md has a worked
example).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from torch import nn

from . import builders
from .anchor_doctor import (
    Coverage,
    FixedAnchors,
    anchor_coverage,
    fit_grid_shapes,
    fit_ssd_scales,
    fit_yolo_anchors,
    suggest_anchors,
)
from .auto import Choice
from .config import Config, ModelConfig
from .data.records import DetectionSet
from .models import AnchorConfig, FasterRCNN, GridSSD, MobileNetSSD, RetinaNet, ToySSD, YOLOv1, YOLOv3
from .models.backbones import freeze_leading_blocks

__all__ = ["KINDS", "Diagnosis", "Kind", "build_criterion", "build_model", "kind_of", "seen_size"]

Size = tuple[int, int]
# (coverage of the configured anchors, coverage of fitted ones, the overrides that use them)
Diagnosis = tuple[Coverage, Coverage, str]


@dataclass(frozen=True)
class Kind:
    """One kind of network.

    Attributes:
        name: ``model.kind``.
        section: the section of ``model`` its settings are read from (besides ``backbone``).
        build: ``(model config, classes, input size, pretrained) -> network``.
        criterion: ``(config, network) -> criterion`` (its settings are ``config.loss``).
        metric: the validation metric that picks ``best.pt``.
        evaluation: ``"coco"`` (COCO AP of the detections), ``"single"`` (the single-object
            metrics) or ``"multilabel"`` (mAP and F1 of the class scores).
        activation: how its class logits become scores (:func:`multibox.postprocess.class_scores`);
            None: not a detector with anchors (no per-anchor post-processing, no ONNX export).
        fit: what it fits from the training data before training, in place in the config (the
            settings left ``auto``); returns the :class:`~multibox.auto.Choice` s made.
        doctor: its anchor doctor ``(config, dataset, input size) -> Diagnosis``.
        two_stage: a two-stage detector (Faster R-CNN): its forward pass takes the targets in
            training (the regions its second stage learns from are sampled against them) and
            returns a :class:`~multibox.structures.TwoStageOutput`; exported with its NMS, one
            image at a time (:class:`~multibox.export.TwoStageGraph`).
    """

    name: str
    section: str
    build: Callable[[ModelConfig, int, Size, str], nn.Module]
    criterion: Callable[[Config, nn.Module], Callable]
    metric: str = "AP"
    evaluation: str = "coco"
    activation: str | None = None
    fit: Callable[[Config, DetectionSet], list[Choice]] | None = None
    doctor: Callable[[Config, DetectionSet, Size], Diagnosis] | None = None
    two_stage: bool = False

    @property
    def dense(self) -> bool:
        """A detector with anchors: per-anchor outputs, post-processing, ONNX export."""
        return self.activation is not None


# --- fitted from the data ----------------------------------------------------------------------


def _fit_yolo_anchors(config: Config, data: DetectionSet) -> list[Choice]:
    if config.model.yolo.anchors:
        return []
    config.model.yolo.anchors = fit_yolo_anchors(data, config.input.size, config.input.resize)
    return [Choice("model.yolo.anchors", [list(s) for s in config.model.yolo.anchors], "k-means on the training boxes")]


def seen_size(config: Config, data: DetectionSet) -> tuple[Size, str]:
    """The input size and resize at which the network sees the boxes of ``data``: ``input.size``
    for whole images; with tiles, the images' own size scaled from tile to input, no resizing."""
    if not config.input.tile:
        return tuple(config.input.size), config.input.resize
    side = max(max(record.height, record.width) for record in data.records)
    return (round(side * config.input.size[0] / config.input.tile),) * 2, "letterbox"


def _fit_retinanet_anchors(config: Config, data: DetectionSet) -> list[Choice]:
    """Sizes and ratios left ``auto``: the anchor doctor's fit where it covers more boxes at
    ``loss.pos_iou`` than RetinaNet's usual anchors (4 strides, ratios 0.5, 1, 2) do."""
    r = config.model.retinanet
    if r.anchor_sizes is not None and r.anchor_ratios is not None:
        return []
    usual = _usual_anchors(r)
    size, resize = seen_size(config, data)
    fitted = suggest_anchors(data, usual, size, resize, config.loss.pos_iou)
    before, after = (anchor_coverage(data, a, size, resize, config.loss.pos_iou).matched for a in (usual, fitted))
    chosen, other = (fitted, "the usual") if after > before else (usual, "fitted")
    reason = (f"{'fitted' if after > before else 'the usual'}: {max(before, after):.1%} of the boxes have an anchor "
              f"at IoU {config.loss.pos_iou:g} ({min(before, after):.1%} with {other} ones)")  # fmt: skip
    choices = []
    if r.anchor_sizes is None:
        r.anchor_sizes = tuple(chosen.sizes)
        choices.append(Choice("model.retinanet.anchor_sizes", list(chosen.sizes), reason))
    if r.anchor_ratios is None:
        r.anchor_ratios = tuple(chosen.ratios)
        choices.append(Choice("model.retinanet.anchor_ratios", list(chosen.ratios), reason))
    return choices


# --- anchor doctors ----------------------------------------------------------------------------


def _measure(config: Config, data: DetectionSet, size: Size, anchors, second: float | None = None) -> Coverage:
    """Coverage at ``loss.pos_iou`` and at ``second``: the background threshold of a two-threshold
    matcher (RetinaNet; YOLOv3, which assigns by shape, is shown at the same 0.5 and 0.4); for
    the SSD family, whose matcher has one threshold (None), the usual 0.5, or 0.4 beside 0.5."""
    pos = config.loss.pos_iou
    second = second if second is not None else (0.4 if pos == 0.5 else 0.5)
    return anchor_coverage(data, anchors, size, config.input.resize, pos, second)


def _fixed(model: ModelConfig, size: Size, description: str) -> FixedAnchors:
    boxes = build_model(model, 1, "none", size).anchors()
    return FixedAnchors(boxes, size, f"{len(boxes)} {model.kind} anchors at {size[0]}x{size[1]}, {description}")


def _listed(key: str, values: Sequence) -> str:
    return f"{key}=[{', '.join(f'{v:g}' for v in values)}]"


def _usual_anchors(r) -> AnchorConfig:
    """The anchors of a RetinaNet section, its ``auto`` sizes and ratios as RetinaNet's usual ones
    (4 x stride; 0.5, 1, 2)."""
    sizes = tuple(r.anchor_sizes) if r.anchor_sizes is not None else tuple(4.0 * s for s in r.anchor_strides)
    ratios = tuple(r.anchor_ratios) if r.anchor_ratios is not None else (0.5, 1.0, 2.0)
    return AnchorConfig(tuple(r.anchor_strides), sizes, tuple(r.anchor_scales), ratios)


def _pyramid_doctor(
    config: Config, data: DetectionSet, size: Size, section: str, current: AnchorConfig, pos: float, neg: float
) -> Diagnosis:
    """Anchors of one size a pyramid level (RetinaNet's; Faster R-CNN's RPN): ``current`` and
    sizes and ratios fitted to the data, both measured at the matcher's ``pos`` and ``neg``."""
    fitted = suggest_anchors(data, current, size, config.input.resize, pos)
    overrides = _listed(f"model.{section}.anchor_sizes", fitted.sizes) + " "
    overrides += _listed(f"model.{section}.anchor_ratios", fitted.ratios)
    coverage = [anchor_coverage(data, a, size, config.input.resize, pos, neg) for a in (current, fitted)]
    return coverage[0], coverage[1], overrides


def _retinanet_doctor(config: Config, data: DetectionSet, size: Size) -> Diagnosis:
    current = _usual_anchors(config.model.retinanet)
    return _pyramid_doctor(config, data, size, "retinanet", current, config.loss.pos_iou, config.loss.neg_iou)


def _yolo_doctor(config: Config, data: DetectionSet, size: Size) -> Diagnosis:
    m = config.model
    given = "model.yolo.anchors" if m.yolo.anchors else "YOLOv3's COCO shapes scaled (training fits its own)"
    shapes = fit_yolo_anchors(data, size, config.input.resize)
    fitted = dataclasses.replace(m, yolo=dataclasses.replace(m.yolo, anchors=shapes))
    overrides = "model.yolo.anchors=[" + ", ".join(f"[{w:g}, {h:g}]" for w, h in shapes) + "]"
    neg = config.loss.neg_iou
    current = _measure(config, data, size, _fixed(m, size, given), neg)
    return current, _measure(config, data, size, _fixed(fitted, size, "k-means shapes"), neg), overrides


def _faster_rcnn_doctor(config: Config, data: DetectionSet, size: Size) -> Diagnosis:
    """The RPN's anchors, measured at its thresholds (``rpn_pos_iou``, ``rpn_neg_iou``)."""
    f = config.model.faster_rcnn
    current = builders.faster_rcnn_anchors(f)
    return _pyramid_doctor(config, data, size, "faster_rcnn", current, f.rpn_pos_iou, f.rpn_neg_iou)


def _with_grid(model: ModelConfig, zooms, ratios) -> ModelConfig:
    return dataclasses.replace(model, grid=dataclasses.replace(model.grid, zooms=tuple(zooms), ratios=tuple(ratios)))


def _grid_doctor(config: Config, data: DetectionSet, size: Size) -> Diagnosis:
    m = config.model
    network = build_model(m, 1, "none", size)
    ratios = [h / w for h, w in network.ratios]
    current = _measure(config, data, size, _fixed(m, size, f"zooms {list(network.zooms)}, ratios "
                                                           f"{[round(r, 2) for r in ratios]}"))  # fmt: skip

    def anchors_for(zooms, ratios):
        return build_model(_with_grid(m, zooms, ratios), 1, "none", size).anchors()

    zooms, ratios = fit_grid_shapes(data, anchors_for, network.grids, network.zooms, ratios, size,
                                    config.input.resize, config.loss.pos_iou)  # fmt: skip
    fitted = _fixed(_with_grid(m, zooms, ratios), size, f"fitted zooms {list(zooms)}, ratios {list(ratios)}")
    overrides = _listed("model.grid.zooms", zooms) + " " + _listed("model.grid.ratios", ratios)
    return current, _measure(config, data, size, fitted), overrides


def _ssd_doctor(config: Config, data: DetectionSet, size: Size) -> Diagnosis:
    m = config.model

    def with_scales(scales) -> ModelConfig:
        return dataclasses.replace(m, ssd=dataclasses.replace(m.ssd, scales=tuple(scales)))

    described = f"scales {list(m.ssd.scales)}" if m.ssd.scales else "the preset's geometry"
    current = _measure(config, data, size, _fixed(m, size, described))
    levels = len(build_model(m, 1, "none", size).level_sizes())
    scales = fit_ssd_scales(data, lambda s: build_model(with_scales(s), 1, "none", size).anchors(), levels, size,
                            config.input.resize, config.loss.pos_iou)  # fmt: skip
    fitted = _fixed(with_scales(scales), size, f"fitted scales {list(scales)}")
    return current, _measure(config, data, size, fitted), _listed("model.ssd.scales", scales)


# --- the table ---------------------------------------------------------------------------------


def _single_kind(name: str, metric: str, evaluation: str = "single") -> Kind:
    return Kind(name, "single", builders.single, builders.single_criterion, metric, evaluation)


def _grid_kind(name: str, build: Callable) -> Kind:
    return Kind(name, "grid", build, builders.ssd_criterion, activation=GridSSD.activation, doctor=_grid_doctor)


def _ssd_kind(name: str, build: Callable, network: type) -> Kind:
    return Kind(name, "ssd", build, builders.ssd_criterion, activation=network.activation, doctor=_ssd_doctor)


KINDS: dict[str, Kind] = {
    "retinanet": Kind(
        "retinanet",
        "retinanet",
        builders.retinanet,
        builders.retinanet_criterion,
        activation=RetinaNet.activation,
        fit=_fit_retinanet_anchors,
        doctor=_retinanet_doctor,
    ),
    "largest_cls": _single_kind("largest_cls", "accuracy"),
    "largest_box": _single_kind("largest_box", "IoU"),
    "single_object": _single_kind("single_object", "AP"),
    "multilabel": _single_kind("multilabel", "mAP", "multilabel"),
    "ssd_grid": _grid_kind("ssd_grid", partial(builders.grid, shapes=builders.ONE_GRID)),
    "ssd_multihead": _grid_kind("ssd_multihead", builders.grid),
    "toyssd": _ssd_kind("toyssd", builders.toyssd, ToySSD),
    "ssd300": _ssd_kind("ssd300", builders.mobilenet_ssd, MobileNetSSD),
    "ssdlite": _ssd_kind("ssdlite", partial(builders.mobilenet_ssd, lite=True), MobileNetSSD),
    "yolov1": Kind("yolov1", "yolov1", builders.yolov1, builders.yolov1_criterion, activation=YOLOv1.activation),
    "faster_rcnn": Kind(
        "faster_rcnn",
        "faster_rcnn",
        builders.faster_rcnn,
        builders.faster_rcnn_criterion,
        activation=FasterRCNN.activation,
        doctor=_faster_rcnn_doctor,
        two_stage=True,
    ),
    "yolov3": Kind(
        "yolov3",
        "yolo",
        builders.yolo,
        builders.yolo_criterion,
        activation=YOLOv3.activation,
        fit=_fit_yolo_anchors,
        doctor=_yolo_doctor,
    ),
}


def kind_of(config: ModelConfig | Config) -> Kind:
    """The :class:`Kind` of a configuration's ``model.kind``, or an error listing the kinds."""
    name = (config.model if isinstance(config, Config) else config).kind
    if name not in KINDS:
        raise ValueError(f"model.kind must be one of {tuple(KINDS)}, got {name!r}")
    return KINDS[name]


def build_model(
    config: ModelConfig, num_classes: int, pretrained: str | None = None, image_size: Sequence[int] = (512, 512)
) -> nn.Module:
    """The network a :class:`ModelConfig` describes for inputs of ``image_size`` (the networks
    built for one input size, the single-object heads and the SSD family, need it), with
    ``config.backbone.frozen_blocks`` MobileNetV2 blocks frozen (see :func:`freeze_leading_blocks`)."""
    size = (int(image_size[0]), int(image_size[1]))
    model = kind_of(config).build(config, num_classes, size, pretrained or config.backbone.pretrained)
    frozen = config.backbone.frozen_blocks
    return freeze_leading_blocks(model, frozen) if frozen else model


def build_criterion(config: Config, model: nn.Module) -> Callable:
    """The training loss of ``config.model.kind``: ``criterion(output, anchors, targets)`` for the
    detectors with anchors, ``criterion(output, targets)`` for the single-object steps."""
    return kind_of(config).criterion(config, model)
