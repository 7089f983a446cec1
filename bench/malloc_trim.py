"""What handing freed memory back to the system costs the server's inference: the time an image
takes with ``malloc_trim(0)`` every N predictions against none, interleaved in one process.

    python bench/malloc_trim.py --weights W --every 1 10

The images are `serve_soak.py`'s (50 JPEGs of 200-1,200 px a side); blocks of 50 predictions
alternate between trimming every N and not trimming, six blocks each, and the medians per image
are compared. `multibox serve` trims every 10 requests (`inference/serve.py`).
"""

from __future__ import annotations

import argparse
import ctypes
import io
import statistics
import time
from pathlib import Path

import numpy as np
from _timing import machine
from PIL import Image
from serve_soak import images

import multibox


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--blocks", type=int, default=6)
    args = parser.parse_args()
    print(machine())
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    detector = multibox.load(args.weights)
    data = [np.array(Image.open(io.BytesIO(b)).convert("RGB")) for b in images(50)]
    for pixels in data:  # warm-up: every input shape once
        detector.predict(pixels)

    def block(every: int) -> float:
        started = time.perf_counter()
        for i, pixels in enumerate(data, start=1):
            detector.predict(pixels)
            if every and i % every == 0:
                trim(0)
        return (time.perf_counter() - started) / len(data) * 1e3

    for every in args.every:
        times: dict[int, list[float]] = {0: [], every: []}
        for _ in range(args.blocks):
            for mode in (0, every):
                times[mode].append(block(mode))
        plain, trimmed = statistics.median(times[0]), statistics.median(times[every])
        print(
            f"malloc_trim every {every}: {trimmed:.1f} ms an image against {plain:.1f} without: {trimmed / plain:.3f}x"
        )


if __name__ == "__main__":
    main()
