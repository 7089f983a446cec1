"""Models: backbones, the feature pyramid, heads, RetinaNet and the single-object networks."""

from .backbones import BACKBONES, build_backbone
from .detectors import AnchorConfig, RetinaNet
from .heads import RetinaNetHead
from .necks import FeatureExtractor, retinanet_fpn
from .single import SINGLE_TASKS, SingleObjectNet, SingleOutput

__all__ = [
    "BACKBONES",
    "SINGLE_TASKS",
    "AnchorConfig",
    "FeatureExtractor",
    "RetinaNet",
    "RetinaNetHead",
    "SingleObjectNet",
    "SingleOutput",
    "build_backbone",
    "retinanet_fpn",
]
