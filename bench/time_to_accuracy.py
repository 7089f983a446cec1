"""Time to accuracy on any dataset: a multibox RetinaNet preset vs torchvision's RetinaNet.

    python bench/time_to_accuracy.py [--minutes 6 --evals 6 --data data/demo-digits --val-images 200]
    python bench/time_to_accuracy.py --preset default --data data/shapes --minutes 10 [key=value ...]

Both train on the same data pipeline (the preset's augmentation and input; with the ``default``
preset, what it decides from the data, tiles included) for the same budget of training time
(the steps, not the loading of their batches), with the same optimizer and a cosine learning
rate over the budget (a function of elapsed time, so neither needs to know its speed in
advance), and are evaluated with the same COCO metric on the same validation
scenes at equal intervals (evaluation time not counted). The peer is torchvision's
``RetinaNet`` on the same ImageNet MobileNetV2 (frozen BatchNorm, the same trainable
stages) with a torchvision FPN on C3-C5 and its standard head (4 x 256-channel convs per
task), anchors sized like multibox's. The digits dataset is rendered if missing.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from _timing import machine
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNet as TorchvisionRetinaNet
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d

from multibox.config import load_config
from multibox.data import DetectionSet, load_dataset
from multibox.data.synthetic import synthesize_digits
from multibox.engine import Trainer
from multibox.engine.optim import build_optimizer
from multibox.evaluation import evaluate
from multibox.models.backbones import offline_mobilenet_v2_weights
from multibox.structures import Detections

WARMUP = 0.1  # share of the budget


class MobileNetFPN(nn.Module):
    """C3-C5 of torchvision's MobileNetV2 (features 6, 13, 17, as multibox's) into a torchvision FPN."""

    def __init__(self, trainable_from: int):
        super().__init__()
        network = mobilenet_v2(norm_layer=FrozenBatchNorm2d)
        network.load_state_dict(torch.load(offline_mobilenet_v2_weights(), weights_only=True))
        for index, block in enumerate(network.features):
            block.requires_grad_(index >= trainable_from)
        self.body = IntermediateLayerGetter(network.features, {"6": "0", "13": "1", "17": "2"})
        self.fpn = FeaturePyramidNetwork([32, 96, 320], 256)
        self.out_channels = 256

    def forward(self, x):
        return self.fpn(self.body(x))


def first_trained(model) -> int:
    """The first MobileNetV2 block a ``ModelConfig`` trains: its ``trainable_stages`` (stages end
    at blocks 2, 4, 7, 14, 18) and the ``frozen_blocks`` frozen on top of them."""
    return max((18, 14, 7, 4, 2, 0)[model.backbone.trainable_stages], model.backbone.frozen_blocks)


def torchvision_step(model: nn.Module, optimizer, clip_grad: float):
    """One training step of a torchvision detector on a batch of the shared pipeline, as a function."""

    def step(images, targets) -> None:
        losses = model(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()

    return step


def torchvision_model(config, num_classes: int) -> TorchvisionRetinaNet:
    m, d = config.model.retinanet, config.detect
    trainable_from = first_trained(config.model)  # the same trainable blocks as multibox's
    sizes = tuple(tuple(s * k for k in m.anchor_scales) for s in m.anchor_sizes)
    anchors = AnchorGenerator(sizes, (tuple(m.anchor_ratios),) * len(sizes))
    side = config.input.size[0]
    return TorchvisionRetinaNet(
        MobileNetFPN(trainable_from),
        num_classes,
        min_size=side,
        max_size=side,
        image_mean=[0.0] * 3,  # the shared pipeline already normalises
        image_std=[1.0] * 3,
        anchor_generator=anchors,
        score_thresh=d.score_thresh,
        nms_thresh=d.nms_iou,
        detections_per_img=d.max_det,
        topk_candidates=d.topk,
    )


class TorchvisionDetector(nn.Module):
    """torchvision's detector with multibox's ``detect``, so that evaluation (tiles included)
    runs it as it runs multibox's networks; its own transform resizes nothing (``min_size`` is the
    input size) and its post-processing settings are the run's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(list(images))

    def detect(self, output, image_size, **settings) -> list[Detections]:
        return [Detections(o["boxes"], o["scores"], o["labels"]) for o in output]


