"""PyTorch bf16 autocast against fp32 on this CPU: a training step and batch-1 inference.

    python bench/bf16.py [--preset cpu_digits --data data/demo-digits --repeats 20 --size 512]

Times, alternating fp32 and bf16 in one process (medians):
1. the preset's training step (its loader's batch, forward under autocast, the loss in float32,
   backward, optimizer step), two trainers built alike but for ``train.amp`` (``none``, ``bf16``);
2. inference of one ``--size`` image (forward and post-processing) with and without
   ``torch.autocast("cpu", torch.bfloat16)``, on the fp32 trainer's network in evaluation mode.
bf16 pays on CPUs with AMX (Intel Xeon 4th generation on); elsewhere PyTorch emulates it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _timing import compare, machine, report, training_step

from multibox.config import load_config
from multibox.data.synthetic import synthesize_digits
from multibox.engine import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu_digits")
    parser.add_argument("--data", default="data/demo-digits")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    if not Path(args.data).exists():
        synthesize_digits(args.data)
    print(machine())
    device = torch.device("cpu")
    runs = {amp: Trainer(load_config(args.preset, [f"data.path={args.data}", f"train.amp={amp}"]))
            for amp in ("none", "bf16")}  # fmt: skip
    bf16, fp32 = compare(training_step(runs["bf16"]), training_step(runs["none"]), args.repeats, device)
    report(f"{args.preset} training step: bf16 autocast vs fp32", bf16, fp32, "fp32")
    model = runs["none"].model.eval()
    size = (args.size, args.size)
    image = torch.randn(1, 3, *size).contiguous(memory_format=torch.channels_last)

    def infer(autocast: bool):
        def run() -> None:
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                output = model(image)
            model.detect(type(output)(*(part.float() for part in output)), size)

        return run

    bf16, fp32 = compare(infer(True), infer(False), args.repeats * 3, device)
    report(f"inference of one {args.size}x{args.size} image: bf16 autocast vs fp32", bf16, fp32, "fp32")


if __name__ == "__main__":
    main()
