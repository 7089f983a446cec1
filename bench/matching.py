"""Matching, target encoding, focal and box loss: RetinaNetCriterion vs torchvision RetinaNet.compute_loss.

    python bench/matching.py [--images 8 --boxes 100 --size 512 --classes 20 --repeats 5 --device cpu]

Same head outputs, anchors (49,104 per 512x512 image) and targets for both; torchvision's
side includes its matching loop (``box_iou`` + ``Matcher`` per image) as in
``RetinaNet.compute_loss``. The criterion divides per image, as torchvision does
(``normalize="image"``); the script first checks both losses agree to 1e-5 relative.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from _timing import compare, machine, report

from multibox.anchors import pyramid_anchors
from multibox.criterion import RetinaNetCriterion


def make_inputs(images: int, boxes: int, size: int, classes: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    anchors = pyramid_anchors((size, size))
    logits = torch.randn(images, len(anchors), classes, generator=gen) - 4.0
    deltas = torch.randn(images, len(anchors), 4, generator=gen) * 0.2
    targets = []
    for _ in range(images):
        xy = torch.rand(boxes, 2, generator=gen) * size * 0.85
        wh = 12 + torch.rand(boxes, 2, generator=gen) * size * 0.4
        targets.append(
            {
                "boxes": torch.cat((xy, (xy + wh).clamp(max=size)), dim=1).to(device),
                "labels": torch.randint(0, classes, (boxes,), generator=gen).to(device),
            }
        )
    return logits.to(device), deltas.to(device), anchors.to(device), targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"machine: {machine()}; device: {device}")

    logits, deltas, anchors, targets = make_inputs(args.images, args.boxes, args.size, args.classes, device)
    model = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=args.classes
    ).to(device)
    criterion = RetinaNetCriterion(normalize="image")  # torchvision's defaults: IoU 0.5/0.4, low quality, L1

    def ours():
        return criterion((logits, deltas), anchors, targets)

    def theirs():
        return model.compute_loss(targets, {"cls_logits": logits, "bbox_regression": deltas}, [anchors] * args.images)

    mine, ref = ours(), theirs()
    for key, ref_key in (("cls", "classification"), ("box", "bbox_regression")):
        rel = abs(float(mine[key]) - float(ref[ref_key])) / abs(float(ref[ref_key]))
        print(
            f"{key} loss: multibox {float(mine[key]):.7f}  torchvision {float(ref[ref_key]):.7f}  rel. diff {rel:.1e}"
        )
        if rel > 1e-5:
            raise SystemExit(f"{key} loss differs from torchvision's by {rel:.1e} (relative)")
    with torch.no_grad():
        t_ours, t_theirs = compare(ours, theirs, args.repeats, device)
    report(f"{args.images} images x {args.boxes} boxes", t_ours, t_theirs, "torchvision")


if __name__ == "__main__":
    main()
