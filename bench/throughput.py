"""Training throughput of a preset (images/s), with an in-process ablation of the ReLU6 change.

    python bench/throughput.py [--preset cpu_digits --data data/digits --steps 120]

Runs the preset's real training step (its data loader and augmentation, forward, criterion,
backward, gradient clipping, optimizer step) and reports images/s. Steps alternate between
multibox's MobileNetV2 as built (``_ReLU6``: in place, no copy of the input kept for the
backward pass) and the same network with torchvision's ``nn.ReLU6(inplace=True)``, so that
both see the same machine load; their ratio is the change's gain. The digits dataset is
rendered if missing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _timing import machine

from multibox.config import load_config
from multibox.data.synthetic import synthesize_digits
from multibox.engine import Trainer
from multibox.models.backbones import copy_free_relu6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu_digits")
    parser.add_argument("--data", default="data/digits")
    parser.add_argument("--steps", type=int, default=120, help="steps in all, alternating the two variants")
    args = parser.parse_args()
    if not Path(args.data).exists():
        synthesize_digits(args.data)
    print(machine())
    run = Trainer(load_config(args.preset, [f"data.path={args.data}"]))
    run.model.train()
    batches = iter(run.loader(0))
    times: dict[str, list[float]] = {"multibox": [], "nn.ReLU6": []}
    for step in range(args.steps):
        variant = "multibox" if step % 2 == 0 else "nn.ReLU6"
        copy_free_relu6(run.model, enabled=variant == "multibox")
        started = time.perf_counter()
        images, targets = next(batches)
        run.step(run.losses(images, targets))
        times[variant].append(time.perf_counter() - started)
    batch = run.config.train.batch_size
    speed = {}
    for variant, seconds in times.items():
        seconds = seconds[2:]  # the first steps warm up oneDNN's kernels
        speed[variant] = batch / statistics.mean(seconds)
        print(
            f"{variant:9s} {1000 * statistics.median(seconds):6.1f} ms a step (median), "
            f"{speed[variant]:5.1f} images/s (mean)"
        )
    print(f"gain of multibox's ReLU6: {speed['multibox'] / speed['nn.ReLU6']:.3f}x")


if __name__ == "__main__":
    main()
