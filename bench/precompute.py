"""A preset's training step with and without ``train.precompute``, alternated in one process.

    python bench/precompute.py [--preset ssd_multihead] [--data data/demo-digits] [--batches 8] [--repeats 5]

Both sides are the same trainer, model and batches: ``multibox`` reads the frozen leading
blocks' outputs from the :class:`~multibox.models.backbones.FrozenPrefixCache` (filled by one
pass over the batches first, as the first epoch fills it), the peer is the same step with the
cache detached, computing those blocks as a run without ``train.precompute`` does. A step is
forward, loss, backward and update; loading the batch is outside it (the same for both). The
script first checks that both sides give the same loss on a batch.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from _timing import compare, machine, report

from multibox.config import load_config
from multibox.engine import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ssd_multihead")
    parser.add_argument("--data", default="data/demo-digits")
    parser.add_argument("--batches", type=int, default=8, help="batches per timed pass")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as output:
        config = load_config(args.preset, [f"data.path={args.data}", f"output={output}", "train.precompute=true"])
        run = Trainer(config)
    stages = next(m for m in run.model.modules() if getattr(m, "cache", None) is not None)
    cache = stages.cache
    loader = iter(run.loader(0))
    batches = [next(loader) for _ in range(args.batches)]
    with torch.no_grad():
        for images, _ in batches:  # what the first epoch does: each image's frozen blocks, once
            run.model(images.contiguous(memory_format=run.memory_format))

    def detached(fn):
        def call():
            stages.cache = None
            try:
                return fn()
            finally:
                stages.cache = cache

        return call

    images, targets = batches[0]

    def loss() -> torch.Tensor:
        torch.manual_seed(0)  # the same dropout masks for both
        with torch.no_grad():
            return run.losses(images, targets)["total"]

    torch.testing.assert_close(loss(), detached(loss)(), rtol=1e-4, atol=1e-5)

    def steps():
        for images, targets in batches:
            run.step(run.losses(images, targets))

    print(machine())  # before the timing: its watch on other processes covers it
    hits = cache.hits
    ours, theirs = compare(steps, detached(steps), args.repeats, run.device)
    assert cache.hits > hits, "the cached side did not read the cache"
    print(f"{args.preset}: batches of {config.train.batch_size}, {args.batches} steps a pass, {cache!r}")
    report(f"{args.batches} training steps", ours, theirs, "no cache")
    images_per_s = args.batches * config.train.batch_size
    print(f"images/s (steps only): with the cache {images_per_s / ours:.1f}, without {images_per_s / theirs:.1f}")


if __name__ == "__main__":
    main()
