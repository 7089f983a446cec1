"""Training engine: the loop and its pieces (data order, optimiser and schedule, logs, distributed
validation, EMA, the learning-rate finder)."""

from .evaluate import evaluate
from .trainer import Trainer, train

__all__ = ["Trainer", "evaluate", "train"]
