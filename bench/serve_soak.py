"""Memory of `multibox serve` under a long stream of requests: the server's resident set size
(RSS, from /proc) every 100 requests, and its growth after the first 200 (the warm-up).

    python bench/serve_soak.py --weights runs/demo/best.pt --requests 2000 --concurrency 4

The server runs as its own process on 127.0.0.1 (`multibox serve`), as a user would start it;
the images are JPEGs of random sizes (200 to 1,200 px a side, varied content), so that every
request allocates tensors of another shape. Bounded: each request waits for its answer, at most
``--concurrency`` at a time. The target (issue 25): under 50 MB of growth after the first 200.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _timing import machine
from PIL import Image


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def images(count: int, seed: int = 0) -> list[bytes]:
    """JPEGs of random sizes: smooth gradients with noise and rectangles (something to detect)."""
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        height, width = rng.integers(200, 1200, size=2)
        yy, xx = np.mgrid[0:height, 0:width]
        base = (xx[..., None] * rng.uniform(0, 0.3, 3) + yy[..., None] * rng.uniform(0, 0.3, 3)) % 255
        pixels = np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        for _ in range(rng.integers(1, 8)):
            x, y = rng.integers(0, width - 40), rng.integers(0, height - 40)
            pixels[y : y + rng.integers(10, 40), x : x + rng.integers(10, 40)] = rng.integers(0, 255, 3)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        found.append(buffer.getvalue())
    return found


def serve(weights: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "multibox", "serve", "--weights", str(weights), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.2)


def soak(port: int, pid: int, data: list[bytes], requests: int, concurrency: int, every: int = 100) -> list:
    """``(requests done, RSS MB, errors)`` every ``every`` requests."""

    def one(index: int) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/detect", data=data[index % len(data)], headers={"Content-Type": "image/jpeg"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    rows, errors = [(0, rss_mb(pid), 0)], 0
    with ThreadPoolExecutor(concurrency) as pool:
        for start in range(0, requests, every):
            errors += sum(status != 200 for status in pool.map(one, range(start, min(start + every, requests))))
            rows.append((min(start + every, requests), rss_mb(pid), errors))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    print(machine())
    data = images(50)
    process, port = serve(args.weights)
    try:
        started = time.perf_counter()
        rows = soak(port, process.pid, data, args.requests, args.concurrency)
        elapsed = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)
    print(f"{args.requests} requests, {args.concurrency} at a time, {elapsed:.0f} s; server RSS (MB):")
    print("  " + "  ".join(f"{done}: {mb:.0f}" for done, mb, _ in rows))
    warm = next(mb for done, mb, _ in rows if done >= args.warmup)
    peak = max(mb for done, mb, _ in rows if done >= args.warmup)
    print(f"growth after the first {args.warmup}: {rows[-1][1] - warm:+.1f} MB at the end, {peak - warm:+.1f} MB "
          f"at the peak; errors {rows[-1][2]}")  # fmt: skip


if __name__ == "__main__":
    main()
