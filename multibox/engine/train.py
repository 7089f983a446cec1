"""The training loop: forward, criterion, non-finite guard, clip, step, schedule, log, evaluate, checkpoint.

``train(config)`` writes into ``config.output``: ``config.yaml`` (resolved), ``last.pt`` and
``best.pt`` (atomic), ``train_log.csv`` and ``val_log.csv``, TensorBoard scalars under
``tensorboard/``, and ``losses.png``. ``train(config, resume=".../last.pt")`` continues exactly
where the checkpoint stopped: sampling order and augmentation are functions of (seed, epoch,
index), and the checkpoint holds the model, optimizer, schedule, RNG state and position.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from ..anchors import grid_ratios
from ..config import Config, ModelConfig, TrainConfig
from ..criterion import RetinaNetCriterion, SingleObjectCriterion, SSDCriterion, YOLOCriterion
from ..data import DetectionSet, load_dataset
from ..data.dataset import DetectionDataset, detection_collate
from ..data.transforms import Augment, boxes_to_original
from ..metrics import coco_map, multilabel_metrics, single_object_metrics
from ..models import (
    SINGLE_TASKS,
    SSD_KINDS,
    AnchorConfig,
    GridSSD,
    MobileNetSSD,
    RetinaNet,
    SingleObjectNet,
    ToySSD,
    YOLOv3,
)
from ..models.autocast import guard_bf16_strided_convs
from ..models.backbones import attach_prefix_cache, freeze_leading_blocks
from ..viz import plot_pr_curves
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import Distributed, setup
from .ema import ModelEMA

__all__ = [
    "PRIMARY_METRIC",
    "Trainer",
    "build_model",
    "build_optimizer",
    "detect_settings",
    "evaluate",
    "resolve_device",
    "train",
]


MODEL_KINDS = ("retinanet", *SINGLE_TASKS, *SSD_KINDS, "yolov3")


def build_model(
    config: ModelConfig, num_classes: int, pretrained: str | None = None, image_size: Sequence[int] = (512, 512)
) -> nn.Module:
    """The network a :class:`ModelConfig` describes (``image_size``: the input, for the networks
    built for one input size: the single-object heads that flatten a feature map, the SSD family),
    with ``config.frozen_blocks`` MobileNetV2 blocks frozen (see :func:`freeze_leading_blocks`)."""
    model = _network(config, num_classes, pretrained, image_size)
    return freeze_leading_blocks(model, config.frozen_blocks) if config.frozen_blocks else model


def _network(config: ModelConfig, num_classes: int, pretrained: str | None, image_size: Sequence[int]) -> nn.Module:
    backbone = {
        "backbone": config.backbone,
        "pretrained": pretrained or config.pretrained,
        "frozen_bn": config.frozen_bn,
        "trainable_stages": config.trainable_stages,
    }
    if config.kind in SINGLE_TASKS:
        return SingleObjectNet(
            num_classes, config.kind, image_size, **backbone, hidden=config.hidden, dropout=config.dropout
        )
    if config.kind in ("ssd_grid", "ssd_multihead"):
        shapes = {"grids": 1, "zooms": (1.0,), "ratios": ((1.0, 1.0),)} if config.kind == "ssd_grid" else {}
        if config.grid_zooms:
            shapes["zooms"] = tuple(config.grid_zooms)
        if config.grid_ratios:
            shapes["ratios"] = grid_ratios(config.grid_ratios)
        return GridSSD(
            num_classes,
            image_size,
            **shapes,
            **backbone,
            channels=config.hidden,
            dropout=config.dropout,
            grid_from=config.grid_from,
            align=config.grid_align,
        )
    if config.kind == "toyssd":
        return ToySSD(num_classes, image_size, config.ssd_scales)
    if config.kind in ("ssd300", "ssdlite"):
        return MobileNetSSD(num_classes, image_size, config.kind == "ssdlite", **backbone, scales=config.ssd_scales)
    if config.kind == "yolov3":
        return YOLOv3(
            num_classes, image_size, config.yolo_anchors, **backbone, width=config.fpn_channels, spp=config.spp
        )
    if config.kind != "retinanet":
        raise ValueError(f"model.kind must be one of {MODEL_KINDS}, got {config.kind!r}")
    anchors = AnchorConfig(config.anchor_strides, config.anchor_sizes, config.anchor_scales, config.anchor_ratios)
    return RetinaNet(
        num_classes,
        config.backbone,
        pretrained or config.pretrained,
        config.fpn_channels,
        config.head_convs,
        config.group_norm,
        anchors,
        config.p6_from,
        config.frozen_bn,
        config.trainable_stages,
        config.separable_head,
        config.separable_predictors,
        config.separable_fpn,
    )


class EpochSampler(Sampler[int]):
    """Epoch ``e``'s order is a permutation seeded ``seed + e``; iteration can start mid-epoch.

    In a run of ``world`` processes, every global batch of ``batch_size x world`` consecutive
    indices of that order is split in ``world`` slices of ``batch_size``, process ``rank``
    taking slice ``rank``: the processes together see the batches one process of
    ``batch_size x world`` would (incomplete global batches are dropped).
    """

    def __init__(self, size: int, seed: int, batch_size: int = 1, rank: int = 0, world: int = 1):
        self.size, self.seed, self.epoch, self.start = size, seed, 0, 0
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> Tensor:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        if self.world == 1:
            return order
        step = self.batch_size * self.world
        usable = (self.size // step) * step
        return order[:usable].view(-1, self.world, self.batch_size)[:, self.rank].reshape(-1)

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start :].tolist())

    def __len__(self) -> int:
        return len(self._order()) - self.start


def _lr_factor(config, total_steps: int):
    warmup = max(0, config.warmup_steps)
    milestones = [round(m * total_steps) for m in config.milestones]

    def factor(step: int) -> float:
        scale = 1.0
        if config.schedule == "cosine":
            progress = min(1.0, max(0, step - warmup) / max(1, total_steps - warmup))
            scale = 0.5 * (1 + math.cos(math.pi * progress))
        elif config.schedule == "step":
            scale = 0.1 ** sum(step >= m for m in milestones)
        if step < warmup:
            scale *= 0.001 + (1 - 0.001) * step / warmup
        return scale

    if config.schedule not in ("cosine", "step", "constant"):
        raise ValueError(f"train.schedule must be cosine, step or constant, got {config.schedule!r}")
    return factor


def build_optimizer(config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``config.optimizer`` (SGD with momentum, or AdamW) over the trainable parameters of ``model``.

    Biases and norm parameters (1-D) get no weight decay. Parameters under ``backbone.body``
    (the pretrained network) learn at ``lr * backbone_lr_mult``: discriminative learning
    rates, as in fastai. Each group records its ``lr_scale`` for schedules that set rates.
    """
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            decays = parameter.ndim > 1 and not name.endswith(".bias")
            groups.setdefault((name.startswith("backbone.body."), decays), []).append(parameter)
    param_groups = [
        {
            "params": params,
            "weight_decay": config.weight_decay if decays else 0.0,
            "lr": config.lr * (config.backbone_lr_mult if body else 1.0),
            "lr_scale": config.backbone_lr_mult if body else 1.0,
        }
        for (body, decays), params in sorted(groups.items())
    ]
    # One fused kernel per step instead of a loop over the parameters (4x faster on 2 cores)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in param_groups for p in g["params"])
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, fused=fused or None)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.lr, fused=fused or None)
    raise ValueError(f"train.optimizer must be sgd or adamw, got {config.optimizer!r}")


