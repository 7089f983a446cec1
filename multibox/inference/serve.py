"""A prediction server: ``POST /v1/detect``, ``GET /healthz`` and a web page, on FastAPI + uvicorn.

    app = create_app(multibox.load("runs/demo/best.pt"))
    uvicorn.run(app, host="127.0.0.1", port=8000)      # or: multibox serve --weights ...

One model serves every request: inference runs in one thread of its own, a request at a time
(the model is not re-entrant, two inferences at once would only share the same cores, and one
thread keeps the memory its tensors take in one of glibc's arenas). Requests are
checked before any decoding: the body's size, that it is an image (by its first bytes), and its
pixel count (from the header, against decompression bombs); each gets a clear 4xx answer, and
an inference that takes longer than the timeout a 504.
"""

from __future__ import annotations

import asyncio
import functools
import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from .predictor import Predictor

__all__ = ["Limits", "create_app"]


@dataclass(frozen=True)
class Limits:
    """What a request may ask of the server.

    Attributes:
        max_bytes: largest upload (413 beyond).
        max_pixels: largest image, width x height (413 beyond; read from the header first).
        timeout: seconds an inference may take (504 beyond).
    """

    max_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    timeout: float = 30.0


# Leading bytes of the formats the server decodes
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"RIFF", b"II*\x00", b"MM\x00*", b"GIF8")