def cosine(fraction: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))


def train_for(name, run: Trainer, step, evaluate_now, budget: float, evals: int) -> list:
    """Train with ``step(images, targets)`` for ``budget`` seconds; evaluate ``evals`` times at equal intervals.

    The learning rate warms up linearly over the first tenth of the budget, then follows a
    cosine to zero at its end: both functions of elapsed time, fair to a slower model.
    """
    base_lr = run.config.train.lr
    history, elapsed, steps, seen, epoch = [], 0.0, 0, 0, 0
    next_eval = budget / evals
    while elapsed < budget:
        for images, targets in run.loader(epoch):
            started = time.perf_counter()
            fraction = elapsed / budget
            scale = min(1.0, 0.001 + fraction / WARMUP) * cosine(fraction)
            for group in run.optimizer.param_groups:
                group["lr"] = base_lr * scale * group["lr_scale"]
            step(images, targets)
            # the steps count, the batches' loading (the same pipeline for both) does not
            elapsed += time.perf_counter() - started
            steps, seen = steps + 1, seen + len(images)
            if elapsed >= next_eval or elapsed >= budget:
                metrics = evaluate_now()
                history.append((elapsed, seen, metrics["AP"], metrics["AP50"]))
                print(
                    f"{name:<12} {elapsed:7.1f} s  {seen:6d} images ({seen / elapsed:5.1f}/s)  "
                    f"AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}",
                    flush=True,
                )
                next_eval += budget / evals
            if elapsed >= budget:
                break
        epoch += 1
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0, help="training time per detector")
    parser.add_argument("--evals", type=int, default=6)
    parser.add_argument("--data", default="data/demo-digits")
    parser.add_argument("--preset", default="cpu_digits", help="a RetinaNet preset (cpu_digits, default, ...)")
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("overrides", nargs="*", help="key=value settings on top of the preset")
    args = parser.parse_args()
    if not Path(args.data).exists():
        print(f"rendering the digit scenes into {args.data}")
        synthesize_digits(args.data, train=3400, val=400, seed=0)  # as make demo
    config = load_config(args.preset, [f"data.path={args.data}", *args.overrides])
    budget = args.minutes * 60
    print(machine())

    torch.manual_seed(0)
    ours = Trainer(config)  # decides what the preset leaves to the data (the schedule is this script's)
    val, _ = load_dataset(args.data, "val", class_names=ours.train_data.class_names)
    val = DetectionSet(val.records[: args.val_images], val.class_names)
    ours.model.train()
    mine = train_for(
        "multibox",
        ours,
        lambda images, targets: ours.step(ours.losses(images, targets)),
        lambda: evaluate(ours.model, val, config)[0],
        budget,
        args.evals,
    )

    # torchvision: the same Trainer supplies data and an optimizer of the same kind; only the model differs
    torch.manual_seed(0)
    theirs = Trainer(config)
    peer = TorchvisionDetector(torchvision_model(config, len(theirs.train_data.class_names)))
    theirs.optimizer = build_optimizer(config.train, peer)
    their_step = torchvision_step(peer.model, theirs.optimizer, config.train.clip_grad)
    peer.train()
    reference = train_for("torchvision", theirs, their_step, lambda: evaluate(peer, val, config)[0], budget, args.evals)

    final = reference[-1][2]
    reached = next((t for t, _, ap, _ in mine if ap >= final), None)
    ratio = f"{mine[-1][2] / final:.1f}x" if final > 0 else "torchvision's is zero"
    print(f"\nfinal AP: multibox {mine[-1][2]:.4f}, torchvision {final:.4f} ({ratio})")
    if reached is None:
        print("multibox did not reach torchvision's final AP")
    else:
        print(f"multibox reached torchvision's final AP after {reached:.0f} s, {reached / budget:.2f} of the budget")
    print("target: at most 0.20 of the budget, and a final AP at least 10x torchvision's")


if __name__ == "__main__":
    main()
