"""Run configuration: typed dataclasses, loaded from YAML with unknown keys rejected.

A run has six sections: ``data`` (where the images are), ``input`` (what the network sees:
size, resize, normalisation), ``model`` (the kind, its backbone and one subsection per family
of networks), ``loss`` (the criterion's settings), ``train`` (schedule, optimiser,
augmentation, runtime) and ``detect`` (post-processing). Each field is one constructor
argument somewhere; defaults are defined here once. ``key=value`` overrides
(``train.lr=0.02``, ``model.backbone.name=resnet18``) apply on top of a YAML file or a preset;
values are parsed as YAML (``[1, 2]``, ``true``, ``1e-3``).

The presets are the YAML files of ``multibox/configs`` (``--config cpu_digits``). Keys of the
earlier flat layout (``train.image_size``, ``train.score_thresh``, ``model.fpn_channels``, ...)
are still read, so old checkpoints and recipes load: see :data:`LEGACY_KEYS`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .config_model import (
    BackboneConfig,
    FasterRCNNConfig,
    GridConfig,
    ModelConfig,
    RetinaNetConfig,
    SingleConfig,
    SSDConfig,
    YOLOConfig,
    YOLOv1Config,
)
from .legacy_keys import LEGACY_KEYS
from .legacy_keys import translate as _translate

__all__ = [
    "AUTO_KEYS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LEGACY_KEYS",
    "PRESETS",
    "PRESET_DIR",
    "BackboneConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DetectConfig",
    "FasterRCNNConfig",
    "GridConfig",
    "InputConfig",
    "LossConfig",
    "ModelConfig",
    "RetinaNetConfig",
    "SSDConfig",
    "SingleConfig",
    "TrainConfig",
    "YOLOConfig",
    "YOLOv1Config",
    "config_from_dict",
    "load_config",
    "preset",
]

PRESET_DIR = Path(__file__).parent / "configs"
# ImageNet's channel statistics, which the pretrained backbones expect (input.mean, input.std)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ValueError):
    """A configuration key or value that does not fit; the message suggests the right one."""


@dataclass
class DataConfig:
    """Where the data is and how it is read (see :func:`multibox.data.load_dataset`); a non-empty
    ``one_class`` makes every box that one class (class-agnostic detection); ``chiral``: the
    objects' mirror images are not objects of their class (digits, text), so no flips."""

    path: str = "data/digits"
    format: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    policy: str = "error"
    one_class: str = ""
    chiral: bool = False


@dataclass
class InputConfig:
    """What the network sees (:class:`multibox.data.preprocess.Preprocess`): ``size`` ``(height,
    width)``; ``resize`` ``squish``, ``letterbox`` or ``minmax`` (shorter side to ``min(size)``,
    longer at most ``max(size)``); pixels normalised by ``mean`` and ``std`` (of 0..1 values);
    ``tile``: the network sees ``tile x tile`` windows of the image at its own resolution
    (random ones in training, overlapping ones in evaluation and prediction), 0 the whole image."""

    size: tuple[int, int] | None = (512, 512)
    resize: str = "squish"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    tile: int | None = 0


@dataclass
class DetectConfig:
    """Post-processing (:func:`multibox.postprocess.postprocess`): score threshold, candidates per
    level, NMS IoU, detections per image."""

    score_thresh: float = 0.05
    topk: int = 1000
    nms_iou: float = 0.5
    max_det: int = 100


@dataclass
class LossConfig:
    """The criterion: class loss ``cls`` (``focal``, ``bce``, ``softmax``, ``softmax_focal``), box
    loss ``box`` (``l1``, ``smooth_l1``, ``l1_boxes``, ``giou``, ``diou``, ``ciou``), their
    weights, focal parameters, the matcher's thresholds, SSD's negatives per positive,
    ``soft_targets`` (the SSD family's BCE against each positive's relative anchor IoU), and
    RetinaNet's ``assigner``: ``iou`` (``pos_iou`` / ``neg_iou``) or ``atss`` (each object's
    threshold from its ``atss_k`` nearest anchors per level, :func:`multibox.matching.match_atss`)."""

    cls: str = "focal"
    box: str = "l1"
    cls_weight: float = 20.0
    box_weight: float = 1.0
    obj_weight: float = 1.0
    noobj_weight: float = 0.5
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    pos_iou: float = 0.5
    neg_iou: float = 0.4
    neg_pos_ratio: float = 3.0
    soft_targets: bool = False
    assigner: str = "iou"
    atss_k: int = 9


