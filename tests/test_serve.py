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
    status, answer = server.request("/v1/detect", *_multipart(b"\xff\xd8\xff", field="photo"))  # any field
    assert status == 400 and "could not be decoded" in answer["detail"]
    boundary = uuid.uuid4().hex
    text_only = f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--{boundary}--\r\n'
    status, answer = server.request(
        "/v1/detect", text_only.encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert status == 400 and "holds no file" in answer["detail"]


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


def test_favicon_and_a_file_in_any_multipart_field(served):
    server, _ = served
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/favicon.ico")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and response.headers["content-type"] == "image/png"
        assert response.read().startswith(b"\x89PNG")
    image = _jpeg(np.full((64, 64, 3), 120, np.uint8))
    by_image = server.request("/v1/detect?conf=0", *_multipart(image, field="image"))
    by_file = server.request("/v1/detect?conf=0", *_multipart(image, field="file"))
    assert by_image[0] == by_file[0] == 200 and by_image[1]["detections"] == by_file[1]["detections"]
    boundary = uuid.uuid4().hex
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n"
        for name in ("left", "right")
    )
    body = parts + f"--{boundary}--\r\n".encode()
    status, answer = server.request("/v1/detect", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 400 and "2 files ('left' (left.jpg), 'right' (right.jpg))" in answer["detail"]


def test_soak_of_images_of_varied_sizes_keeps_the_server_memory_flat(digits, tmp_path, capsys):
    """A real `multibox serve` process, 500 requests of JPEGs of 50 sizes to a model that keeps
    each image's aspect (minmax: every size another input shape): its RSS after the first 200
    grows by less than 50 MB (before the fix: hundreds; the 2,000-request figure is in BENCHMARKS.md)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from serve_soak import images, serve, soak

    from multibox.config import load_config
    from multibox.engine import train

    overrides = [f"data.path={digits}", f"output={tmp_path}", "input.resize=minmax", "input.size=[320, 320]",
                 "model.pretrained=none", "train.max_steps=1", "train.batch_size=4"]  # fmt: skip
    train(load_config("cpu_digits", overrides), progress=False)
    process, port = serve(tmp_path / "last.pt")
    try:
        rows = soak(port, process.pid, images(50), 500, 4)
    finally:
        process.terminate()
        process.wait(30)
    warm = next(mb for done, mb, _ in rows if done == 200)
    growth = max(mb for _, mb, _ in rows) - warm
    with capsys.disabled():
        print(f"\nsoak: 500 requests, server RSS {' '.join(f'{mb:.0f}' for _, mb, _ in rows)} MB; growth after 200: "
              f"{growth:+.1f} MB")  # fmt: skip
    assert rows[-1][2] == 0 and growth < 50


def test_a_two_stage_checkpoint_is_served(digits, tmp_path):
    """Faster R-CNN (its own output type) answers through the same server as the one-stage kinds."""
    from multibox.config import load_config
    from multibox.data.io import read_image
    from multibox.engine import train

    overrides = [f"data.path={digits}", f"output={tmp_path}", "data.val_split=", "model.backbone.pretrained=none",
                 "input.size=[64, 64]", "train.batch_size=2", "train.max_steps=1",
                 "detect.score_thresh=0.0"]  # fmt: skip
    train(load_config("faster_rcnn", overrides), progress=False)
    detector = load(tmp_path / "last.pt")
    path = sorted((digits / "JPEGImages").glob("val_*.jpg"))[0]
    expected = detector.predict(read_image(path), conf=0.0)
    with Server(create_app(detector)) as server:
        status, raw = server.request("/v1/detect?conf=0", *_multipart(path.read_bytes()))
    assert status == 200 and len(raw["detections"]) == len(expected) > 0
    assert np.allclose([d["box"] for d in raw["detections"]], expected.boxes.tolist(), atol=0.01)
