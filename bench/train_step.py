"""One training step of RetinaNet-R50-FPN: multibox vs torchvision, same model, weights and batch.

    python bench/train_step.py [--batch 2 --size 512 --classes 20 --repeats 5 --device cpu]

Both sides are the paper's model (ResNet-50 with frozen BatchNorm and the stem and layer1
frozen, FPN P3-P7 with P6 from P5 as in torchvision, the 4 x 256 heads, 9 anchors); multibox
loads torchvision's state dict unchanged. A step is forward, loss (matching, focal loss, box
loss), backward and an SGD update. The script first checks that both compute the same loss
(torchvision normalises per image, so multibox runs with ``normalize="image"`` here).
"""

from __future__ import annotations

import argparse

import torch
from _timing import compare, machine, report
from torchvision.models import resnet50
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.retinanet import RetinaNet as TorchvisionRetinaNet
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from multibox.criterion import RetinaNetCriterion
from multibox.models import build_retinanet

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def build_pair(classes: int, size: int, device: torch.device, memory_format=torch.channels_last):
    torch.manual_seed(0)
    body = _resnet_fpn_extractor(
        resnet50(norm_layer=FrozenBatchNorm2d), 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
    )
    theirs = TorchvisionRetinaNet(
        body, classes, min_size=size, max_size=size, image_mean=[0.0] * 3, image_std=[1.0] * 3, detections_per_img=100
    ).to(device)
    ours = build_retinanet(classes, "resnet50", "none", p6_from="p5", trainable_stages=3)
    ours.load_state_dict(theirs.state_dict())
    ours = ours.to(device, memory_format=memory_format)
    return ours, theirs


def make_batch(batch: int, size: int, classes: int, device: torch.device):
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=gen)
    targets = []
    for _ in range(batch):
        xy = torch.rand(6, 2, generator=gen) * size * 0.7
        wh = 16 + torch.rand(6, 2, generator=gen) * size * 0.3
        boxes = torch.cat((xy, (xy + wh).clamp(max=size)), dim=1)
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(0, classes, (6,), generator=gen).to(device)})
    return images.to(device), targets


def pair_from_arguments(doc: str, repeats: int, batch: bool = False):
    """Parse the shared options (size, classes, repeats, device, memory format; ``--batch`` if
    asked) and build the model pair: ``(args, device, memory_format, ours, theirs)``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if batch:
        parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--memory-format", choices=list(MEMORY_FORMATS), default="channels_last", help="multibox's side"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    memory_format = MEMORY_FORMATS[args.memory_format]
    return args, device, memory_format, *build_pair(args.classes, args.size, device, memory_format)


def main() -> None:
    args, device, memory_format, ours, theirs = pair_from_arguments(__doc__, repeats=5, batch=True)
    images, targets = make_batch(args.batch, args.size, args.classes, device)
    anchors = ours.anchors((args.size, args.size)).to(device)
    criterion = RetinaNetCriterion(normalize="image")
    ours.train(), theirs.train()
    ours_opt = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    theirs_opt = torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == sum(
        p.numel() for p in theirs.parameters() if p.requires_grad
    ), "the two models train different parameters"
    formatted = images.contiguous(memory_format=memory_format)
    image_list = list(images)

    with torch.no_grad():
        mine = criterion(ours(formatted), anchors, targets)
        ref = theirs(image_list, targets)
    print(
        f"loss check: multibox cls {mine['cls']:.5f} box {mine['box']:.5f}   "
        f"torchvision cls {ref['classification']:.5f} box {ref['bbox_regression']:.5f}"
    )
    torch.testing.assert_close(mine["cls"], ref["classification"], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(mine["box"], ref["bbox_regression"], rtol=1e-3, atol=1e-4)

    def our_step():
        losses = criterion(ours(formatted), anchors, targets)
        ours_opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        ours_opt.step()

    def their_step():
        losses = theirs(image_list, targets)
        theirs_opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        theirs_opt.step()

    print(machine())
    t_ours, t_theirs = compare(our_step, their_step, args.repeats, device)
    report(f"train step, batch {args.batch} at {args.size} ({args.memory_format})", t_ours, t_theirs, "torchvision")
    print(f"time ratio multibox / torchvision: {t_ours / t_theirs:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