# The metric that picks best.pt, per model kind
PRIMARY_METRIC = {
    "retinanet": "AP",
    "single_object": "AP",
    "largest_cls": "accuracy",
    "largest_box": "IoU",
    "multilabel": "mAP",
    **dict.fromkeys(SSD_KINDS, "AP"),
    "yolov3": "AP",
}


def build_criterion(config: Config, model: nn.Module):
    """The training loss of ``config.model.kind``: ``criterion(output, anchors, targets)`` for the
    detectors with anchors, ``criterion(output, targets)`` for the single-object steps."""
    t, kind = config.train, config.model.kind
    if t.soft_targets and kind not in SSD_KINDS:
        raise ValueError(f"train.soft_targets is for the SSD family's bce class loss; {kind} has no such option")
    if kind in SINGLE_TASKS:
        return SingleObjectCriterion(kind, t.cls_weight)
    if kind == "retinanet":
        if t.cls_loss != "focal":
            raise ValueError(f"RetinaNet trains with the sigmoid focal loss (train.cls_loss=focal), not {t.cls_loss!r}")
        return RetinaNetCriterion(
            pos_iou=t.pos_iou, neg_iou=t.neg_iou, alpha=t.focal_alpha, gamma=t.focal_gamma,
            box_loss=t.box_loss, box_weight=t.box_weight,
        )  # fmt: skip
    if kind == "yolov3":
        return YOLOCriterion(
            model.coder, model.level_sizes(), box_loss=t.box_loss,
            box_weight=t.box_weight, obj_weight=t.obj_weight, cls_weight=t.cls_weight,
        )  # fmt: skip
    sigmoid = model.activation == "sigmoid"
    if sigmoid != (t.cls_loss in ("bce", "focal")):
        fits = "bce or focal" if sigmoid else "softmax or softmax_focal"
        raise ValueError(f"{kind} has a {model.activation} head: train.cls_loss must be {fits}, not {t.cls_loss!r}")
    return SSDCriterion(
        model.coder, t.pos_iou, t.cls_loss, t.box_loss, t.focal_alpha, t.focal_gamma, t.neg_pos_ratio, t.box_weight,
        soft_targets=t.soft_targets,
    )  # fmt: skip


