"""Keys of the configuration's earlier flat layout and where they live now: old recipes,
overrides and checkpoints are read through :func:`translate` (``multibox.config`` does)."""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["LEGACY_KEYS", "translate"]

# Keys of the flat layout before the input, detect, loss and per-family model sections, and
# where they live now: a key may feed two places, as it fed two networks then.
_LOSS_KEYS = ("cls_weight", "box_weight", "obj_weight", "focal_alpha", "focal_gamma", "pos_iou", "neg_iou",
              "neg_pos_ratio", "soft_targets")  # fmt: skip
_BACKBONE_KEYS = ("pretrained", "frozen_bn", "trainable_stages", "frozen_blocks")
_RETINANET_KEYS = ("head_convs", "group_norm", "separable_head", "separable_predictors", "separable_fpn", "p6_from",
                   "anchor_strides", "anchor_sizes", "anchor_scales", "anchor_ratios")  # fmt: skip
LEGACY_KEYS: dict[str, tuple[str, ...]] = {
    "train.image_size": ("input.size",),
    "train.resize": ("input.resize",),
    **{f"train.{k}": (f"detect.{k}",) for k in ("score_thresh", "topk", "nms_iou", "max_det")},
    "train.cls_loss": ("loss.cls",),
    "train.box_loss": ("loss.box",),
    **{f"train.{k}": (f"loss.{k}",) for k in _LOSS_KEYS},
    "model.backbone": ("model.backbone.name",),
    **{f"model.{k}": (f"model.backbone.{k}",) for k in _BACKBONE_KEYS},
    "model.fpn_channels": ("model.retinanet.fpn_channels", "model.yolo.width"),
    **{f"model.{k}": (f"model.retinanet.{k}",) for k in _RETINANET_KEYS},
    "model.hidden": ("model.single.hidden", "model.grid.width"),
    "model.dropout": ("model.single.dropout", "model.grid.dropout"),
    "model.grid_zooms": ("model.grid.zooms",),
    "model.grid_ratios": ("model.grid.ratios",),
    "model.grid_from": ("model.grid.source",),
    "model.grid_align": ("model.grid.align",),
    "model.ssd_scales": ("model.ssd.scales",),
    "model.yolo_anchors": ("model.yolo.anchors",),
    "model.spp": ("model.yolo.spp",),
}


def translate(data: dict) -> dict:
    """``data`` with the keys of :data:`LEGACY_KEYS` moved to where they live now."""
    data = copy.deepcopy(data)
    moved: list[tuple[str, Any]] = []
    for old in LEGACY_KEYS:
        section, key = old.split(".")
        values = data.get(section)
        if isinstance(values, dict) and key in values and not (key == "backbone" and isinstance(values[key], dict)):
            moved.append((old, values.pop(key)))
    for old, value in moved:
        for new in LEGACY_KEYS[old]:
            *parents, key = new.split(".")
            node = data
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = value
    return data
