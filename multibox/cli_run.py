"""``multibox train | lr-find | eval | anchors | export | serve`` (``predict``: cli_predict.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .cli_errors import fail
from .config import PRESETS, ConfigError
from .data.records import DataError


def train(
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides, e.g. train.lr=0.02"),
    config: Path | None = typer.Option(None, "--config", help="preset name or YAML recipe (see multibox/configs)"),
    preset: str | None = typer.Option(None, "--preset", help="a named preset: " + ", ".join(PRESETS)),
    resume: Path | None = typer.Option(
        None,
        help="continue a run from its last.pt (or its folder), with its own configuration unless --config is given",
    ),
) -> None:
    """Train a detector; outputs (checkpoints, logs, plots, resolved config) go to `output`.

    Without --config or --preset: the `default` recipe, which decides its input size, tiling,
    anchors, augmentation and schedule from the training data (printed, and kept in config.yaml).
    Ctrl-C (or SIGTERM) saves last.pt at the current step and prints the command that resumes.

    Example: multibox train data.path=data/my_dataset
    Example: multibox train --config retinanet_r50_fpn data.path=data/voc train.epochs=12
    Example: multibox train --preset single_object data.path=data/digits
    Example: multibox train --resume runs/exp/last.pt
    """
    from .checkpoint import find_checkpoint
    from .config import load_config
    from .engine import train as run
    from .engine.interrupts import Interrupted
    from .engine.resumption import RunFinished

    if config is not None and preset is not None:
        fail(ConfigError("give --config or --preset, not both"))
    try:
        if resume is not None:
            resume = find_checkpoint(resume)
        if resume is not None and config is None and preset is None:
            recipe = _resumed_config(resume, overrides or [])
        else:
            recipe = load_config(config or preset or "default", overrides or [])
        metrics = run(recipe, resume=resume)
    except (ConfigError, DataError, ValueError, FloatingPointError, RuntimeError, OSError) as error:
        fail(error)
    except RunFinished as finished:
        typer.echo(str(finished))
        raise typer.Exit(0) from None
    except Interrupted as stopped:
        typer.secho(str(stopped), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(stopped.exit_code) from None
    except KeyboardInterrupt:
        typer.secho("interrupted: stopped at once (last.pt, if any, is the last one saved)", fg=typer.colors.YELLOW,
                    err=True)  # fmt: skip
        raise typer.Exit(130) from None
    if metrics:
        shown = [k for k in ("AP", "AP50", "AP75", "accuracy", "IoU", "L1", "mAP", "F1") if k in metrics]
        typer.echo("final: " + "  ".join(f"{k} {metrics[k]:.4f}" for k in shown))


def _resumed_config(path: Path, overrides: list[str]):
    """The configuration a checkpoint was trained with, updated by ``overrides``."""
    from .checkpoint import load_checkpoint
    from .config import config_from_dict, load_config

    saved = config_from_dict(load_checkpoint(path)["config"], f"{path} (its configuration)")
    return load_config(None, overrides, base=saved)


def lr_find(
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides, e.g. train.batch_size=8"),
    config: Path | None = typer.Option(None, "--config", help="preset name or YAML recipe (default: default)"),
    out: Path | None = typer.Option(None, help="folder for lr_find.png and lr_find.csv (default: the run's output)"),
    start: float = typer.Option(1e-7, help="first learning rate"),
    end: float = typer.Option(10.0, help="last learning rate"),
    steps: int = typer.Option(100, help="most batches in the sweep"),
) -> None:
    """Learning-rate finder: exponential sweep, smoothed loss, stop on divergence; a plot and a suggestion.

    Example: multibox lr-find --config cpu_digits --steps 60
    """
    from .config import load_config
    from .engine.lr_find import lr_find as run

    try:
        resolved = load_config(config or "default", overrides or [])
        result = run(resolved, out, start, end, steps)
    except (ConfigError, DataError, ValueError, FloatingPointError, RuntimeError, OSError) as error:
        fail(error)
    folder = out or Path(resolved.output)
    stopped = "diverged" if result.diverged else "reached the end"
    typer.echo(
        f"{len(result.lrs)} steps ({stopped}); lowest loss at lr {result.minimum:.2e}, "
        f"steepest fall at {result.steepest:.2e}"
    )
    typer.echo(f"suggested lr: {result.suggestion:.2e}  (set train.lr={result.suggestion:.2g})")
    typer.echo(f"written: {folder / 'lr_find.png'}, {folder / 'lr_find.csv'}")


def evaluate(
    weights: Path = typer.Option(..., help="checkpoint (best.pt / last.pt)"),
    data: Path = typer.Option(..., help="dataset (any format)"),
    split: str = typer.Option("val", help="split to evaluate"),
    out: Path | None = typer.Option(
        None, help="folder for metrics.json and predictions.json (default: beside weights)"
    ),
) -> None:
    """COCO AP of a checkpoint on a dataset split: a table, metrics.json and the COCO results file.

    Example: multibox eval --weights runs/demo/best.pt --data data/digits --split val
    """
    from .cli_predict import warn_if_large
    from .data import load_dataset
    from .data.formats import write_coco_results
    from .data.io import atomic_write_text
    from .evaluation import evaluate as run
    from .inference import load
    from .viz import plot_pr_curves

    try:
        predictor = load(weights)
        one_class = predictor.config.data.one_class
        if not one_class:
            _check_classes(weights, predictor.class_names, data, split)
        dataset, _ = load_dataset(data, split, class_names=None if one_class else predictor.class_names)
        dataset = dataset.one_class(one_class) if one_class else dataset
        record = max(dataset.records, key=lambda r: r.height * r.width, default=None)
        if record is not None:
            warn_if_large(f"{data} ({split}: {record.image_path.name})", (record.height, record.width),
                           predictor.preprocess)  # fmt: skip
        metrics, detections = run(predictor.model, dataset, predictor.config)
    except (DataError, ValueError, RuntimeError, OSError) as error:
        fail(error)
    out = out or weights.parent
    per_class = metrics.pop("per_class", None)
    written = [out / "metrics.json", out / "predictions.json"]
    if "pr50" in metrics:
        plot_pr_curves(metrics.pop("pr50"), predictor.class_names, out / "pr_curves.png", f"{data} ({split})")
        written.append(out / "pr_curves.png")
    if per_class is not None:
        metrics["per_class_AP"] = dict(zip(predictor.class_names, per_class, strict=True))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    ids = [r.image_id if isinstance(r.image_id, int) else i + 1 for i, r in enumerate(dataset.records)]
    write_coco_results(out / "predictions.json", ids, detections, list(range(1, len(predictor.class_names) + 1)))
    typer.echo("  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    for name, ap in metrics.get("per_class_AP", {}).items():
        typer.echo(f"  {name:<16} AP {ap:.4f}")
    typer.echo("written: " + ", ".join(str(path) for path in written))


def _check_classes(weights: Path, known: list[str], data: Path, split: str) -> None:
    """A DataError when the split holds classes the model was not trained on."""
    from .data.loading import read_dataset

    found = read_dataset(data, split)
    counts = found.summary()["classes"]
    unknown = [name for name in found.class_names if counts.get(name) and name not in known]
    if unknown:
        raise DataError(
            f"{weights} was trained on {len(known)} classes ({', '.join(known)}) and {data} ({split}) has boxes of "
            f"{len(unknown)} others: {', '.join(unknown)}; evaluate it on data of its own classes, or train a model on "
            f"this data (multibox train data.path={data})"
        )


def anchors(
    data: Path = typer.Option(..., help="dataset (any format)"),
    preset: str = typer.Option("cpu_digits", help="preset name or YAML recipe whose anchors are checked"),
    image_size: int | None = typer.Option(None, help="square network input size (default: the preset's)"),
    split: str = typer.Option("train", help="split whose boxes are checked"),
    out: Path = typer.Option(Path("runs/anchors"), help="folder for anchors.json and anchors_missed.png"),
) -> None:
    """Anchor doctor: can every object be matched? Coverage by size, missed boxes, fitted anchors.

    For each ground-truth box (resized as the network sees it): does its best anchor reach IoU 0.5
    (and 0.4; an SSD preset matching at another IoU: that and 0.5), and how many anchors reach
    it; a picture of boxes no anchor catches; anchors fitted with k-means (RetinaNet: sizes and
    ratios; YOLOv3: its nine shapes; SSD: its scales; the course's grid SSDs: the zooms and
    ratios of each cell's anchors), with the same table and the overrides to use them.

    Example: multibox anchors --data data/digits --preset retinanet_r50_fpn --image-size 256
    """
    from .auto import recommend_input, resolve
    from .config import load_config
    from .data import load_dataset
    from .kinds import kind_of, seen_size

    try:
        config = load_config(preset, [])
        kind = kind_of(config)
        if kind.doctor is None:
            raise ValueError(f"'{preset}' is a {kind.name} network, without anchors: give a detector's preset")
        dataset, _ = load_dataset(data, split, config.data.format)
        if image_size:
            config.input.size = (image_size, image_size)
        resolve(config, dataset)  # what a recipe leaves to the data (the default recipe's input size)
        size, config.input.resize = seen_size(config, dataset)  # with tiles: the images' own size
        coverage, suggested, overrides = kind.doctor(config, dataset, size)
    except (ConfigError, DataError, ValueError) as error:
        fail(error)
    _anchor_report(data, split, preset, size, config, dataset, coverage, suggested, overrides, out)
    if max(coverage.matched, suggested.matched) < LOW_COVERAGE:
        advice = " ".join(choice.setting for choice in recommend_input(dataset))
        typer.echo(f"\nfew boxes can be matched at {size[0]}x{size[1]}: for these objects `multibox train` would "
                   f"use {advice} (the default recipe decides this itself)")  # fmt: skip


LOW_COVERAGE = 0.6  # below this share of boxes matched, the doctor advises another input size or tiles


def _anchor_report(data, split, preset, size, config, dataset, coverage, suggested, overrides, out) -> None:
    from .anchor_doctor import draw_missed
    from .data.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    picture = out / "anchors_missed.png"
    drawn = draw_missed(coverage, dataset, size, config.input.resize, picture)
    report = {
        "data": str(data),
        "split": split,
        "preset": preset,
        "image_size": list(size),
        "resize": config.input.resize,
        "current": coverage.to_dict(dataset),
        "suggested": {**suggested.to_dict(dataset), "overrides": overrides},
    }
    atomic_write_text(out / "anchors.json", json.dumps(report, indent=2))
    pos = f"IoU>={coverage.pos_iou:g}"  # the kind's matcher's threshold (Faster R-CNN's RPN: 0.7)
    boxes = len(coverage.boxes)
    typer.echo(f"{data} ({split}): {len(dataset.records)} images, {boxes} boxes at input {size[0]}x{size[1]}")
    typer.echo(f"\n{preset}:\n{coverage.table()}")
    typer.echo(f"{len(coverage.missed())} boxes have no anchor at {pos}" + (f" (worst: {picture})" if drawn else ""))
    typer.echo(f"\nfitted (k-means):\n{suggested.table()}")
    if suggested.matched > coverage.matched:
        typer.echo(f"{pos}: {coverage.matched:.1%} -> {suggested.matched:.1%}; to use them: {overrides}")
    else:
        typer.echo(f"{pos}: fitted {suggested.matched:.1%}, {preset}'s {coverage.matched:.1%}: keep the preset's")
    typer.echo(f"written: {out / 'anchors.json'}")


def export(
    weights: Path = typer.Option(..., help="checkpoint (best.pt)"),
    fmt: str = typer.Option("onnx", "--format", help="onnx (onnxruntime) or openvino (an IR: .xml and .bin)"),
    out: Path | None = typer.Option(None, help="file to write (default: the checkpoint's name with .onnx / .xml)"),
    precision: str = typer.Option("fp32", help="openvino: fp32, bf16 (CPUs with bf16) or int8 (with --calib)"),
    nms: bool = typer.Option(False, "--nms", help="decoding and NMS in the graph (onnxruntime alone gives detections)"),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="any batch size (otherwise 1)"),
    conf: float | None = typer.Option(None, help="with --nms: score threshold in the graph (default: the run's)"),
    iou: float | None = typer.Option(None, help="with --nms: NMS IoU threshold (default: the run's)"),
    max_det: int | None = typer.Option(None, help="with --nms: detections per image (default: the run's)"),
    int8: bool = typer.Option(False, "--int8", help="INT8 convolutions, ranges calibrated on --calib images"),
    calib: Path | None = typer.Option(None, help="with --int8 or --precision int8: folder of calibration images"),
    image_size: int | None = typer.Option(None, help="square input size of the graph (default: the run's)"),
) -> None:
    """Export a trained detector to ONNX, for onnxruntime, or to an OpenVINO IR (``--format openvino``).

    Without --nms the graph ends at the head's class logits and box offsets; with it, scoring,
    decoding, class-wise NMS and the best max-det per image are in the graph, as outputs boxes
    [B, max_det, 4] (input pixels), scores [B, max_det] (0: empty slot) and labels [B, max_det].
    The file's metadata holds the class names, input size, resize and normalisation.

    A two-stage detector (faster_rcnn) is always exported with its NMS, for one image at a time.
    An OpenVINO IR always holds the NMS graph; it runs at --precision (bf16 only on CPUs with bf16
    instructions, int8 quantized by NNCF on the --calib images).

    Example: multibox export --weights runs/digits/best.pt --nms --dynamic-batch --out digits.onnx
    Example: multibox export --weights runs/digits/best.pt --int8 --calib data/digits/JPEGImages --out int8.onnx
    Example: multibox export --weights runs/digits/best.pt --format openvino --precision bf16 --out digits.xml
    """
    from .export import export_onnx, export_openvino
    from .inference import load
    from .kinds import kind_of

    openvino = fmt == "openvino"
    target = out or weights.with_suffix(".xml" if openvino else ".onnx")
    size = (image_size, image_size) if image_size else None
    try:
        _check_export_options(fmt, precision, int8)
        predictor = load(weights, device="cpu")
        if openvino:
            export_openvino(predictor, target, precision, dynamic_batch, conf, iou, max_det, calib, image_size=size)
        else:
            export_onnx(predictor, target, nms, dynamic_batch, score_thresh=conf, nms_iou=iou, max_det=max_det,
                        int8=int8, calib=calib, image_size=size)  # fmt: skip
    except (DataError, ValueError, RuntimeError, OSError) as error:
        fail(error)
    if predictor.preprocess.fixed().resize != predictor.preprocess.resize:
        side = f"{image_size}x{image_size}" if image_size else "x".join(map(str, predictor.preprocess.size))
        typer.echo(f"input: the run's minmax resize exported as letterbox at {side} (a graph takes one input size)")
    if kind_of(predictor.config).two_stage and not (nms and not dynamic_batch):
        typer.echo("a two-stage graph holds its proposals' NMS: exported with --nms, for one image at a time")
        nms, dynamic_batch = True, False
    if openvino:
        batch = "any" if dynamic_batch else 1
        typer.echo(f"written: {target} and {target.with_suffix('.bin')} (OpenVINO IR with NMS, batch {batch}, "
                   f"{precision}); run it: multibox predict --weights {target}")  # fmt: skip
        return
    graph = "with NMS (outputs boxes, scores, labels)" if nms else "network only (outputs cls_logits, box_deltas)"
    typer.echo(f"written: {target} ({graph}, batch {'any' if dynamic_batch else 1}, "
               f"{'INT8 convolutions' if int8 else 'fp32'})")  # fmt: skip


def _check_export_options(fmt: str, precision: str, int8: bool) -> None:
    if fmt not in ("onnx", "openvino"):
        raise ValueError(f"--format must be onnx or openvino, got {fmt!r}")
    if fmt == "onnx" and precision != "fp32":
        raise ValueError(f"--precision {precision} is OpenVINO's: add --format openvino (onnxruntime's INT8: --int8)")
    if fmt == "openvino" and int8:
        raise ValueError("--int8 is onnxruntime's; for OpenVINO give --precision int8 --calib FOLDER")


def serve(
    weights: Path = typer.Option(..., help="checkpoint (best.pt), exported .onnx file or OpenVINO .xml"),
    host: str = typer.Option("127.0.0.1", help="address to bind: loopback unless you mean to open it"),
    port: int = typer.Option(8000, help="port"),
    max_mb: float = typer.Option(20.0, help="largest upload, MB"),
    max_megapixels: float = typer.Option(40.0, help="largest image, megapixels"),
    timeout: float = typer.Option(30.0, help="seconds an inference may take"),
    tile: int = typer.Option(0, help="cut each image into tiles of N pixels (0: as the model was trained)"),
) -> None:
    """Serve a detector over HTTP: POST /v1/detect, GET /healthz, and a web page at /.

    POST an image as a multipart file (any one field: 'image', 'file') or as the raw body;
    ?conf= sets the score threshold. The page draws the boxes on the image and filters them with
    a score slider.

    Example: multibox serve --weights runs/demo/best.pt --port 8000
    """
    import uvicorn

    from .inference import load
    from .inference.serve import Limits, create_app

    try:
        predictor = load(weights)
    except (DataError, ValueError, RuntimeError, OSError) as error:
        fail(error)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"serving on {host}: reachable from other machines, with no authentication", fg=typer.colors.YELLOW)
    limits = Limits(int(max_mb * 2**20), int(max_megapixels * 1e6), timeout)
    typer.echo(f"multibox serve: {weights} ({predictor.config.model.kind}) on http://{host}:{port}/")
    uvicorn.run(create_app(predictor, limits, tile or None), host=host, port=port, log_level="info")
