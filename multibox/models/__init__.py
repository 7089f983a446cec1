"""Models: backbones, the feature pyramid, heads, RetinaNet, the single-object networks and the SSD family."""

from .backbones import BACKBONES, build_backbone
from .detectors import AnchorConfig, RetinaNet
from .heads import RetinaNetHead
from .necks import FeatureExtractor, retinanet_fpn
from .single import SINGLE_TASKS, SingleObjectNet, SingleOutput
from .ssd import SSD_KINDS, GridSSD, MobileNetSSD, ToySSD

__all__ = [
    "BACKBONES",
    "SINGLE_TASKS",
    "SSD_KINDS",
    "AnchorConfig",
    "FeatureExtractor",
    "GridSSD",
    "MobileNetSSD",
    "RetinaNet",
    "RetinaNetHead",
    "SingleObjectNet",
    "SingleOutput",
    "ToySSD",
    "build_backbone",
    "retinanet_fpn",
]
