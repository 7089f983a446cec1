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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..coding import DeltaCoder
from ..config import Config, ModelConfig
from ..criterion import RetinaNetCriterion
from ..data import DetectionSet, load_dataset
from ..data.dataset import DetectionDataset, detection_collate
from ..data.transforms import Augment, boxes_to_original
from ..metrics import coco_map
from ..models import AnchorConfig, RetinaNet
from ..postprocess import postprocess
from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["build_model", "evaluate", "train"]


def build_model(config: ModelConfig, num_classes: int, pretrained: str | None = None) -> RetinaNet:
    """The RetinaNet a :class:`ModelConfig` describes."""
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
    )


class EpochSampler(Sampler[int]):
    """Epoch ``e``'s order is a permutation seeded ``seed + e``; iteration can start mid-epoch."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch, self.start = size, seed, 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return iter(order[self.start :].tolist())

    def __len__(self) -> int:
        return self.size - self.start


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


def _optimizer(config, model: torch.nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    raise ValueError(f"train.optimizer must be sgd or adamw, got {config.optimizer!r}")


@torch.no_grad()
def evaluate(model: RetinaNet, data: DetectionSet, config: Config, batch_size: int | None = None) -> tuple[dict, list]:
    """COCO metrics of ``model`` on ``data`` (boxes mapped back to the original images) and the detections."""
    t = config.train
    augment = Augment("none", tuple(t.image_size), t.resize)
    loader = DataLoader(
        DetectionDataset(data, augment, train=False),
        batch_size=batch_size or t.batch_size,
        num_workers=t.workers,
        collate_fn=detection_collate,
    )
    model.eval()
    detections = []
    for images, targets in loader:
        size = tuple(images.shape[-2:])
        output = model(images)
        found = postprocess(
            *output,
            model.anchors(size),
            [size] * len(images),
            coder=DeltaCoder(),
            level_sizes=model.level_sizes(size),
            score_thresh=t.score_thresh,
            topk=t.topk,
            nms_iou=t.nms_iou,
            max_det=t.max_det,
        )
        for det, target in zip(found, targets, strict=True):
            det.boxes = boxes_to_original(det.boxes, target["orig_size"], target["input_size"], t.resize)
            detections.append(det)
    truth = [
        {"boxes": r.boxes, "labels": r.labels, "ignore_boxes": r.ignore_boxes, "ignore_labels": r.ignore_labels}
        for r in data.records
    ]
    return coco_map(detections, truth, num_classes=len(data.class_names), per_class=True), detections


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


def train(config: Config, resume: str | Path | None = None, progress: bool = True) -> dict:
    """Train a RetinaNet as ``config`` says; returns the last evaluation's metrics (or {})."""
    t = config.train
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(t.seed)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
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
    if report.problems:  # what the policy clipped or skipped is reported, never dropped silently
        (output / "data_report.txt").write_text(str(report) + "\n")
        print(f"training data: {str(report).splitlines()[0]} (details in {output / 'data_report.txt'})")
    if not train_data.records:
        raise ValueError(f"{config.data.path}: the '{config.data.train_split}' split has no images")
    config.save(output / "config.yaml")

    model = build_model(config.model, len(train_data.class_names))
    size = tuple(t.image_size)
    anchors = model.anchors(size)
    criterion = RetinaNetCriterion(
        pos_iou=t.pos_iou, neg_iou=t.neg_iou, alpha=t.focal_alpha, gamma=t.focal_gamma, box_loss=t.box_loss
    )
    dataset = DetectionDataset(train_data, Augment(t.augment, size, t.resize, t.rotate), seed=t.seed)
    sampler = EpochSampler(len(dataset), t.seed)
    steps_per_epoch = len(dataset) // t.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size {t.batch_size} is larger than the {len(dataset)} training images")
    schedule_steps = steps_per_epoch * t.epochs
    # max_steps stops a run early without changing its schedule, so that it can be resumed
    total_steps = min(schedule_steps, t.max_steps) if t.max_steps else schedule_steps
    optimizer = _optimizer(t, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(t, schedule_steps))

    state = {"epoch": 0, "batch": 0, "step": 0, "best_ap": -1.0, "bad_steps": 0, "metrics": {}}
    if resume is not None:
        saved = load_checkpoint(resume)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        state.update({k: saved[k] for k in state})

    def checkpoint(path: Path) -> None:
        save_checkpoint(
            path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "config": config.to_dict(),
                "class_names": list(train_data.class_names),
                **state,
            },
        )

    logs = _Logs(output, resume is not None)
    metrics: dict = state["metrics"]
    try:
        while state["step"] < total_steps:
            epoch = state["epoch"]
            dataset.set_epoch(epoch)
            sampler.set_position(epoch, state["batch"] * t.batch_size)
            loader = DataLoader(
                dataset,
                batch_size=t.batch_size,
                sampler=sampler,
                num_workers=t.workers,
                collate_fn=detection_collate,
                drop_last=True,
            )
            model.train()
            started, seen = time.perf_counter(), 0
            bar = _progress(progress, epoch, steps_per_epoch - state["batch"])
            for images, targets in loader:
                losses = criterion(model(images), anchors, targets)
                optimizer.zero_grad(set_to_none=True)
                if not torch.isfinite(losses["total"]):
                    state["bad_steps"] += 1
                    if state["bad_steps"] > t.max_bad_steps:
                        checkpoint(output / "last.pt")
                        raise FloatingPointError(
                            f"the loss was not finite for {state['bad_steps']} steps in a row (step {state['step']}, "
                            f"cls {float(losses['cls']):.4g}, box {float(losses['box']):.4g}); lower train.lr, keep "
                            f"train.clip_grad on, and check the data with `multibox data check`"
                        )
                else:
                    losses["total"].backward()
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad or float("inf"))
                    if torch.isfinite(norm):
                        optimizer.step()
                        state["bad_steps"] = 0
                    else:
                        state["bad_steps"] += 1
                scheduler.step()
                state["step"] += 1
                state["batch"] += 1
                seen += len(images)
                rate = seen / (time.perf_counter() - started)
                row = {
                    "step": state["step"],
                    "epoch": epoch,
                    "lr": optimizer.param_groups[0]["lr"],
                    "loss": losses["total"].item(),
                    "cls": losses["cls"].item(),
                    "box": losses["box"].item(),
                    "images_per_s": rate,
                }
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
                metrics, _ = evaluate(model, val_data, config)
                state["metrics"] = {k: v for k, v in metrics.items() if k != "per_class"}
                logs.write("val_log", {"step": state["step"], "epoch": epoch, **state["metrics"]})
                if metrics["AP"] > state["best_ap"]:
                    state["best_ap"] = metrics["AP"]
                    checkpoint(output / "best.pt")
            checkpoint(output / "last.pt")
            if finished:
                break
    finally:
        logs.close()
    _plot_losses(output)
    return metrics


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
        info = (
            f"loss {row['loss']:.3f} (cls {row['cls']:.3f} box {row['box']:.3f}) lr {row['lr']:.2e} "
            f"{row['images_per_s']:.1f} img/s"
        )
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
    for key in ("loss", "cls", "box"):
        ax.plot(steps, [float(r[key]) for r in rows], label=key, linewidth=1)
    ax.set(xlabel="step", ylabel="loss", title="training losses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "losses.png", dpi=100)
    plt.close(fig)