def _decode(data: bytes, limits: Limits) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` pixels of an uploaded image, or an HTTPException with its status."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise HTTPException(
            400, "the request holds no image: send it as a multipart file field (e.g. 'image') or as the body"
        )
    if not data.startswith(_SIGNATURES) or (data.startswith(b"RIFF") and data[8:12] != b"WEBP"):
        raise HTTPException(415, "not an image: send a JPEG, PNG, BMP, WebP, TIFF or GIF file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header, before any pixel is decoded
            if width * height > limits.max_pixels:
                raise HTTPException(
                    413,
                    f"the image is {width}x{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,}",
                )
            return np.array(image.convert("RGB"))  # writable: torch takes it as is
    except HTTPException:
        raise
    except Image.DecompressionBombError as error:  # PIL's own guard, far above max_pixels by default
        raise HTTPException(413, f"the image is too large to decode ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise HTTPException(400, f"the image could not be decoded ({error})") from None


def create_app(predictor: Predictor, limits: Limits | None = None, tile: int | None = None):
    """The FastAPI application serving ``predictor``; ``tile`` cuts each image into tiles of that
    many pixels (default: as the model was trained)."""
    limits = limits or Limits()
    inference = ThreadPoolExecutor(1, thread_name_prefix="multibox-inference")
    return_memory = _MemoryReturn()
    app = FastAPI(title="multibox", summary="object detection", version="1")
    page = resources.files("multibox.inference").joinpath("static/index.html").read_text()

    def infer(pixels: np.ndarray, conf: float | None) -> dict:
        started = time.perf_counter()
        found = predictor.predict(pixels, conf=conf, tile=tile)
        elapsed = time.perf_counter() - started
        return_memory()
        answer = _answer(pixels, found, elapsed)
        problem = predictor.preprocess.shrinks(pixels.shape[:2], tile)
        if problem is not None:
            side = predictor.preprocess.size[0]
            answer["warning"] = (f"the image is {problem}; `multibox serve --tile {side}` cuts images into tiles at "
                                 f"their own resolution")  # fmt: skip
        return answer

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(_favicon(), media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    @app.get("/healthz")
    def health() -> dict:
        return {"status": "ok", "model": predictor.config.model.kind, "classes": predictor.class_names}

    @app.post("/v1/detect")
    async def detect(request: Request, conf: float | None = None) -> dict:
        """Detections in an image sent as a multipart file (any one field) or as the raw body; ``conf``
        overrides the model's score threshold."""
        if conf is not None and not 0 <= conf <= 1:
            raise HTTPException(422, f"conf is a score threshold in [0, 1], got {conf}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes + 4096:
            raise HTTPException(413, f"the upload is {int(declared):,} bytes; the limit is {limits.max_bytes:,}")
        data = await _read_body(request, limits)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            data = await _multipart_image(request, data)
        if len(data) > limits.max_bytes:
            raise HTTPException(413, f"the image is {len(data):,} bytes; the limit is {limits.max_bytes:,}")
        pixels = _decode(data, limits)
        try:
            running = asyncio.get_running_loop().run_in_executor(inference, infer, pixels, conf)
            return await asyncio.wait_for(running, limits.timeout)
        except TimeoutError:
            raise HTTPException(504, f"inference took longer than {limits.timeout:g} s") from None

    return app


class _MemoryReturn:
    """Hands the memory glibc keeps after freeing back to the system every ``every`` calls
    (``malloc_trim``; a no-op where the C library is not glibc).

    A network's activations are a few MiB each and of another size for each image size; glibc
    reuses such freed blocks poorly, so a server's resident memory grew by 280-470 MB over 2,000
    requests of varied sizes and stayed (BENCHMARKS.md, the soak). Trimming every 10 requests keeps
    it flat; in one process it makes an image about 1.1x slower, after every request 1.36x
    (`bench/malloc_trim.py`, Intel Xeon), and through the server it does not show.
    """

    def __init__(self, every: int = 10):
        import ctypes
        import ctypes.util
        import sys

        self.every, self.calls, self._trim = every, 0, None
        if sys.platform.startswith("linux"):
            try:
                self._trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
                pass

    def __call__(self) -> None:
        self.calls += 1
        if self._trim is not None and self.calls % self.every == 0:
            self._trim(0)


@functools.cache
def _favicon() -> bytes:
    """A 32x32 PNG: two boxes, as the page draws them."""
    import cv2

    icon = np.zeros((32, 32, 4), np.uint8)
    cv2.rectangle(icon, (2, 6), (20, 26), (232, 115, 26, 255), 3)  # BGRA
    cv2.rectangle(icon, (14, 3), (29, 17), (60, 170, 40, 255), 3)
    return cv2.imencode(".png", icon)[1].tobytes()


def _answer(pixels: np.ndarray, found, elapsed: float) -> dict:
    """The JSON answer: the image's size, each detection's box (image pixels), score, label and
    class name, and the inference time."""
    rows = zip(found.boxes.tolist(), found.scores.tolist(), found.labels.tolist(), strict=True)
    return {
        "image": {"width": int(pixels.shape[1]), "height": int(pixels.shape[0])},
        "detections": [
            {"box": [round(v, 2) for v in box], "score": round(score, 4), "label": label, "class": found.names[label]}
            for box, score, label in rows
        ],
        "inference_ms": round(elapsed * 1e3, 1),
    }


async def _read_body(request: Request, limits: Limits) -> bytes:
    """The request's body, read in chunks and refused (413) as soon as it passes the limit."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_bytes + 4096:  # multipart framing beside the file
            raise HTTPException(413, f"the upload is over the limit of {limits.max_bytes:,} bytes")
    return bytes(body)


async def _multipart_image(request: Request, body: bytes) -> bytes:
    """The bytes of the one file of a multipart body already read, whatever its field's name
    (``image`` for the page, ``file`` for most clients)."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartParser

    async def replay():
        yield body
        yield b""

    try:
        form = await MultiPartParser(request.headers, replay()).parse()
    except Exception as error:  # the parser's own exception types
        raise HTTPException(400, f"the multipart body could not be read ({error})") from None
    files = [(name, value) for name, value in form.multi_items() if isinstance(value, UploadFile)]
    if not files:
        raise HTTPException(400, "the multipart body holds no file: send the image as a file field (e.g. 'image')")
    if len(files) > 1:
        named = ", ".join(f"'{name}' ({value.filename or 'no name'})" for name, value in files)
        raise HTTPException(400, f"the multipart body holds {len(files)} files ({named}): send one image a request")
    return await files[0][1].read()
