"""Models: backbones, the feature pyramid, heads and detectors."""

from .backbones import BACKBONES, build_backbone
from .detectors import AnchorConfig, RetinaNet
from .heads import RetinaNetHead
from .necks import FeatureExtractor, retinanet_fpn

__all__ = [
    "BACKBONES",
    "AnchorConfig",
    "FeatureExtractor",
    "RetinaNet",
    "RetinaNetHead",
    "build_backbone",
    "retinanet_fpn",
]
