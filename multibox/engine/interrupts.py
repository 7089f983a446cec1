"""Ctrl-C and SIGTERM during a run: the first asks the loop to stop at the end of the current step
(it then saves ``last.pt`` and says how to resume), a second one stops at once."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import torch

from .distributed import Distributed

__all__ = ["Interrupted", "Interrupts"]

_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Interrupted(Exception):
    """A run stopped by a signal after saving its position; ``exit_code`` is the shell's 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class Interrupts:
    """While open (``with Interrupts(dist) as interrupts``), SIGINT and SIGTERM set
    :attr:`signum` instead of ending the process; a second signal raises ``KeyboardInterrupt``.
    Inside :meth:`at_once` (an evaluation, minutes long on large images) the first one raises
    ``KeyboardInterrupt`` as well (:attr:`count` tells the two apart). Outside the main thread
    nothing is installed. In a distributed run :meth:`requested` agrees across the processes (any
    one's signal stops all), so that none waits in a collective for a process that has left.
    """

    def __init__(self, dist: Distributed | None = None, device: torch.device | None = None):
        self.dist, self.device = dist, device
        self.signum: int | None = None
        self.count = 0  # signals received
        self._at_once = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in _NAMES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.count += 1
        self.signum = self.signum or signum
        if self.count > 1 or self._at_once:
            raise KeyboardInterrupt

    @property
    def name(self) -> str:
        return _NAMES.get(self.signum, f"signal {self.signum}")

    @contextmanager
    def at_once(self):
        """A stretch in which the first signal interrupts immediately (``KeyboardInterrupt``)."""
        self._at_once = True
        try:
            yield
        finally:
            self._at_once = False

    def requested(self) -> bool:
        """Whether a signal asked the run to stop (in any process of a distributed run)."""
        if self.dist is None or not self.dist.enabled:
            return self.signum is not None
        flag = torch.tensor([float(self.signum or 0)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.signum = self.signum or int(flag.item()) or None
        return self.signum is not None
