"""The course's single-object steps: one answer per image from a backbone's last feature map.

``largest_cls`` classifies the largest object (pooled linear head); ``largest_box`` regresses
its box from the flattened feature map (no pooling: where things are must survive);
``single_object`` does both in one head of ``4 + C`` outputs; ``multilabel`` scores every
class for presence. The box is ``sigmoid(x) * (W, H, W, H)``: xyxy input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..structures import Detections
from .backbones import build_backbone

__all__ = ["SINGLE_TASKS", "SingleObjectNet", "SingleOutput"]

SINGLE_TASKS = ("largest_cls", "largest_box", "single_object", "multilabel")


class SingleOutput(NamedTuple):
    """One answer per image: ``cls_logits [B, C]`` (``None`` for ``largest_box``) and ``boxes
    [B, 4]`` xyxy input pixels (``None`` for ``largest_cls`` and ``multilabel``)."""

    cls_logits: Tensor | None
    boxes: Tensor | None


class SingleObjectNet(nn.Module):
    """A backbone's C5 and a head for one of :data:`SINGLE_TASKS`.

    Args:
        num_classes: ``C``.
        task: which step of the course.
        image_size: ``(height, width)`` of the input; the flattening heads depend on it.
        backbone, pretrained, frozen_bn, trainable_stages: see :func:`build_backbone`.
        hidden: width of ``single_object``'s hidden layer.
        dropout: dropout of ``single_object``'s head.
    """

    def __init__(
        self,
        num_classes: int,
        task: str,
        image_size: Sequence[int],
        backbone: str = "resnet34",
        pretrained: str = "imagenet",
        frozen_bn: bool = True,
        trainable_stages: int = 3,
        hidden: int = 256,
        dropout: float = 0.5,
    ):
        super().__init__()
        if task not in SINGLE_TASKS:
            raise ValueError(f"task must be one of {SINGLE_TASKS}, got {task!r}")
        self.task, self.num_classes = task, num_classes
        self.image_size = (int(image_size[0]), int(image_size[1]))
        # named as RetinaNet's (backbone.body.*), so that train.backbone_lr_mult applies to it
        self.backbone = build_backbone(backbone, pretrained, frozen_bn, trainable_stages)
        channels = self.backbone.out_channels[-1]
        cells = -(-self.image_size[0] // 32) * -(-self.image_size[1] // 32)  # C5 is at stride 32
        if task in ("largest_cls", "multilabel"):
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
        elif task == "largest_box":
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * cells, 4))
        else:  # the course's head: flatten, ReLU, dropout, linear, ReLU, BatchNorm, dropout, linear
            self.head = nn.Sequential(
                nn.Flatten(),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(channels * cells, hidden),
                nn.ReLU(),
                nn.BatchNorm1d(hidden),
                nn.Dropout(dropout),
                nn.Linear(hidden, 4 + num_classes),
            )

    def forward(self, images: Tensor) -> SingleOutput:
        if tuple(images.shape[-2:]) != self.image_size and self.task in ("largest_box", "single_object"):
            raise ValueError(
                f"{self.task} flattens the feature map of a {self.image_size[0]}x{self.image_size[1]} input; "
                f"got {images.shape[-2]}x{images.shape[-1]} (resize with input.resize squish or letterbox)"
            )
        c5 = list(self.backbone(images).values())[-1]
        # flatten in (channel, row, column) order whatever the memory format
        out = self.head(c5.contiguous())
        if self.task in ("largest_cls", "multilabel"):
            return SingleOutput(out, None)
        height, width = images.shape[-2:]
        scale = out.new_tensor([width, height, width, height])
        boxes = torch.sigmoid(out[:, :4]) * scale
        boxes = torch.cat((torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])), 1)
        return SingleOutput(out[:, 4:] if self.task == "single_object" else None, boxes)

    def detect(
        self, output: SingleOutput, image_size: Sequence[int], score_thresh: float = 0.5, **dense_settings
    ) -> list[Detections]:
        """Per image: the largest object's box and class (one detection; a classification step
        reports the whole image as the box), or for ``multilabel`` every class whose
        probability reaches ``score_thresh``. A dense detector's other settings (``topk``,
        ``nms_iou``, ``max_det``) do not apply and are accepted for a uniform call."""
        logits, boxes = output
        batch = (logits if logits is not None else boxes).shape[0]
        device = (logits if logits is not None else boxes).device
        height, width = (float(v) for v in image_size)
        whole = torch.tensor([[0.0, 0.0, width, height]], device=device)
        results = []
        for i in range(batch):
            if self.task == "multilabel":
                probs = torch.sigmoid(logits[i])
                labels = torch.nonzero(probs >= score_thresh).flatten()
                order = probs[labels].argsort(descending=True)
                labels = labels[order]
                results.append(Detections(whole.expand(len(labels), 4).clone(), probs[labels], labels))
                continue
            if logits is not None:
                score, label = torch.softmax(logits[i], dim=0).max(dim=0)
            else:  # largest_box: a box with no class, reported as class 0 with score 1
                score, label = torch.ones((), device=device), torch.zeros((), dtype=torch.long, device=device)
            box = boxes[i : i + 1] if boxes is not None else whole
            results.append(Detections(box.clone(), score[None], label[None]))
        return results