def detect_settings(config) -> dict:
    """Post-processing settings of a :class:`TrainConfig`, as ``model.detect`` takes them."""
    return {
        "score_thresh": config.score_thresh,
        "topk": config.topk,
        "nms_iou": config.nms_iou,
        "max_det": config.max_det,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, data: DetectionSet, config: Config, batch_size: int | None = None, dist: Distributed | None = None
) -> tuple[dict, list]:
    """Metrics of ``model`` on ``data`` (boxes mapped back to the original images) and its detections.

    Detectors: COCO metrics with per-class AP and precision-recall curves. Single-object
    steps: :func:`~multibox.metrics.single_object_metrics` or, for ``multilabel``,
    :func:`~multibox.metrics.multilabel_metrics`. In a distributed run (``dist``), each process
    predicts its share of the images, rank 0 gathers them and computes the metrics, and every
    process gets them (the detections on rank 0 only).
    """
    t, kind = config.train, config.model.kind
    dist = dist or Distributed()
    augment = Augment("none", tuple(t.image_size), t.resize)
    dataset = DetectionDataset(data, augment, train=False)
    shard = list(range(dist.rank, len(dataset), dist.world))
    loader = DataLoader(
        torch.utils.data.Subset(dataset, shard) if dist.enabled else dataset,
        batch_size=batch_size or t.batch_size,
        num_workers=t.workers,
        collate_fn=detection_collate,
    )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    detections, probabilities = [], []
    for images, targets in loader:
        size = tuple(images.shape[-2:])
        output = model(images.to(device).contiguous(memory_format=memory_format))
        if kind == "multilabel":
            probabilities.append(torch.sigmoid(output.cls_logits).cpu())
        for det, target in zip(model.detect(output, size, **detect_settings(t)), targets, strict=True):
            det = det.to("cpu")
            det.boxes = boxes_to_original(det.boxes, target["orig_size"], target["input_size"], t.resize)
            detections.append(det)
    model.train(was_training)
    if dist.enabled:  # every process's share, back in the images' order, on rank 0
        shares = dist.gather((detections, torch.cat(probabilities) if probabilities else None))
        if not dist.main:
            return dist.broadcast(None), []
        detections = [None] * len(dataset)
        for rank, (found, _) in enumerate(shares):
            for slot, det in zip(range(rank, len(dataset), dist.world), found, strict=True):
                detections[slot] = det
        if kind == "multilabel":
            merged = torch.zeros((len(dataset), shares[0][1].shape[1]))
            for rank, (_, probs) in enumerate(shares):
                merged[rank :: dist.world] = probs
            probabilities = [merged]
        metrics, detections = _metrics(kind, data, detections, probabilities, t.score_thresh), detections
        return dist.broadcast(metrics), detections
    return _metrics(kind, data, detections, probabilities, t.score_thresh), detections


