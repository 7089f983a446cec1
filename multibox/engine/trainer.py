"""The training loop: forward, criterion, non-finite guard, clip, step, schedule, log, evaluate, checkpoint.

``train(config)`` writes into ``config.output``: ``config.yaml`` (resolved), ``last.pt`` and
``best.pt`` (atomic), ``train_log.csv`` and ``val_log.csv``, TensorBoard scalars under
``tensorboard/``, and ``losses.png``. ``train(config, resume=".../last.pt")`` continues exactly
where the checkpoint stopped: sampling order and augmentation are functions of (seed, epoch,
index), and the checkpoint holds the model, optimizer, schedule, RNG state and position.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..auto import resolve
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import Config, TrainConfig, config_from_dict
from ..data.dataset import DetectionDataset, detection_collate
from ..data.io import atomic_write_text, remove_temporary
from ..data.preprocess import Preprocess
from ..kinds import build_criterion, build_model, kind_of
from ..models.autocast import guard_bf16_strided_convs
from ..models.backbones import attach_prefix_cache
from ..viz import plot_pr_curves
from .budget import default_schedule, fit_budget, memorisation, time_steps
from .data import EpochSampler, load_splits
from .distributed import setup
from .ema import ModelEMA
from .evaluate import evaluate
from .interrupts import Interrupted, Interrupts
from .logs import Logs, logged, plot_losses, progress, truncate_logs
from .optim import build_optimizer, lr_factor, precision, resolve_device
from .resumption import check_same_run, check_unfinished

__all__ = ["Trainer", "train"]

SAVE_INTERVAL = 30.0  # seconds between the end-of-epoch saves of last.pt


def _check_precompute(config: TrainConfig, device: torch.device) -> None:
    if config.augment != "none" or config.hflip > 0 or config.rotate:
        raise ValueError(
            "train.precompute keeps each training image's frozen-block outputs, so the images must be the same "
            f"every epoch: set train.augment=none, train.hflip=0 and train.rotate=false (got augment "
            f"{config.augment!r}, hflip {config.hflip}, rotate {config.rotate})"
        )
    if device.type != "cpu":
        raise ValueError(f"train.precompute is for CPU training (it keeps outputs in CPU memory); got device {device}")


def _tiles(data, tile: int) -> float:
    """How many ``tile x tile`` windows cover an image of ``data`` (the median one), at least 1."""
    areas = sorted(r.height * r.width for r in data.records)
    return max(1.0, areas[len(areas) // 2] / tile**2)


class Trainer:
    """A run: the pieces a step needs, and the loop that steps, evaluates and keeps checkpoints.

    ``Trainer(config)`` reads the data, fits what the model kind fits from it (YOLO's anchors),
    builds the model (on ``train.device``, channels-last if asked), the criterion, the training
    dataset, the optimizer and the autocast settings: :meth:`loader` iterates batches and
    :meth:`step` runs one optimisation step (what the learning-rate finder uses). :meth:`fit`
    runs the schedule, from the start or from :meth:`resume`, writing into ``output``.
    """

    def __init__(self, config: Config, output: Path | None = None):
        t = config.train
        self.config, self.output = config, output
        self.dist, self.device = setup(resolve_device(t.device))
        self.train_data, self.val_data = load_splits(config, output if self.dist.main else None)
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.amp_dtype = precision(t.amp, self.device)
        torch.manual_seed(t.seed)
        kind = kind_of(config)
        # the settings the recipe leaves to the data, then what the kind fits from it (anchors)
        self.choices = resolve(config, self.train_data)
        self.choices += kind.fit(config, self.train_data) if kind.fit else []
        if self.dist.main:
            for choice in self.choices:
                print(f"auto: {choice}")
        self.model = self._model(config, len(self.train_data.class_names))
        # what runs the forward pass: the model, or its DistributedDataParallel replica
        self.network: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.preprocess = Preprocess.of(config.input)
        self._anchors: dict[tuple[int, int], Tensor] = {}  # per input size (minmax resizing varies it)
        self.dense, self.two_stage = kind.dense, kind.two_stage
        self.criterion = build_criterion(config, self.model)
        pre = self.preprocess
        # with tiles, each image is as many random tiles an epoch as its tile grid holds
        repeat = round(_tiles(self.train_data, pre.tile)) if pre.tile else 1
        self.dataset = DetectionDataset(self.train_data, pre.augment(t.augment, t.rotate, t.hflip), True, pre.mean,
                                        pre.std, t.seed, repeat)  # fmt: skip
        self.sampler = EpochSampler(len(self.dataset), t.seed, t.batch_size, self.dist.rank, self.dist.world)
        self.optimizer = build_optimizer(t, self.model)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def _model(self, config: Config, classes: int) -> nn.Module:
        t = config.train
        model = build_model(config.model, classes, image_size=config.input.size)
        if t.sync_bn and self.dist.enabled:
            if self.device.type != "cuda":
                raise ValueError("train.sync_bn needs CUDA devices (SyncBatchNorm runs on GPUs); set it false on CPUs")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device, memory_format=self.memory_format)  # NHWC: faster convs (oneDNN, cuDNN)
        if self.amp_dtype == torch.bfloat16 and self.device.type == "cpu":
            guard_bf16_strided_convs(model)  # PyTorch's wrong weight gradients of one-column outputs
        if t.precompute:
            _check_precompute(t, self.device)
            attach_prefix_cache(model)
        return model

    # --- one step ------------------------------------------------------------------------------

    def loader(self, epoch: int, start_batch: int = 0) -> DataLoader:
        """Epoch ``epoch``'s batches from batch ``start_batch`` on (order and augmentation seeded)."""
        t = self.config.train
        self.dataset.set_epoch(epoch)
        self.sampler.set_position(epoch, start_batch * t.batch_size)
        return DataLoader(
            self.dataset, batch_size=t.batch_size, sampler=self.sampler, num_workers=t.workers,
            collate_fn=detection_collate, drop_last=True, pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )  # fmt: skip

    def losses(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """The criterion's losses of one batch (forward under autocast, loss in float32)."""
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        targets = [{k: target[k].to(self.device) for k in ("boxes", "labels")} for target in targets]
        with torch.autocast(self.device.type, self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            # a two-stage network samples the regions its second stage learns from against the targets
            output = self.network(images, targets) if self.two_stage else self.network(images)
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

    # --- a run ---------------------------------------------------------------------------------

    def fit(self, resume: str | Path | None = None, show_progress: bool = True) -> dict:
        """Train to the end of the schedule (or ``train.max_steps``), evaluating on the validation
        split every ``train.eval_every`` epochs and keeping ``best.pt`` by the kind's metric and
        ``last.pt``; from the position of ``resume`` if given. Returns the last evaluation's metrics.

        Ctrl-C or SIGTERM ends the current step, saves ``last.pt`` and raises :class:`Interrupted`
        (its message: the command that resumes); a second signal stops at once."""
        self._begin(resume)
        try:
            with Interrupts(self.dist, self.device) as interrupts:
                self._run(interrupts, show_progress)
                if interrupts.signum is not None:
                    self._stop(interrupts)
        finally:
            if self.logs is not None:
                self.logs.close()
            self.dist.barrier()  # no process leaves (and closes the group) before rank 0 has written
            self.dist.close()
        if self.dist.main:
            plot_losses(self.output)
            warning = memorisation(self)
            if warning:
                print(warning)
        return self.metrics

    def _run(self, interrupts: Interrupts, show_progress: bool) -> None:
        state = self.state
        if state["pending_eval"] is not None:  # the run was interrupted during this evaluation
            if not self._evaluate(state["pending_eval"], interrupts):
                return
        while state["step"] < self.total_steps:
            epoch = self._train_epoch(show_progress, interrupts)
            if interrupts.signum is not None:
                return
            finished = state["step"] >= self.total_steps
            due = state["batch"] == 0 and (epoch + 1) % self.config.train.eval_every == 0
            if self.val_data is not None and (due or finished) and not self._evaluate(epoch, interrupts):
                return
            # at the end of every epoch, but not more than twice a minute (runs of tiny epochs)
            if finished or time.monotonic() - self._saved >= SAVE_INTERVAL:
                self.save(self.output / "last.pt")

    def _evaluate(self, epoch: int, interrupts: Interrupts) -> bool:
        """:meth:`evaluate_and_keep_best`, which a first signal interrupts at once: then False, and
        the saved position says that this evaluation is still to do."""
        state = self.state
        state["pending_eval"], best = epoch, state["best"]
        try:
            with interrupts.at_once():
                self.evaluate_and_keep_best(epoch)
        except KeyboardInterrupt:
            if interrupts.count != 1:  # a second signal, or an interrupt that is not ours
                raise
            state["best"] = best  # best.pt may not have been written
            return False
        state["pending_eval"] = None
        return True

    def _stop(self, interrupts: Interrupts) -> None:
        """After a signal: save the position to ``last.pt`` and raise :class:`Interrupted`."""
        path = self.output / "last.pt"
        with interrupts.at_once():  # a second signal while saving: stop, the previous last.pt intact
            self.save(path)
            if self.dist.main:
                plot_losses(self.output)
        state = self.state
        raise Interrupted(
            f"{interrupts.name}: stopped at step {state['step']} of {self.total_steps} (epoch {state['epoch']}), "
            f"saved {path}; continue with: multibox train --resume {path}",
            interrupts.signum,
        )

    def _begin(self, resume: str | Path | None) -> None:
        t, main = self.config.train, self.dist.main
        self.steps_per_epoch = len(self.dataset) // (t.batch_size * self.dist.world)
        if self.steps_per_epoch == 0:
            raise ValueError(f"train.batch_size {t.batch_size} is larger than the {len(self.dataset)} training images")
        if main and remove_temporary(self.output):
            print(f"removed the temporary files of an interrupted write in {self.output}")
        saved = load_checkpoint(resume, map_location=self.device) if resume is not None else None
        if saved is None:
            self._decide_schedule()
        else:  # what the recipe leaves auto, the resumed run decided
            decided = config_from_dict(saved["config"], f"{resume} (its configuration)").train
            for key in ("epochs", "warmup_steps", "eval_every"):
                if getattr(t, key) is None:
                    setattr(t, key, getattr(decided, key))
        schedule_steps = self.steps_per_epoch * t.epochs
        # max_steps stops a run early without changing its schedule, so that it can be resumed
        self.total_steps = min(schedule_steps, t.max_steps) if t.max_steps else schedule_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(t, schedule_steps))
        self.ema = ModelEMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.state = {"epoch": 0, "batch": 0, "step": 0, "best": -math.inf, "bad_steps": 0, "metrics": {},
                      "pending_eval": None}  # fmt: skip
        if resume is not None:
            self.resume(resume, saved)
            check_unfinished(resume, self.config.train, self.state, schedule_steps, self.total_steps)
        if main:
            decided = "".join(f"# auto: {choice}\n" for choice in self.choices)
            atomic_write_text(self.output / "config.yaml", decided + self.config.to_yaml())
            if t.warmup_steps >= schedule_steps:
                print(f"warning: train.warmup_steps ({t.warmup_steps}) is not shorter than the run ({schedule_steps} "
                      f"steps): the learning rate never reaches train.lr; lower train.warmup_steps")  # fmt: skip
        if main and resume is not None:  # rows a killed run wrote after its checkpoint go: they are redone
            step, pending = self.state["step"], self.state["pending_eval"] is not None
            truncate_logs(self.output, {"train_log": step, "val_log": step - 1 if pending else step})
        self.logs = Logs(self.output, resume is not None) if main else None
        self._saved = time.monotonic()
        self.metrics: dict = self.state["metrics"]

    def _decide_schedule(self) -> None:
        """``train.epochs``, ``warmup_steps`` and ``eval_every`` left ``auto``: from
        ``train.time_budget`` and a few timed steps (:func:`~multibox.engine.budget.fit_budget`)."""
        t, choices = self.config.train, []
        if t.epochs is None:
            if t.time_budget <= 0:
                raise ValueError("train.epochs is auto: give train.time_budget (minutes) or train.epochs")
            seconds = time_steps(self)
            val_images = len(self.val_data.records) if self.val_data is not None else 0
            choices += fit_budget(self.config, seconds, self.steps_per_epoch, val_images, self._tiles_per_image())
        choices += default_schedule(self.config, self.steps_per_epoch)
        if self.dist.main:
            for choice in choices:
                print(f"auto: {choice}")
        self.choices += choices

    def _tiles_per_image(self) -> float:
        """Tiles a validation image is cut into (overlapping ones: 1.6 times the grid)."""
        tile = self.preprocess.tile
        return _tiles(self.val_data or self.train_data, tile) * 1.6 if tile else 1.0

    def _train_epoch(self, show_progress: bool, interrupts: Interrupts | None = None) -> int:
        """Steps from the current position to the end of its epoch (or of the run); returns the epoch."""
        epoch, state = self.state["epoch"], self.state
        self.model.train()
        started, seen = time.perf_counter(), 0
        bar = progress(show_progress and self.dist.main, epoch, self.steps_per_epoch - state["batch"])
        for images, targets in self.loader(epoch, state["batch"]):
            losses = self.losses(images, targets)
            self._count(self.step(losses), losses)
            self.scheduler.step()
            state["step"] += 1
            state["batch"] += 1
            seen += len(images) * self.dist.world
            row = {"step": state["step"], "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            parts = logged(losses, self.dist)
            row.update(loss=parts.pop("total"), **parts, images_per_s=seen / (time.perf_counter() - started))
            if self.logs is not None:
                self.logs.write("train_log", row)
            bar(row)
            if self.config.train.checkpoint_every and state["step"] % self.config.train.checkpoint_every == 0:
                self.save(self.output / "last.pt")
            if state["step"] >= self.total_steps or (interrupts is not None and interrupts.requested()):
                break
        bar(None)
        if state["batch"] >= self.steps_per_epoch:
            state["epoch"], state["batch"] = epoch + 1, 0
        return epoch

    def _count(self, stepped: bool, losses: dict[str, Tensor]) -> None:
        """After a step: update the EMA, or count a skipped step and stop after too many in a row."""
        if stepped:
            self.state["bad_steps"] = 0
            if self.ema is not None:
                self.ema.update(self.model)
            return
        self.state["bad_steps"] += 1
        if self.state["bad_steps"] > self.config.train.max_bad_steps:
            self.save(self.output / "last.pt")
            raise FloatingPointError(
                f"the loss or its gradient was not finite for {self.state['bad_steps']} steps in a row (step "
                f"{self.state['step']}, cls {losses['cls'].item():.4g}, box {losses['box'].item():.4g}); lower "
                f"train.lr, keep train.clip_grad on, and check the data with `multibox data check`"
            )

    def evaluate_and_keep_best(self, epoch: int) -> dict:
        """Evaluate the EMA (or the model) on the validation split, log it, and write ``best.pt``
        (and ``pr_curves.png``) when the kind's metric improves."""
        model = self.ema.module if self.ema is not None else self.model
        metrics, _ = evaluate(model, self.val_data, self.config, dist=self.dist)
        state = self.state
        state["metrics"] = {k: v for k, v in metrics.items() if k not in ("per_class", "pr50")}
        if self.logs is not None:
            self.logs.write("val_log", {"step": state["step"], "epoch": epoch, **state["metrics"]})
        metric = kind_of(self.config).metric
        if metrics.get(metric, -math.inf) > state["best"]:
            state["best"] = metrics[metric]
            self.save(self.output / "best.pt")
            if "pr50" in metrics and self.dist.main:
                title = f"validation, step {state['step']}: AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}"
                plot_pr_curves(metrics["pr50"], self.train_data.class_names, self.output / "pr_curves.png", title)
        self.metrics = metrics
        return metrics

    def save(self, path: Path) -> None:
        """Write the run (weights, EMA, optimizer, schedule, RNG, config, position) to ``path``, atomically."""
        self._saved = time.monotonic()
        if not self.dist.main:
            return
        save_checkpoint(
            path,
            {
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": torch.get_rng_state(),
                "config": self.config.to_dict(),
                "class_names": list(self.train_data.class_names),
                **self.state,
            },
        )

    def resume(self, path: str | Path, saved: dict | None = None) -> None:
        """Continue from a checkpoint of :meth:`save` (``saved``: its contents, read already):
        weights, optimizer, schedule, RNG, position; a :class:`CheckpointError` if it is another
        run's (other classes, another network)."""
        saved = saved if saved is not None else load_checkpoint(path, map_location=self.device)
        check_same_run(path, saved, self.config, self.train_data.class_names)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        torch.set_rng_state(saved["rng"])
        saved.setdefault("best", saved.get("best_ap", -math.inf))  # checkpoints before the single-object steps
        self.state.update({k: saved.get(k, v) for k, v in self.state.items()})


def train(config: Config, resume: str | Path | None = None, progress: bool = True) -> dict:
    """Train the detector ``config`` describes into ``config.output``; returns the last evaluation's
    metrics (or {}).

    ``train.deterministic`` holds PyTorch to deterministic algorithms for this run only: the
    process's setting is restored afterwards.
    """
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        output = Path(config.output)
        output.mkdir(parents=True, exist_ok=True)
        return Trainer(config, output).fit(resume, progress)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
