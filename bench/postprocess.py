"""multibox.postprocess vs torchvision's RetinaNet.postprocess_detections, same inputs, same process.

    python bench/postprocess.py [--images 8 --size 512 --classes 20 --repeats 10 --device cpu]

Two workloads on RetinaNet's 49,104 anchors per 512x512 image (P3-P7, 9 anchors a location):
``dense``: random logits, about 20,000 class scores per image above 0.05; ``peaky``: what a
trained detector gives, a few dozen objects each with many overlapping confident candidates,
so that NMS removes most of them. The script first checks that both give the same detections
(one to one: labels equal, scores within 1e-6, boxes within 1e-4 px).
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from _timing import compare, machine, report

from multibox.anchors import pyramid_anchors, pyramid_grid_sizes
from multibox.coding import DeltaCoder
from multibox.postprocess import postprocess
from multibox.structures import Detections, match_detections

STRIDES = (8, 16, 32, 64, 128)


def make_inputs(kind: str, images: int, size: int, classes: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    anchors = pyramid_anchors((size, size))
    num = len(anchors)
    if kind == "dense":
        logits = torch.randn(images, num, classes, generator=gen) - 5.0
    else:
        logits = torch.randn(images, num, classes, generator=gen) - 7.0
        for b in range(images):
            centres = torch.randint(0, num, (30,), generator=gen)
            near = (centres[:, None] + torch.arange(-40, 40)[None]).clamp(0, num - 1).flatten()
            logits[b, near, torch.randint(0, classes, (len(near),), generator=gen)] += 9.0
    deltas = torch.randn(images, num, 4, generator=gen) * 0.2
    return logits.to(device), deltas.to(device), anchors.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"machine: {machine()}; device: {device}")

    level_sizes = [h * w * 9 for h, w in pyramid_grid_sizes(args.size, STRIDES)]
    image_sizes = [(args.size, args.size)] * args.images
    model = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=args.classes, detections_per_img=100
    )  # score 0.05, top-1000 per level, NMS 0.5: the same settings as multibox's defaults
    coder = DeltaCoder()
    for kind in ("dense", "peaky"):
        logits, deltas, anchors = make_inputs(kind, args.images, args.size, args.classes, device)
        head = {"cls_logits": list(logits.split(level_sizes, 1)), "bbox_regression": list(deltas.split(level_sizes, 1))}
        per_image = [list(anchors.split(level_sizes))] * args.images

        def ours(logits=logits, deltas=deltas, anchors=anchors):
            return postprocess(logits, deltas, anchors, image_sizes, coder=coder, level_sizes=level_sizes)

        def theirs(head=head, per_image=per_image):
            return model.postprocess_detections(head, per_image, image_sizes)

        candidates = int((logits.sigmoid() > 0.05).sum()) // args.images
        detections = 0
        for o, t in zip(ours(), theirs(), strict=True):
            t = Detections(t["boxes"], t["scores"], t["labels"])
            if len(o) != len(t) or (match_detections(o, t, score_atol=1e-6, box_atol=1e-4) < 0).any():
                raise SystemExit(f"{kind}: detections differ from torchvision's")
            detections += len(o)
        with torch.no_grad():
            t_ours, t_theirs = compare(ours, theirs, args.repeats, device)
        label = f"{kind}: {candidates} scores>0.05/img"
        report(label, t_ours, t_theirs, "torchvision")
        print(f"{'':<34} same detections ({detections / args.images:.0f} per image)", flush=True)


if __name__ == "__main__":
    main()
