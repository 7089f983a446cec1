"""The prediction server, against a real uvicorn on 127.0.0.1: API, page, bad input, load."""

import io
import json
import socket
import statistics
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from multibox import load
from multibox.inference.serve import Limits, create_app


class Server:
    """uvicorn serving ``app`` in a thread on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def request(self, path, data=None, headers=None):
        """``(status, parsed JSON or text)`` of a GET (no data) or POST."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, body, kind = response.status, response.read(), response.headers.get("content-type", "")
        except urllib.error.HTTPError as error:
            status, body, kind = error.code, error.read(), error.headers.get("content-type", "")
        return status, json.loads(body) if kind.startswith("application/json") else body.decode()


def _jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _multipart(data: bytes, field: str = "image") -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="scene.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture(scope="module")
def served(digits, digits_run):
    detector = load(digits_run / "best.pt")
    with Server(create_app(detector, Limits(max_bytes=200_000, max_pixels=1_000_000))) as server:
        yield server, detector


def test_detect_health_and_page(served, digits):
    from multibox.data.io import read_image

    server, detector = served
    status, health = server.request("/healthz")
    assert status == 200 and health["status"] == "ok" and health["classes"] == detector.class_names
    status, page = server.request("/")
    assert status == 200 and 'id="threshold"' in page and "/v1/detect" in page
    path = sorted((digits / "JPEGImages").glob("val_*.jpg"))[0]
    data = path.read_bytes()
    expected = detector.predict(read_image(path), conf=0.01)
    status, raw = server.request("/v1/detect?conf=0.01", data, {"Content-Type": "image/jpeg"})
    assert status == 200 and raw["image"] == {"width": 64, "height": 64}
    assert len(raw["detections"]) == len(expected) > 0
    for found, box, score, label in zip(
        raw["detections"], expected.boxes.tolist(), expected.scores.tolist(), expected.labels.tolist(), strict=True
    ):
        assert np.allclose(found["box"], box, atol=0.01) and found["score"] == pytest.approx(score, abs=1e-4)
        assert found["label"] == label and found["class"] == detector.class_names[label]
    status, form = server.request("/v1/detect?conf=0.01", *_multipart(data))
    assert status == 200 and form["detections"] == raw["detections"]


def test_images_far_larger_than_the_input_are_tiled_on_request_or_answered_with_a_warning(served, digits, digits_run):
    from multibox.data.io import read_image

    server, detector = served
    scenes = [read_image(p) for p in sorted((digits / "JPEGImages").glob("*.jpg"))[:9]]
    large = np.concatenate([np.concatenate(scenes[i : i + 3], axis=1) for i in (0, 3, 6)], axis=0)  # 192x192
    status, answer = server.request("/v1/detect?conf=0.01", _jpeg(large), {"Content-Type": "image/jpeg"})
    assert status == 200 and "3.0x the network's 64x64 input" in answer["warning"]
    assert "multibox serve --tile 64" in answer["warning"]
    status, small = server.request("/v1/detect", _jpeg(scenes[0]), {"Content-Type": "image/jpeg"})
    assert status == 200 and "warning" not in small
    with Server(create_app(detector, tile=64)) as tiled:
        status, answer = tiled.request("/v1/detect?conf=0.01", _jpeg(large), {"Content-Type": "image/jpeg"})
    expected = detector.predict(_decoded(large), conf=0.01, tile=64)
    assert status == 200 and "warning" not in answer and len(answer["detections"]) == len(expected) > 0
    assert np.allclose([d["box"] for d in answer["detections"]], expected.boxes.tolist(), atol=0.01)


def _decoded(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` as the server sees them: through JPEG and back."""
    from PIL import Image

    with Image.open(io.BytesIO(_jpeg(pixels))) as image:
        return np.array(image.convert("RGB"))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (its data is a stub: never decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_bad_requests_get_clear_4xx_answers(served):
    server, _ = served
    cases = [
        (b"", 400, "no image"),
        (b"hello, this is text", 415, "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 200, 400, "could not be decoded"),  # a JPEG signature, then nothing
        (_png_header(5_000, 5_000), 413, "5000x5000 = 25,000,000 pixels"),  # refused from its header
        (_png_header(20_000, 20_000), 413, "too large"),  # PIL's own decompression-bomb guard
        (b"\xff\xd8\xff" + b"\x00" * 300_000, 413, "limit"),  # larger than max_bytes
    ]
    for data, code, words in cases:
        status, answer = server.request("/v1/detect", data, {"Content-Type": "application/octet-stream"})
        assert status == code and words in answer["detail"], (code, answer)
    status, answer = server.request("/v1/detect?conf=2", b"x")
    assert status == 422 and "conf" in str(answer["detail"])
    status, answer = server.request("/v1/detect", *_multipart(b"\xff\xd8\xff", field="photo"))
    assert status == 400 and "no file field 'image'" in answer["detail"]


def test_a_slow_inference_times_out_with_504(digits, digits_run):
    detector = load(digits_run / "best.pt")
    pixels = np.zeros((64, 64, 3), np.uint8)
    with Server(create_app(detector, Limits(timeout=1e-4))) as server:
        status, answer = server.request("/v1/detect", _jpeg(pixels))
    assert status == 504 and "longer than" in answer["detail"]


def test_three_hundred_requests_eight_at_a_time_without_errors(served, capsys):
    server, _ = served
    data = _jpeg(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))

    def one(_):
        started = time.perf_counter()
        status, answer = server.request("/v1/detect", data, {"Content-Type": "image/jpeg"})
        return status, time.perf_counter() - started, answer

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(300)))
    errors = [(s, a) for s, _, a in results if s != 200]
    assert not errors, errors[:3]
    latencies = sorted(t for _, t, _ in results)
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * len(latencies)) - 1]
    with capsys.disabled():
        print(f"\nload: 300 requests, 8 concurrent: p50 {p50 * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms, 0 errors")