@dataclass
class TrainConfig:
    """The schedule, optimiser, augmentation and runtime of a run.

    ``precompute`` (CPU, MobileNetV2, no augmentation): the outputs of the backbone's frozen
    leading blocks (up to C3) are computed once per image and kept in memory (at most 4 GiB),
    as the course's ``precompute=True``; later epochs and evaluations skip those blocks.
    ``time_budget`` (minutes): with ``epochs: auto``, as many epochs as a few timed steps say fit.
    """

    augment: str | None = "flip"
    rotate: bool = False
    hflip: float | None = 0.5
    epochs: int | None = 12
    time_budget: float = 0.0
    batch_size: int = 8
    workers: int = 0
    optimizer: str = "sgd"
    lr: float = 0.01
    backbone_lr_mult: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_steps: int | None = 100
    milestones: tuple[float, ...] = (0.67, 0.89)
    clip_grad: float = 10.0
    max_bad_steps: int = 5
    eval_every: int | None = 1
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
    """A whole run, and the folder its outputs go to."""

    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    output: str = "runs/exp"

    def to_dict(self) -> dict:
        """Plain types only (lists for tuples), fit for YAML and for ``torch.load(weights_only=True)``."""
        return _plain(asdict(self))

    def to_yaml(self) -> str:
        """The resolved configuration as YAML, sections in order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _presets() -> dict[str, dict]:
    recipes = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        recipes[path.stem] = yaml.safe_load(path.read_text()) or {}
    return recipes


# Named recipes (``--config NAME``): the YAML files of multibox/configs, read once
PRESETS: dict[str, dict] = _presets()


def preset(name: str) -> Config:
    """The named recipe of :data:`PRESETS` (``multibox/configs/NAME.yaml``) as a :class:`Config`."""
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


def _check_key(key: str, known: list[str], where: str) -> None:
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
        raise ConfigError(f"unknown key '{key}' in {where}{hint}")


# Settings a recipe may leave to the data ("auto", None): ``multibox.auto`` decides them from
# the training split when training starts, and the run's config.yaml holds what it decided
AUTO_KEYS = frozenset({
    "input.size", "input.tile", "model.retinanet.anchor_sizes", "model.retinanet.anchor_ratios", "train.augment",
    "train.hflip", "train.epochs", "train.warmup_steps", "train.eval_every",
})  # fmt: skip


# The numbers a setting may take, (lowest, highest) with None for no bound: a run that could
# only do nothing (train.epochs=0) or a threshold no score reaches is refused when it is read
RANGES: dict[str, tuple[float | None, float | None]] = {
    "train.epochs": (1, None), "train.batch_size": (1, None), "train.lr": (1e-12, None),
    "train.time_budget": (0, None), "train.warmup_steps": (0, None), "train.eval_every": (1, None),
    "train.checkpoint_every": (0, None), "train.max_steps": (0, None), "train.max_bad_steps": (0, None),
    "train.workers": (0, None), "train.hflip": (0, 1), "train.ema_decay": (0, 0.999999), "train.momentum": (0, 1),
    "train.weight_decay": (0, None), "train.clip_grad": (0, None), "input.tile": (0, None),
    "model.yolov1.grid": (1, None), "model.yolov1.boxes": (1, None), "detect.score_thresh": (0, 1),
    "detect.nms_iou": (0, 1), "detect.topk": (1, None), "detect.max_det": (1, None),
    "model.faster_rcnn.rpn_batch": (1, None), "model.faster_rcnn.roi_batch": (1, None),
    "model.faster_rcnn.rpn_positive_fraction": (0, 1), "model.faster_rcnn.roi_positive_fraction": (0, 1),
    "model.faster_rcnn.rpn_pos_iou": (0, 1), "model.faster_rcnn.rpn_neg_iou": (0, 1),
    "model.faster_rcnn.rpn_nms_iou": (0, 1), "model.faster_rcnn.roi_pos_iou": (0, 1),
    "model.faster_rcnn.roi_size": (1, None), "model.faster_rcnn.representation": (1, None),
}  # fmt: skip


def _in_range(value: Any, where: str) -> Any:
    low, high = RANGES.get(where, (None, None))
    if value is None or (low is None and high is None):
        return value
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise ConfigError(f"{where} must be {bounds}, got {value!r}")
    return value


def _coerce(value: Any, default: Any, where: str) -> Any:
    """``value`` in the type of the field's default, or a ConfigError naming the field."""
    if where in AUTO_KEYS and value in (None, "auto"):
        return None
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


def _apply(target, data: dict, where: str, prefix: str = "") -> None:
    """Set the fields of the dataclass ``target`` from the nested dict ``data``."""
    names = [f.name for f in fields(target)]
    for key, value in data.items():
        _check_key(key, names, f"{where} section '{prefix}'" if prefix else where)
        current = getattr(target, key)
        name = f"{prefix}.{key}" if prefix else key
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"'{name}' in {where} must be a mapping of settings")
            _apply(current, value, where, name)
        else:
            setattr(target, key, _in_range(_coerce(value, _default(target, key), name), name))


def _default(target, key: str) -> Any:
    """The default of a dataclass field: the type an override must have (the current value may be auto)."""
    spec = next(f for f in fields(target) if f.name == key)
    return spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()


def config_from_dict(data: dict, where: str = "a configuration") -> Config:
    """The defaults updated by a nested dict (``Config.to_dict()``'s shape, or the flat layout of
    earlier versions), with the same key checks as YAML."""
    config = Config()
    _apply(config, _translate(data), where)
    return config


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: Config | None = None
) -> Config:
    """The defaults (or a copy of ``base``), updated by the YAML file at ``path`` (or the preset of
    that name) and then by ``key=value`` overrides."""
    config = copy.deepcopy(base) if base is not None else Config()
    if path is not None and str(path) in PRESETS and not Path(path).is_file():
        config = preset(str(path))
    elif path is not None:
        _apply(config, _translate(_read_yaml(Path(path))), str(path))
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ConfigError(f"override '{override}' must look like section.key=value, e.g. train.lr=0.02")
        nested: dict = {}
        node = nested
        *parents, last = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(raw)
        _apply(config, _translate(nested), f"override '{override}'")
    return config


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        close = difflib.get_close_matches(path.stem, list(PRESETS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{path}: configuration file not found (presets: {', '.join(PRESETS)}){hint}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a configuration is a mapping of sections (data, input, model, ..., output)")
    return data
