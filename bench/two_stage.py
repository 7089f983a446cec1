"""Two-stage against one-stage on the CPU: the `faster_rcnn` preset against `cpu_digits`
(RetinaNet), and multibox's RoIAlign against torchvision's inside the Faster R-CNN step.

    python bench/two_stage.py [--data data/demo-digits --repeats 20]

Times, alternating the two sides in one process so that drift hits both alike (medians):
1. a training step of each preset (its loader's batch of 8 at 256x256, forward, criterion,
   backward, optimizer step);
2. the Faster R-CNN step with ``multilevel_roi_align`` (a weighted gather, a vectorised scatter
   back) against the same step with ``torchvision.ops.roi_align`` level by level;
3. inference of one 256x256 scene (forward and post-processing, evaluation mode).
The digits dataset is rendered if missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _timing import compare, machine, report, training_step
from torchvision.ops import roi_align

import multibox.models.faster_rcnn as faster_rcnn
from multibox.config import load_config
from multibox.data.synthetic import synthesize_digits
from multibox.engine import Trainer
from multibox.models.roi_align import assign_levels, multilevel_roi_align


def torchvision_roi_align(features, rois, strides, size=7, sampling_ratio=2, canonical_scale=224.0, canonical_level=4):
    """``multilevel_roi_align``'s job done by torchvision's ``roi_align``, level by level."""
    levels = assign_levels(rois, strides, canonical_scale, canonical_level)
    out = features[0].new_zeros((len(rois), features[0].shape[1], size, size))
    for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
        index = torch.where(levels == level)[0]
        out[index] = roi_align(feature, rois[index], size, 1.0 / stride, sampling_ratio)
    return out


def detector(run: Trainer, image: torch.Tensor):
    model = run.model

    def infer() -> None:
        with torch.no_grad():
            model.detect(model(image), image.shape[-2:])

    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/demo-digits")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not Path(args.data).exists():
        synthesize_digits(args.data)
    print(machine())
    device = torch.device("cpu")
    overrides = [f"data.path={args.data}", "train.workers=0"]
    two, one = (Trainer(load_config(preset, overrides)) for preset in ("faster_rcnn", "cpu_digits"))
    ours, theirs = compare(training_step(two), training_step(one), args.repeats, device)
    report("training step, batch of 8 at 256x256: faster_rcnn vs cpu_digits", ours, theirs, "cpu_digits")

    def with_roi_align(function):
        step = training_step(two)

        def run() -> None:
            faster_rcnn.multilevel_roi_align = function
            try:
                step()
            finally:
                faster_rcnn.multilevel_roi_align = multilevel_roi_align

        return run

    ours, theirs = compare(with_roi_align(multilevel_roi_align), with_roi_align(torchvision_roi_align), args.repeats,
                           device)  # fmt: skip
    report("faster_rcnn training step: multibox RoIAlign vs torchvision roi_align", ours, theirs, "torchvision")
    for run in (two, one):
        run.model.eval()
    image = torch.randn(1, 3, 256, 256).contiguous(memory_format=torch.channels_last)
    ours, theirs = compare(detector(two, image), detector(one, image), args.repeats * 3, device)
    report("inference of one 256x256 scene: faster_rcnn vs cpu_digits", ours, theirs, "cpu_digits")


if __name__ == "__main__":
    main()
