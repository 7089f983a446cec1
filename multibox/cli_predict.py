"""``multibox predict``: detections of images or folders, annotated copies and a COCO results file."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .cli_errors import fail
from .data.records import DataError

__all__ = ["predict", "warn_if_large"]


def predict(
    sources: list[str] = typer.Argument(..., help="images, folders or globs"),
    weights: Path = typer.Option(..., help="checkpoint"),
    out: Path = typer.Option(Path("runs/predict"), help="folder for annotated images and predictions.json"),
    conf: float = typer.Option(0.3, help="score threshold, 0..1"),
    iou: float | None = typer.Option(None, help="NMS IoU threshold (default: the run's, or the exported graph's)"),
    runtime: str = typer.Option("auto", help="torch, onnx (onnxruntime), openvino (an .xml IR) or auto (by the file)"),
    tile: int | None = typer.Option(None, help="cut large images into overlapping tiles of this side (pixels)"),
    overlap: float | None = typer.Option(
        None, help="with --tile: overlap of neighbouring tiles, a fraction of a tile (default 0.2)"
    ),
    max_side: int = typer.Option(4096, help="annotated copies: longest side in pixels (0: the image's own)"),
    precision: str | None = typer.Option(
        None, help="fp32 or bf16: a checkpoint's network under bf16 autocast (faster on AMX CPUs); an IR's instead"
    ),
) -> None:
    """Detect objects in images; writes annotated copies (JPEG) and a COCO results JSON (boxes in original pixels).

    Example: multibox predict --weights runs/demo/best.pt data/digits/JPEGImages/val_0000*.jpg --out preds
    Example: multibox predict --weights digits.onnx --runtime onnx data/digits/JPEGImages/val_0000*.jpg
    Example: multibox predict --weights digits.xml --runtime openvino data/digits/JPEGImages/val_0000*.jpg
    Example: multibox predict --weights runs/demo/best.pt aerial.jpg --tile 512 --overlap 0.2
    Example: multibox predict --weights runs/demo/best.pt --precision bf16 data/digits/JPEGImages/val_0000*.jpg
    """
    from .data.formats import write_coco_results
    from .data.io import atomic_write_text, read_image, write_image
    from .detect import TILE_OVERLAP
    from .inference import load
    from .viz import draw_detections

    _check_predict_options(conf, iou, tile, overlap, max_side)
    paths = _image_paths(sources)
    try:
        _check_runtime(runtime, weights)
        predictor = load(weights, precision=precision)
        found, images = [], []
        warned = False
        for index, path in enumerate(paths, start=1):
            pixels = read_image(path)
            if tile is None and not warned:
                warned = warn_if_large(path, pixels.shape[:2], predictor.preprocess)
            with _TileProgress(path) as progress:
                det = predictor.predict(pixels, conf=conf, iou=iou, tile=tile, overlap=overlap or TILE_OVERLAP,
                                        progress=progress)  # fmt: skip
            shown, factor = _shrunk(pixels, max_side)
            drawn = draw_detections(shown, det.boxes.numpy() * factor, det.labels.numpy(), det.names,
                                    det.scores.numpy())  # fmt: skip
            write_image(out / _copy_name(path), drawn, quality=90)
            images.append({"id": index, "file_name": str(path), "height": pixels.shape[0], "width": pixels.shape[1]})
            found.append(det)
    except (DataError, ValueError, RuntimeError, OSError) as error:
        fail(error)
    categories = list(range(1, len(predictor.class_names) + 1))
    write_coco_results(out / "predictions.json", range(1, len(found) + 1), found, categories, predictor.class_names)
    atomic_write_text(out / "images.json", json.dumps(images))
    typer.echo(f"{len(paths)} images, {sum(len(d) for d in found)} detections: {out}")


def _check_predict_options(conf: float, iou: float | None, tile: int | None, overlap: float | None, max_side: int):
    problems = []
    if not 0 <= conf <= 1:
        problems.append(f"--conf is a score threshold between 0 and 1, got {conf:g}")
    if iou is not None and not 0 <= iou <= 1:
        problems.append(f"--iou is an IoU threshold between 0 and 1, got {iou:g}")
    if tile is not None and tile < 32:
        problems.append(f"--tile is a tile's side in pixels (32 or more, e.g. the model's input size), got {tile}")
    if overlap is not None and tile is None:
        problems.append("--overlap is the overlap of tiles: give --tile N with it (e.g. --tile 512 --overlap 0.2)")
    elif overlap is not None and not 0 <= overlap < 1:
        problems.append(f"--overlap is a fraction of a tile, 0 or more and less than 1, got {overlap:g}")
    if max_side < 0:
        problems.append(f"--max-side is a side in pixels, or 0 for the image's own, got {max_side}")
    if problems:
        fail(ValueError("; ".join(problems)))


def _copy_name(path: Path) -> str:
    """The annotated copy's file name: JPEG, named after the image (``a.png`` -> ``a.png.jpg``)."""
    return path.name if path.suffix.lower() in (".jpg", ".jpeg") else f"{path.name}.jpg"


def _shrunk(pixels, max_side: int):
    """``pixels`` with its longest side at most ``max_side`` (0: as it is), and the factor applied."""
    import cv2

    longest = max(pixels.shape[:2])
    if not max_side or longest <= max_side:
        return pixels, 1.0
    factor = max_side / longest
    size = (max(1, round(pixels.shape[1] * factor)), max(1, round(pixels.shape[0] * factor)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA), factor


class _TileProgress:
    """A progress bar (on stderr) for the tiles of one image, shown once it has more than one batch."""

    def __init__(self, path: Path):
        self.path, self.bar, self.task = path, None, None

    def __enter__(self):
        return self.update

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            if done >= total:
                return
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(f"{self.path.name}: tiles"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True))  # fmt: skip
            self.task = self.bar.add_task("tiles", total=total)
            self.bar.start()
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def warn_if_large(name, image_size, preprocess) -> bool:
    """Say so (once) when an image is over twice the network's input each way and is not tiled:
    its objects shrink as much, and small ones vanish."""
    problem = preprocess.shrinks(image_size)
    if problem is not None:
        typer.secho(f"warning: {name} is {problem}; --tile {preprocess.size[0]} cuts it into tiles at its own "
                    f"resolution", fg=typer.colors.YELLOW, err=True)  # fmt: skip
    return problem is not None


def _image_paths(sources: list[str]) -> list[Path]:
    """The image files that ``sources`` (files, folders, globs) name, or exit with an error."""
    import glob

    from .data.io import IMAGE_SUFFIXES

    paths: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            paths += sorted(Path(p) for p in glob.glob(source))
    if not paths:
        fail(FileNotFoundError(f"no images found in {sources}"))
    return paths


def _check_runtime(runtime: str, weights: Path) -> None:
    runtimes = {"torch": ".pt", "onnx": ".onnx", "openvino": ".xml"}
    if runtime != "auto" and runtime not in runtimes:
        raise ValueError(f"--runtime must be auto, torch, onnx or openvino, got {runtime!r}")
    if runtime in ("onnx", "openvino") and weights.suffix.lower() != runtimes[runtime]:
        fmt = f" --format {runtime}" if runtime == "openvino" else ""
        raise ValueError(f"--runtime {runtime} runs a {runtimes[runtime]} file, got {weights}; make one with "
                         f"`multibox export --weights CKPT{fmt}`")  # fmt: skip
    if runtime == "torch" and weights.suffix.lower() in (".onnx", ".xml"):
        raise ValueError(f"--runtime torch runs a checkpoint (.pt), got {weights}")
