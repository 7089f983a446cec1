"""Run configuration: typed dataclasses, loaded from YAML with unknown keys rejected.

Each field is one constructor argument somewhere (data loading, model, training); defaults
are defined here once. ``key=value`` overrides (``train.lr=0.02``, ``model.backbone=resnet18``)
apply on top of a YAML file; values are parsed as YAML (``[1, 2]``, ``true``, ``1e-3``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "PRESETS",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "preset",
]


class ConfigError(ValueError):
    """A configuration key or value that does not fit; the message suggests the right one."""


@dataclass
class DataConfig:
    """Where the data is and how it is read (see :func:`multibox.data.load_dataset`); a non-empty
    ``one_class`` makes every box that one class (class-agnostic detection)."""

    path: str = "data/digits"
    format: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    policy: str = "error"
    one_class: str = ""


@dataclass
class ModelConfig:
    """The network: ``kind`` ``retinanet`` (see :class:`multibox.models.RetinaNet`); one of the
    single-object steps ``largest_cls``, ``largest_box``, ``single_object``, ``multilabel`` (see
    :class:`multibox.models.SingleObjectNet`; they use the backbone settings, ``hidden`` and
    ``dropout``); or one of the SSD family ``ssd_grid``, ``ssd_multihead`` (see
    :class:`multibox.models.GridSSD`: backbone settings, ``hidden`` as the head's width,
    ``dropout``, and the anchors of each cell: ``grid_zooms``, their longer side in cells, and
    ``grid_ratios``, their height / width; empty: the course's, 0.7, 1, 1.3 and 1, 2, 0.5 for
    ``ssd_multihead``, 1 and 1 for ``ssd_grid``; and ``grid_from``, what the head reads: ``c5``,
    the course's, or ``p4``, C5 merged into C4 at stride 16; ``grid_align``, that map resized to
    the side the stride-2 convs halve exactly, so that each grid cell's features are placed alike
    on its anchors), ``toyssd`` (:class:`multibox.models.ToySSD`,
    no settings), ``ssd300``, ``ssdlite`` (:class:`multibox.models.MobileNetSSD`: backbone
    settings). The ``anchor_*`` settings are RetinaNet's; the SSD family's anchors follow from
    the input size and, for ``toyssd``, ``ssd300`` and ``ssdlite``, from ``ssd_scales`` (empty:
    the paper's). ``yolov3``
    (:class:`multibox.models.YOLOv3`): backbone settings, ``fpn_channels`` as the neck's width at
    stride 8, ``spp``, and ``yolo_anchors``, nine ``[w, h]`` in input pixels (empty: fitted to the
    training boxes by k-means when training starts, then saved with the run)."""

    kind: str = "retinanet"
    backbone: str = "mobilenet_v2"
    pretrained: str = "imagenet"
    fpn_channels: int = 256
    head_convs: int = 4
    group_norm: bool = False
    separable_head: bool = False
    separable_predictors: bool = False
    separable_fpn: bool = False
    p6_from: str = "c5"
    frozen_bn: bool = True
    trainable_stages: int = 3
    frozen_blocks: int = 0
    anchor_strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    anchor_sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
    anchor_scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    hidden: int = 256
    dropout: float = 0.5
    ssd_scales: tuple[float, ...] = ()
    grid_zooms: tuple[float, ...] = ()
    grid_ratios: tuple[float, ...] = ()
    grid_from: str = "c5"
    grid_align: bool = False
    yolo_anchors: tuple[tuple[float, float], ...] = ()
    spp: bool = False


@dataclass
class TrainConfig:
    """The schedule, augmentation, loss and evaluation settings of a run.

    ``precompute`` (CPU, MobileNetV2, no augmentation): the outputs of the backbone's frozen
    leading blocks (up to C3) are computed once per image and kept in memory (at most 4 GiB),
    as the course's ``precompute=True``; later epochs and evaluations skip those blocks.
    """

    image_size: tuple[int, int] = (512, 512)
    augment: str = "flip"
    resize: str = "squish"
    rotate: bool = False
    hflip: float = 0.5
    epochs: int = 12
    batch_size: int = 8
    workers: int = 0
    optimizer: str = "sgd"
    lr: float = 0.01
    backbone_lr_mult: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_steps: int = 100
    milestones: tuple[float, ...] = (0.67, 0.89)
    clip_grad: float = 10.0
    max_bad_steps: int = 5
    box_loss: str = "l1"
    box_weight: float = 1.0
    cls_loss: str = "focal"
    neg_pos_ratio: float = 3.0
    cls_weight: float = 20.0
    obj_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    pos_iou: float = 0.5
    neg_iou: float = 0.4
    soft_targets: bool = False
    score_thresh: float = 0.05
    topk: int = 1000
    nms_iou: float = 0.5
    max_det: int = 100
    eval_every: int = 1
    checkpoint_every: int = 0
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    precompute: bool = False
    ema_decay: float = 0.0
    max_steps: int = 0
    sync_bn: bool = False


@dataclass
class Config:
    """A whole run: data, model, training, and the folder its outputs go to."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: str = "runs/exp"

    def to_dict(self) -> dict:
        """Plain types only (lists for tuples), fit for YAML and for ``torch.load(weights_only=True)``."""
        return _plain(asdict(self))

    def save(self, path: str | Path) -> None:
        """Write the resolved configuration as YAML (atomically)."""
        from .data.io import atomic_write_text

        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


# Named recipes (``--config NAME``); ``configs/NAME.yaml`` holds the same settings (tested).
PRESETS: dict[str, dict] = {
    # Lin et al. 2017 / detectron2's RetinaNet-R50-FPN "1x": 90k steps of 16 images on COCO
    # (12 epochs), steps at 2/3 and 8/9, shorter side 800, flips only.
    "retinanet_r50_fpn": {
        "data": {"path": "data/coco"},
        "model": {
            "backbone": "resnet50",
            "fpn_channels": 256,
            "head_convs": 4,
            "p6_from": "c5",
            "trainable_stages": 3,
            "anchor_strides": [8, 16, 32, 64, 128],
            "anchor_sizes": [32, 64, 128, 256, 512],
        },
        "train": {
            "image_size": [800, 1333],
            "resize": "minmax",
            "augment": "flip",
            "epochs": 12,
            "batch_size": 16,
            "optimizer": "sgd",
            "lr": 0.01,
            "schedule": "step",
            "milestones": [0.667, 0.889],
            "warmup_steps": 500,
            "clip_grad": 0.0,
            "box_loss": "l1",
        },
        "output": "runs/retinanet_r50_fpn",
    },
    # The default CPU recipe, designed on the digit scenes (make demo) on a 2-core machine:
    # see configs/cpu_digits.yaml for the reasons behind each setting.
    "cpu_digits": {
        "data": {"path": "data/digits"},
        "model": {
            "backbone": "mobilenet_v2",
            "pretrained": "imagenet",
            "fpn_channels": 64,
            "head_convs": 2,
            "separable_head": True,
            "group_norm": True,
            "trainable_stages": 3,
            "frozen_blocks": 5,
            "anchor_strides": [8, 16, 32],
            "anchor_sizes": [12, 32, 80],
            "anchor_ratios": [1.0, 1.5, 2.5],
        },
        "train": {
            "image_size": [256, 256],
            "augment": "none",
            "hflip": 0.0,
            "epochs": 3,
            "batch_size": 8,
            "optimizer": "adamw",
            "lr": 0.003,
            "backbone_lr_mult": 0.1,
            "warmup_steps": 200,
            "schedule": "cosine",
        },
        "output": "runs/cpu_digits",
    },
}


def _single_object_preset(kind: str, **train) -> dict:
    """The course's single-object steps on the digit scenes: MobileNetV2 (ImageNet, offline) at
    224x224 as the course's ResNet-34, its stride-8 stage up trained at a tenth of the head's rate."""
    return {
        "data": {"path": "data/digits"},
        "model": {"kind": kind, "backbone": "mobilenet_v2", "pretrained": "imagenet", "trainable_stages": 3},
        "train": {
            "image_size": [224, 224],
            "augment": "none",
            "hflip": 0.0,
            "epochs": 2,
            "batch_size": 16,
            "optimizer": "adamw",
            "lr": 0.001,
            "backbone_lr_mult": 0.1,
            "warmup_steps": 50,
            "schedule": "cosine",
            **train,
        },
        "output": f"runs/{kind}",
    }


PRESETS["largest_cls"] = _single_object_preset("largest_cls")
PRESETS["largest_box"] = _single_object_preset("largest_box")
PRESETS["single_object"] = _single_object_preset("single_object", cls_weight=20.0)
PRESETS["multilabel"] = _single_object_preset("multilabel", score_thresh=0.5)


def _ssd_preset(kind: str, image_size: int, model: dict | None = None, **train) -> dict:
    """The course's multibox steps on the digit scenes: the backbone and schedule of the
    single-object steps (MobileNetV2, ImageNet, offline), at the input size the network is built for."""
    recipe = _single_object_preset(
        kind, **{"image_size": [image_size, image_size], "epochs": 3, "batch_size": 8, **train}
    )
    recipe["model"].update(model or {})
    return recipe


# fastai's SSD head on a 4x4 grid, one anchor per cell: BCE without the background column, L1 on
# the tanh-bounded boxes (the course's actn_to_bb), the course's 0.4 match threshold; batches of 32
# keep the head's BatchNorm statistics steady on the 2x2 and 1x1 grids
_GRID = {"batch_size": 32, "lr": 0.003, "warmup_steps": 30, "pos_iou": 0.4, "box_loss": "l1_boxes"}
PRESETS["ssd_grid"] = _ssd_preset("ssd_grid", 256, {"hidden": 256, "dropout": 0.1}, cls_loss="bce", **_GRID)
# 4x4, 2x2 and 1x1 grids, 3 zooms x 3 ratios per cell at the scenes' 256x256, read from C5 merged
# into C4 (P4, 16x16: each cell sees its anchors alike; grid_align resizes it at other sizes); BCE
# (train.cls_loss=focal is the option) against soft targets; a match threshold of 0.15, as the
# digits are far smaller than the anchors; the frozen blocks computed once per scene, 8 epochs
# (configs/ssd_multihead.yaml)
PRESETS["ssd_multihead"] = _ssd_preset(
    "ssd_multihead",
    256,
    {"hidden": 128, "dropout": 0.1, "grid_from": "p4", "grid_align": True, "frozen_blocks": 7},
    cls_loss="bce",
    **{**_GRID, "pos_iou": 0.15, "soft_targets": True, "epochs": 8, "batch_size": 16, "precompute": True},
)

# d2l.ai's toy SSD, from scratch, on the scenes with every digit one class "digit" (as the
# tutorial's pikachu): softmax focal loss, smooth L1 on SSD offsets, SGD with weight decay 5e-4.
# See configs/toyssd.yaml for the input size, scales and rate chosen for a 10-minute CPU budget.
PRESETS["toyssd"] = {
    "data": {"path": "data/digits", "one_class": "digit"},
    "model": {"kind": "toyssd", "pretrained": "none", "ssd_scales": [0.06, 0.14, 0.3, 0.5, 0.75, 1.0]},
    "train": {
        "image_size": [192, 192],
        "augment": "none",
        "hflip": 0.0,
        "epochs": 2,
        "batch_size": 32,
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "warmup_steps": 100,
        "schedule": "cosine",
        "cls_loss": "softmax_focal",
        "box_loss": "smooth_l1",
    },
    "output": "runs/toyssd",
}
# SSD300's geometry and SSDLite's separable layers on MobileNetV2: softmax cross-entropy with 3:1
# hard negative mining, smooth L1 on SSD offsets, the ssd augmentation (without flips)
_SSD_TRAIN = {"augment": "ssd", "cls_loss": "softmax", "box_loss": "smooth_l1", "lr": 0.003, "epochs": 2}
PRESETS["ssd300"] = _ssd_preset("ssd300", 300, **_SSD_TRAIN)
PRESETS["ssdlite"] = _ssd_preset("ssdlite", 320, **_SSD_TRAIN)

# YOLOv3's neck and heads on MobileNetV2 (ImageNet, offline) at 256x256 with SPP, anchors fitted by
# k-means when training starts, CIoU, the mosaic augmentation; YOLOv5's loss weights with obj
# scaled by (256 / 640)^2 as YOLOv5 scales it, box and cls raised for two epochs (configs/yolov3.yaml)
PRESETS["yolov3"] = _ssd_preset(
    "yolov3",
    256,
    {"fpn_channels": 32, "spp": True},
    augment="mosaic",
    epochs=2,
    batch_size=16,
    lr=0.003,
    box_loss="ciou",
    box_weight=0.2,
    obj_weight=0.16,
    cls_weight=1.0,
)


def preset(name: str) -> Config:
    """The named recipe of :data:`PRESETS` as a :class:`Config`."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown preset '{name}'; {hint}presets: {', '.join(PRESETS)}")
    return config_from_dict(PRESETS[name], f"preset '{name}'")


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _section_types() -> dict[str, type]:
    return {f.name: f.default_factory for f in fields(Config) if f.default_factory is not dataclasses.MISSING}


def _check_key(key: str, known: list[str], where: str) -> None:
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
        raise ConfigError(f"unknown key '{key}' in {where}{hint}")


def _coerce(value: Any, default: Any, where: str) -> Any:
    """``value`` in the type of the field's default, or a ConfigError naming the field."""
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(tuple(v) if isinstance(v, list | tuple) else v for v in value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(default, int):
            if not float(value).is_integer():
                raise ConfigError(f"{where} must be a whole number, got {value!r}")
            return int(value)
        return float(value)
    return None if value is None else str(value)


def _apply(config: Config, data: dict, where: str) -> None:
    sections = _section_types()
    for key, value in data.items():
        _check_key(key, [*sections, "output"], where)
        if key == "output":
            config.output = str(value)
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' in {where} must be a mapping of settings")
        section = getattr(config, key)
        names = [f.name for f in fields(section)]
        for name, item in value.items():
            _check_key(name, names, f"{where} section '{key}'")
            setattr(section, name, _coerce(item, getattr(section, name), f"{key}.{name}"))


def config_from_dict(data: dict, where: str = "a configuration") -> Config:
    """The defaults updated by a nested dict (``Config.to_dict()``'s shape), with the same key checks as YAML."""
    config = Config()
    _apply(config, data, where)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The defaults, updated by the YAML file at ``path`` (or the preset of that name) and then by
    ``key=value`` overrides."""
    config = Config()
    if path is not None and str(path) in PRESETS and not Path(path).is_file():
        config = preset(str(path))
    elif path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            close = difflib.get_close_matches(path.stem, list(PRESETS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{path}: configuration file not found (presets: {', '.join(PRESETS)}){hint}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a configuration is a mapping of sections (data, model, train, output)")
        _apply(config, data, str(path))
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ConfigError(f"override '{override}' must look like section.key=value, e.g. train.lr=0.02")
        value = yaml.safe_load(raw)
        parts = key.strip().split(".")
        nested: dict = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            nested = {part: nested}
        _apply(config, nested, f"override '{override}'")
    return config
