"""An exponential moving average of a model's weights (Polyak averaging), for evaluation."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """``ema = decay_t * ema + (1 - decay_t) * weights`` after every optimizer step.

    ``decay_t = decay * (1 - exp(-updates / ramp))`` starts near 0 and approaches ``decay``,
    so that early averages are not dominated by the random initial weights (the ramp of
    YOLOv5 and timm). Floating-point buffers (BatchNorm statistics) are averaged too; integer
    buffers are copied.

    Args:
        model: the trained model; its copy ``module`` holds the average (in eval mode, no grad).
        decay: the long-run decay, e.g. 0.9998.
        ramp: updates over which the decay ramps up.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, ramp: float = 2000.0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.decay * (1.0 - math.exp(-self.updates / self.ramp))
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [*model.parameters(), *model.buffers()]
        for average, value in zip(averaged, current, strict=True):
            if average.dtype.is_floating_point:
                average.lerp_(value, 1.0 - decay)
            else:
                average.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
