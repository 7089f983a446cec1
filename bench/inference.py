"""Batch-1 inference latency at 512x512: multibox vs torchvision, same RetinaNet-R50-FPN and weights.

    python bench/inference.py [--size 512 --classes 20 --repeats 10 --device cpu]

Latency is image tensor in, final detections out: the network and post-processing (decode,
score threshold 0.05, top-1000 per level, NMS 0.5, 100 detections). The head's biases are
set so that the random weights give hundreds of candidates, as a trained detector does; the
script first checks that both return the same detections.
"""

from __future__ import annotations

import torch
from _timing import compare, machine, report
from train_step import pair_from_arguments

from multibox.coding import DeltaCoder
from multibox.postprocess import postprocess
from multibox.structures import Detections, match_detections


def main() -> None:
    args, device, memory_format, ours, theirs = pair_from_arguments(__doc__, repeats=10)
    with torch.no_grad():  # candidates above the score threshold, spread over classes and levels
        gen = torch.Generator().manual_seed(2)
        bias = theirs.head.classification_head.cls_logits.bias
        bias.copy_((torch.randn(bias.shape, generator=gen) * 2.0).to(device))
        ours.head.classification_head.cls_logits.bias.copy_(bias)
    ours.eval(), theirs.eval()
    size = (args.size, args.size)
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3)).to(device)
    anchors = ours.anchors(size).to(device)
    level_sizes = ours.level_sizes(size)
    formatted = image.contiguous(memory_format=memory_format)

    @torch.no_grad()
    def ours_run():
        (det,) = postprocess(*ours(formatted), anchors, [size], coder=DeltaCoder(), level_sizes=level_sizes)
        return det

    @torch.no_grad()
    def theirs_run():
        return theirs([image[0]])[0]

    mine, ref = ours_run(), theirs_run()
    print(f"detections: multibox {len(mine)}, torchvision {len(ref['scores'])}")
    ref = Detections(ref["boxes"], ref["scores"], ref["labels"])
    # the same convolutions, but channels-last and a resize of torchvision's may reorder float sums
    if len(mine) != len(ref) or (match_detections(mine, ref, score_atol=1e-4, box_atol=1e-3) < 0).any():
        raise SystemExit("detections differ from torchvision's")
    print(machine())
    t_ours, t_theirs = compare(ours_run, theirs_run, args.repeats, device)
    report(f"batch-1 latency at {args.size} ({args.memory_format})", t_ours, t_theirs, "torchvision")
    print(f"time ratio multibox / torchvision: {t_ours / t_theirs:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
