"""The optimiser, its learning-rate schedule, the device and the autocast precision of a run."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..config import TrainConfig

__all__ = ["build_optimizer", "lr_factor", "precision", "resolve_device"]


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
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


def lr_factor(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The learning rate at a step, as a factor of ``train.lr``: ``train.schedule`` (``cosine`` to
    0, ``step`` 10x drops at the ``milestones`` fractions, ``constant``) after a linear warm-up
    of ``warmup_steps`` from 0.001."""
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


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: the GPU where there is one, else the CPU; otherwise a torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return device


def precision(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``, or None for full precision.

    ``auto``: bf16 on CUDA where supported, else fp16 (with loss scaling); nothing on CPUs:
    bf16 pays only with AMX, and there too little (measured on an AMX Xeon with ``cpu_digits``:
    a training step 1.08x faster, COCO AP 0.540 after 3 epochs against fp32's 0.552).
    ``bf16`` and ``fp16`` force a dtype (CPU autocast is bf16 only); ``none`` turns mixed
    precision off.
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