def _metrics(kind: str, data: DetectionSet, detections: list, probabilities: list, score_thresh: float) -> dict:
    truth = [
        {"boxes": r.boxes, "labels": r.labels, "ignore_boxes": r.ignore_boxes, "ignore_labels": r.ignore_labels}
        for r in data.records
    ]
    classes = len(data.class_names)
    if kind == "multilabel":
        present = np.zeros((len(data.records), classes))
        for i, record in enumerate(data.records):
            present[i, record.labels] = 1
        return multilabel_metrics(torch.cat(probabilities).numpy(), present, score_thresh)
    if kind in SINGLE_TASKS:
        return single_object_metrics(detections, truth, classes, kind)
    return coco_map(detections, truth, num_classes=classes, per_class=True)


class _Logs:
    def __init__(self, folder: Path, resume: bool):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self.tensorboard = SummaryWriter(str(folder / "tensorboard"))
        self.files: dict[str, Path] = {}
        self.resume = resume

    def write(self, name: str, row: dict) -> None:
        path = self.folder / f"{name}.csv"
        new = not path.exists() or (name not in self.files and not self.resume)
        with path.open("w" if new else "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.files[name] = path
        step = int(row.get("step", 0))
        for key, value in row.items():
            if key not in ("step", "epoch") and isinstance(value, int | float) and math.isfinite(value):
                self.tensorboard.add_scalar(f"{name}/{key}", value, step)

    def close(self) -> None:
        self.tensorboard.close()


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: the GPU where there is one, else the CPU; otherwise a torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return device


def _precision(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``, or None for full precision.

    ``auto``: bf16 on CUDA where supported, else fp16 (with loss scaling); nothing on CPUs,
    where bf16 pays only with AMX. ``bf16`` and ``fp16`` force a dtype (CPU autocast is bf16
    only); ``none`` turns mixed precision off.
    """
    if amp not in ("auto", "bf16", "fp16", "none"):
        raise ValueError(f"train.amp must be auto, bf16, fp16 or none, got {amp!r}")
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp fp16 needs a CUDA device; CPUs autocast to bf16 (train.amp=bf16)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _load_splits(config: Config, output: Path | None = None) -> tuple[DetectionSet, DetectionSet | None]:
    train_data, report = load_dataset(config.data.path, config.data.train_split, config.data.format, config.data.policy)
    val_data = None
    if config.data.val_split:
        val_data, _ = load_dataset(
            config.data.path,
            config.data.val_split,
            config.data.format,
            config.data.policy,
            class_names=train_data.class_names,
        )
    if report.problems and output is not None:  # what the policy clipped or skipped is reported
        (output / "data_report.txt").write_text(str(report) + "\n")
        print(f"training data: {str(report).splitlines()[0]} (details in {output / 'data_report.txt'})")
    if not train_data.records:
        raise ValueError(f"{config.data.path}: the '{config.data.train_split}' split has no images")
    if config.data.one_class:
        train_data = train_data.one_class(config.data.one_class)
        val_data = val_data.one_class(config.data.one_class) if val_data is not None else None
    return train_data, val_data


def _check_precompute(config: TrainConfig, device: torch.device) -> None:
    if config.augment != "none" or config.hflip > 0 or config.rotate:
        raise ValueError(
            "train.precompute keeps each training image's frozen-block outputs, so the images must be the same "
            f"every epoch: set train.augment=none, train.hflip=0 and train.rotate=false (got augment "
            f"{config.augment!r}, hflip {config.hflip}, rotate {config.rotate})"
        )
    if device.type != "cpu":
        raise ValueError(f"train.precompute is for CPU training (it keeps outputs in CPU memory); got device {device}")


class Trainer:
    """The pieces of a run that training and the learning-rate finder share.

    ``Trainer(config)`` reads the data, builds the model (on ``train.device``, channels-last
    if asked), the criterion, the training dataset, the optimizer and the autocast settings;
    :meth:`loader` iterates batches and :meth:`step` runs one optimisation step.
    """

    def __init__(self, config: Config, output: Path | None = None):
        t = config.train
        self.config = config
        self.dist, self.device = setup(resolve_device(t.device))
        self.train_data, self.val_data = _load_splits(config, output if self.dist.main else None)
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.amp_dtype = _precision(t.amp, self.device)
        torch.manual_seed(t.seed)
        if config.model.kind == "yolov3" and not config.model.yolo_anchors:
            from ..anchor_doctor import fit_yolo_anchors

            config.model.yolo_anchors = fit_yolo_anchors(self.train_data, t.image_size, t.resize)
            if self.dist.main:
                print(f"yolov3 anchors (k-means on the training boxes): {[list(s) for s in config.model.yolo_anchors]}")
        model = build_model(config.model, len(self.train_data.class_names), image_size=t.image_size)
        if t.sync_bn and self.dist.enabled:
            if self.device.type != "cuda":
                raise ValueError(
                    "train.sync_bn needs CUDA devices (SyncBatchNorm runs on GPUs); set it to false on CPUs"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device, memory_format=self.memory_format)  # NHWC: faster convs (oneDNN, cuDNN)
        if self.amp_dtype == torch.bfloat16 and self.device.type == "cpu":
            guard_bf16_strided_convs(self.model)  # PyTorch's wrong weight gradients of one-column outputs
        if t.precompute:
            _check_precompute(t, self.device)
            attach_prefix_cache(self.model)
        # what runs the forward pass: the model, or its DistributedDataParallel replica
        self.network: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.size = tuple(t.image_size)
        self._anchors: dict[tuple[int, int], Tensor] = {}  # per batch size (minmax resizing varies it)
        self.dense = hasattr(model, "anchors")  # a detector with anchors (RetinaNet, the SSD family)
        self.criterion = build_criterion(config, model)
        augment = Augment(t.augment, self.size, t.resize, t.rotate, hflip=t.hflip)
        self.dataset = DetectionDataset(self.train_data, augment, seed=t.seed)
        self.sampler = EpochSampler(len(self.dataset), t.seed, t.batch_size, self.dist.rank, self.dist.world)
        self.optimizer = build_optimizer(t, self.model)
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)

    def loader(self, epoch: int, start_batch: int = 0) -> DataLoader:
        """Epoch ``epoch``'s batches from batch ``start_batch`` on (order and augmentation seeded)."""
        t = self.config.train
        self.dataset.set_epoch(epoch)
        self.sampler.set_position(epoch, start_batch * t.batch_size)
        return DataLoader(
            self.dataset,
            batch_size=t.batch_size,
            sampler=self.sampler,
            num_workers=t.workers,
            collate_fn=detection_collate,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def losses(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """The criterion's losses of one batch (forward under autocast, loss in float32)."""
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        targets = [{k: target[k].to(self.device) for k in ("boxes", "labels")} for target in targets]
        with torch.autocast(self.device.type, self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            output = self.network(images)
        output = type(output)(*(None if part is None else part.float() for part in output))
        if self.dense:
            return self.criterion(output, self.anchors(images.shape[-2:]), targets)
        return self.criterion(output, targets)

    def anchors(self, size) -> Tensor:
        """The model's anchors for inputs of ``size`` on the run's device (cached)."""
        size = (int(size[0]), int(size[1]))
        if size not in self._anchors:
            self._anchors[size] = self.model.anchors(size).to(self.device)
        return self._anchors[size]

    def step(self, losses: dict[str, Tensor]) -> bool:
        """Backward, clip, optimizer step; False (nothing changed) for a non-finite loss or gradient."""
        self.optimizer.zero_grad(set_to_none=True)
        finite = torch.isfinite(losses["total"].detach()).float()
        if self.dist.enabled:  # every process skips, or none: a lone backward would wait forever
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not finite:
            return False
        self.scaler.scale(losses["total"]).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.config.train.clip_grad or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if self.scaler.is_enabled():  # fp16: the scaler skips the step on overflow and lowers its scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return True
        if not torch.isfinite(norm):
            return False
        self.optimizer.step()
        return True


def train(config: Config, resume: str | Path | None = None, progress: bool = True) -> dict:
    """Train the detector ``config`` describes; returns the last evaluation's metrics (or {}).

    ``train.deterministic`` holds PyTorch to deterministic algorithms for this run only: the
    process's setting is restored afterwards.
    """
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        return _train(config, resume, progress)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _train(config: Config, resume: str | Path | None, progress: bool) -> dict:
    t = config.train
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    run = Trainer(config, output)
    main = run.dist.main  # in a distributed run, rank 0 writes the logs and checkpoints
    if main:
        config.save(output / "config.yaml")
    model, optimizer, train_data, val_data = run.model, run.optimizer, run.train_data, run.val_data
    steps_per_epoch = len(run.dataset) // (t.batch_size * run.dist.world)
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size {t.batch_size} is larger than the {len(run.dataset)} training images")
    schedule_steps = steps_per_epoch * t.epochs
    # max_steps stops a run early without changing its schedule, so that it can be resumed
    total_steps = min(schedule_steps, t.max_steps) if t.max_steps else schedule_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(t, schedule_steps))
    ema = ModelEMA(model, t.ema_decay) if t.ema_decay > 0 else None

    primary = PRIMARY_METRIC[config.model.kind]  # picks best.pt
    state = {"epoch": 0, "batch": 0, "step": 0, "best": -math.inf, "bad_steps": 0, "metrics": {}}
    if resume is not None:
        saved = load_checkpoint(resume, map_location=run.device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        run.scaler.load_state_dict(saved["scaler"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        torch.set_rng_state(saved["rng"])
        saved.setdefault("best", saved.get("best_ap", -math.inf))  # checkpoints before the single-object steps
        state.update({k: saved[k] for k in state})

    def checkpoint(path: Path) -> None:
        if not main:
            return
        save_checkpoint(
            path,
            {
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": run.scaler.state_dict(),
                "rng": torch.get_rng_state(),
                "config": config.to_dict(),
                "class_names": list(train_data.class_names),
                **state,
            },
        )

    logs = _Logs(output, resume is not None) if main else None
    metrics: dict = state["metrics"]
    try:
        while state["step"] < total_steps:
            epoch = state["epoch"]
            model.train()
            started, seen = time.perf_counter(), 0
            bar = _progress(progress and main, epoch, steps_per_epoch - state["batch"])
            for images, targets in run.loader(epoch, state["batch"]):
                losses = run.losses(images, targets)
                if run.step(losses):
                    state["bad_steps"] = 0
                    if ema is not None:
                        ema.update(model)
                else:
                    state["bad_steps"] += 1
                    if state["bad_steps"] > t.max_bad_steps:
                        checkpoint(output / "last.pt")
                        raise FloatingPointError(
                            f"the loss or its gradient was not finite for {state['bad_steps']} steps in a row (step "
                            f"{state['step']}, cls {losses['cls'].item():.4g}, box {losses['box'].item():.4g}); lower "
                            f"train.lr, keep train.clip_grad on, and check the data with `multibox data check`"
                        )
                scheduler.step()
                state["step"] += 1
                state["batch"] += 1
                seen += len(images) * run.dist.world
                logged = _logged(losses, run.dist)
                row = {
                    "step": state["step"],
                    "epoch": epoch,
                    "lr": optimizer.param_groups[0]["lr"],
                    "loss": logged.pop("total"),
                    **logged,  # cls, box (and obj)
                    "images_per_s": seen / (time.perf_counter() - started),
                }
                if logs is not None:
                    logs.write("train_log", row)
                bar(row)
                if t.checkpoint_every and state["step"] % t.checkpoint_every == 0:
                    checkpoint(output / "last.pt")
                if state["step"] >= total_steps:
                    break
            bar(None)
            if state["batch"] >= steps_per_epoch:
                state["epoch"], state["batch"] = epoch + 1, 0
            finished = state["step"] >= total_steps
            if val_data is not None and ((state["batch"] == 0 and (epoch + 1) % t.eval_every == 0) or finished):
                metrics, _ = evaluate(ema.module if ema is not None else model, val_data, config, dist=run.dist)
                state["metrics"] = {k: v for k, v in metrics.items() if k not in ("per_class", "pr50")}
                if logs is not None:
                    logs.write("val_log", {"step": state["step"], "epoch": epoch, **state["metrics"]})
                if metrics.get(primary, -math.inf) > state["best"]:
                    state["best"] = metrics[primary]
                    checkpoint(output / "best.pt")
                    if "pr50" in metrics and main:
                        plot_pr_curves(
                            metrics["pr50"],
                            train_data.class_names,
                            output / "pr_curves.png",
                            f"validation, step {state['step']}: AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}",
                        )
            checkpoint(output / "last.pt")
            if finished:
                break
    finally:
        if logs is not None:
            logs.close()
        run.dist.barrier()  # no process leaves (and closes the group) before rank 0 has written
        run.dist.close()
    if main:
        _plot_losses(output)
    return metrics


def _logged(losses: dict[str, Tensor], dist: Distributed) -> dict[str, float]:
    """The loss parts to log: in a distributed run, averaged over the processes (each process's
    losses are normalised by the processes' mean positives, so their mean is the batch's loss)."""
    values = torch.stack([v.detach().float() for v in losses.values()])
    if dist.enabled:
        torch.distributed.all_reduce(values)
        values /= dist.world
    return dict(zip(losses, values.tolist(), strict=True))


def _progress(enabled: bool, epoch: int, steps: int):
    """A per-epoch progress bar (loss parts, lr, images/s, ETA); ``update(None)`` closes it."""
    if not enabled:
        return lambda row: None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(f"epoch {epoch}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )
    task = bar.add_task("train", total=steps, info="")
    bar.start()

    def update(row: dict | None) -> None:
        if row is None:
            bar.stop()
            return
        parts = " ".join(f"{k} {row[k]:.3f}" for k in ("cls", "box", "obj") if k in row)
        info = f"loss {row['loss']:.3f} ({parts}) lr {row['lr']:.2e} {row['images_per_s']:.1f} img/s"
        bar.update(task, advance=1, info=info)

    return update


def _plot_losses(output: Path) -> None:
    path = output / "train_log.csv"
    if not path.is_file():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    steps = np.array([float(r["step"]) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in (k for k in ("loss", "cls", "box", "obj") if k in rows[0]):
        ax.plot(steps, [float(r[key]) for r in rows], label=key, linewidth=1)
    ax.set(xlabel="step", ylabel="loss", title="training losses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "losses.png", dpi=100)
    plt.close(fig)
