"""Models: backbones, the feature pyramid, heads, RetinaNet, the single-object networks, the SSD
family, YOLOv1, YOLOv3, Faster R-CNN."""

from .backbones import BACKBONES, build_backbone
from .detectors import DenseDetector
from .faster_rcnn import FasterRCNN, ProposalConfig, RoIConfig, build_faster_rcnn
from .heads import RetinaNetHead
from .necks import FeatureExtractor, retinanet_fpn
from .retinanet import AnchorConfig, RetinaNet, build_retinanet
from .single import SINGLE_TASKS, SingleObjectNet, SingleOutput
from .ssd import SSD_KINDS, GridSSD, MobileNetSSD, ToySSD
from .yolo import YOLOv3
from .yolov1 import YOLOv1

__all__ = [
    "BACKBONES",
    "SINGLE_TASKS",
    "SSD_KINDS",
    "AnchorConfig",
    "DenseDetector",
    "FasterRCNN",
    "FeatureExtractor",
    "GridSSD",
    "MobileNetSSD",
    "ProposalConfig",
    "RetinaNet",
    "RetinaNetHead",
    "RoIConfig",
    "SingleObjectNet",
    "SingleOutput",
    "ToySSD",
    "YOLOv1",
    "YOLOv3",
    "build_backbone",
    "build_faster_rcnn",
    "build_retinanet",
    "retinanet_fpn",
]
