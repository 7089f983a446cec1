"""ONNX export of a trained detector: the network alone, or with its post-processing in the graph.

:func:`export_onnx` writes the network alone (``images -> cls_logits, box_deltas``, decoded on
the host by the detector's ``detect``) or, with ``nms=True``, the whole detection graph:
scores, per-level top-k, decoding, clipping, class-wise ONNX ``NonMaxSuppression`` and the best
``max_det`` per image, as fixed-size outputs ``boxes [B, max_det, 4]``, ``scores [B, max_det]``
(0 in unused slots) and ``labels [B, max_det]``: what :func:`~multibox.postprocess.postprocess`
computes, so that onnxruntime alone gives the detections (the graphs are
:mod:`multibox.graphs`'). The file's metadata (key ``multibox``) holds what a predictor needs:
class names, input size, resize mode, normalisation, the post-processing settings and the run's
configuration.

    export_onnx("runs/demo/best.pt", "demo.onnx", nms=True, dynamic_batch=True)
    detector = multibox.load("demo.onnx")      # an OnnxPredictor
    found = detector.predict("scene.jpg")
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .data.io import atomic_write_bytes
from .graphs import DetectionGraph, TwoStageGraph
from .inference import Predictor, load
from .inference.onnx import METADATA_KEY
from .kinds import kind_of

__all__ = ["DetectionGraph", "TwoStageGraph", "export_onnx", "export_openvino", "exported_predictor"]

OPSET = 17


def export_onnx(
    checkpoint: str | Path | Predictor,
    path: str | Path,
    nms: bool = False,
    dynamic_batch: bool = False,
    score_thresh: float | None = None,
    nms_iou: float | None = None,
    max_det: int | None = None,
    int8: bool = False,
    calib: str | Path | None = None,
    calib_images: int = 64,
    image_size: Sequence[int] | None = None,
    opset: int = OPSET,
) -> Path:
    """Write the detector of ``checkpoint`` to ``path`` as ONNX (atomically); returns ``path``.

    Args:
        checkpoint: a training checkpoint (``best.pt``), or a loaded :class:`~multibox.inference.Predictor`.
        path: the ``.onnx`` file to write.
        nms: put scoring, decoding and NMS in the graph (see :class:`DetectionGraph`); without,
            the graph ends at the head's ``cls_logits`` and ``box_deltas``. A two-stage detector
            (Faster R-CNN) always has its NMS in the graph (:class:`TwoStageGraph`), for one
            image at a time (a batch runs image by image in :func:`~multibox.load`'s predictor).
        dynamic_batch: any batch size (otherwise 1).
        score_thresh, nms_iou, max_det: post-processing settings baked in with ``nms``
            (default: the run's).
        int8: quantize the convolutions to INT8 (static, QDQ, per-channel weights) with ranges
            calibrated on images: onnxruntime's ``quantize_static``.
        calib: with ``int8``, a folder of calibration images (the training images suit).
        calib_images: how many of them (sorted by name) calibrate.
        image_size: the graph's ``(height, width)`` input (default: the run's); networks built
            for one input size (the SSD family, YOLOv3) take only theirs.
        opset: ONNX opset.

    The graph takes one input size: a run resized ``minmax`` (sizes vary) is exported
    ``letterbox`` at its ``input.size`` (:meth:`~multibox.data.preprocess.Preprocess.fixed`),
    and the file's metadata says so.
    """
    predictor = exported_predictor(checkpoint, image_size)
    if kind_of(predictor.config).two_stage:
        nms, dynamic_batch = True, False  # its proposals are kept by NMS inside the network
    settings = asdict(predictor.config.detect)
    asked = {"score_thresh": score_thresh, "nms_iou": nms_iou, "max_det": max_det}
    settings.update({k: v for k, v in asked.items() if v is not None})
    path = Path(path)
    temporary = _graph(predictor, path, nms, dynamic_batch, settings, opset, (calib, calib_images) if int8 else None)
    metadata = {
        "class_names": predictor.class_names,
        **predictor.preprocess.metadata(),
        "nms": nms,
        "dynamic_batch": dynamic_batch,
        "int8": int8,
        "settings": settings,
        "config": predictor.config.to_dict(),
    }
    _write(temporary, path, metadata)
    return path


def exported_predictor(checkpoint: str | Path | Predictor, image_size: Sequence[int] | None = None) -> Predictor:
    """The detector of ``checkpoint`` as it is exported: on the CPU in float32, contiguous, with
    one fixed input size (``image_size``, default the run's; ``minmax`` becomes ``letterbox``)."""
    predictor = checkpoint if isinstance(checkpoint, Predictor) else load(checkpoint, device="cpu")
    config = copy.deepcopy(predictor.config)
    name = "the model" if isinstance(checkpoint, Predictor) else str(checkpoint)
    if not kind_of(config).dense:
        raise ValueError(f"{name}: a {config.model.kind} network; ONNX export covers the detectors with anchors")
    if image_size is not None:
        config.input.size = (int(image_size[0]), int(image_size[1]))
    config.input.resize = predictor.preprocess.fixed().resize
    config.train.channels_last = False
    # a copy: the caller's predictor keeps its device, dtype and memory format (channels-last
    # weights made contiguous in place ran its network, and anything sharing its modules, 2x slower)
    model = copy.deepcopy(predictor.model).to("cpu", memory_format=torch.contiguous_format).float().eval()
    return Predictor(model, config, predictor.class_names, device="cpu")


def _graph(
    predictor: Predictor, path: Path, nms: bool, dynamic_batch: bool, settings: dict, opset: int, int8: tuple | None
) -> Path:
    """The graph traced (and, with ``int8`` = ``(calib, count)``, quantized on those images) into a hidden file
    beside ``path`` (its folder created), removed whatever goes wrong; returns the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.export.tmp")
    try:
        _trace(predictor, temporary, nms, dynamic_batch, settings, opset)
        if int8 is not None:
            _quantize(temporary, predictor, *int8)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _trace(predictor: Predictor, path: Path, nms: bool, dynamic_batch: bool, settings: dict, opset: int) -> None:
    import warnings

    size = predictor.preprocess.size
    network: nn.Module = DetectionGraph(predictor.model, size, **settings) if nms else predictor.model
    if kind_of(predictor.config).two_stage:
        network = TwoStageGraph(predictor.model, size, **settings)
    # in evaluation mode: torch.onnx.export puts the wrapper back in the mode it found it in, and a
    # new module is in training mode, which would leave the predictor's network training
    network.eval()
    outputs = ["boxes", "scores", "labels"] if nms else ["cls_logits", "box_deltas"]
    dynamic = {name: {0: "batch"} for name in ["images", *outputs]} if dynamic_batch else None
    example = torch.zeros((2 if dynamic_batch else 1, 3, *size))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes fixed by the input size
        torch.onnx.export(
            network, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=["images"], output_names=outputs, dynamic_axes=dynamic,
        )  # fmt: skip


def _write(temporary: Path, path: Path, metadata: dict) -> None:
    """The graph at ``temporary`` with ``metadata`` under :data:`METADATA_KEY`, checked, written
    atomically to ``path``; ``temporary`` removed."""
    import onnx

    graph = onnx.load(str(temporary))
    temporary.unlink()
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.checker.check_model(graph)
    atomic_write_bytes(path, graph.SerializeToString())


def _quantize(path: Path, predictor: Predictor, calib: str | Path | None, count: int) -> None:
    """Replace the fp32 graph at ``path`` by its INT8 version, calibrated on ``count`` images of ``calib``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .data.io import read_image

    files = _calibration_files(calib, count)

    class Images(CalibrationDataReader):
        def __init__(self):
            self.files = iter(files)

        def get_next(self):
            file = next(self.files, None)
            return None if file is None else {"images": predictor.prepare(read_image(file)).numpy()}

    prepared = path.with_name(path.name + ".pre")
    quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(prepared), str(path), Images(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=_first_and_last_convs(str(prepared)),
        )  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)


def _first_and_last_convs(path: str) -> list[str]:
    """Names of the graph's first convolution and of those after which no convolution follows
    (the predictors): kept in fp32, the usual INT8 recipe. On the digit scenes' RetinaNet, INT8
    everywhere lost 1.2 AP points, these in fp32 0.3."""
    import onnx

    graph = onnx.load(path).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def last(conv) -> bool:
        stack, seen = list(conv.output), set()
        while stack:
            for node in consumers.get(stack.pop(), []):
                if node.op_type == "Conv":
                    return False
                if node.name not in seen:
                    seen.add(node.name)
                    stack.extend(node.output)
        return True

    convs = [node for node in graph.node if node.op_type == "Conv"]
    return [convs[0].name, *(node.name for node in convs[1:] if last(node))] if convs else []


def export_openvino(
    checkpoint: str | Path | Predictor,
    path: str | Path,
    precision: str = "fp32",
    dynamic_batch: bool = False,
    score_thresh: float | None = None,
    nms_iou: float | None = None,
    max_det: int | None = None,
    calib: str | Path | None = None,
    calib_images: int = 64,
    image_size: Sequence[int] | None = None,
) -> Path:
    """Write the detector of ``checkpoint`` as an OpenVINO IR (``path``, an ``.xml`` file, and its
    ``.bin`` beside it; both atomically); returns ``path``.

    The IR is the ONNX detection graph (:func:`export_onnx` with ``nms=True``: onnxruntime's and
    OpenVINO's outputs alike) converted by ``openvino.convert_model``, with the ONNX file's metadata
    and ``precision`` in its ``rt_info``. ``precision``: ``fp32``; ``bf16`` (run in bf16 on CPUs
    with bf16 instructions; the IR's weights stay fp32); ``int8``: post-training quantization by
    NNCF, calibrated on ``calib_images`` images of the folder ``calib``.
    """
    import openvino

    from .inference.openvino import check_precision

    check_precision(precision)
    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ValueError(f"{path}: an OpenVINO IR is an .xml file (with its .bin beside it); give --out NAME.xml")
    files = _calibration_files(calib, calib_images) if precision == "int8" else []
    predictor = exported_predictor(checkpoint, image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = path.with_name(f".{path.stem}.openvino.onnx.tmp")
    xml, weights = path.with_name(f".{path.stem}.tmp.xml"), path.with_name(f".{path.stem}.tmp.bin")
    try:
        export_onnx(predictor, graph, nms=True, dynamic_batch=dynamic_batch, score_thresh=score_thresh,
                    nms_iou=nms_iou, max_det=max_det)  # fmt: skip
        metadata = _metadata(graph)
        model = openvino.convert_model(str(graph))
        if precision == "int8":
            model = _quantize_openvino(model, predictor, files)
        model.set_rt_info(json.dumps({**metadata, "precision": precision, "int8": precision == "int8"}),
                          [METADATA_KEY])  # fmt: skip
        openvino.save_model(model, str(xml), compress_to_fp16=False)
        weights.replace(path.with_suffix(".bin"))
        xml.replace(path)
    finally:
        for leftover in (graph, xml, weights):
            leftover.unlink(missing_ok=True)
    return path


def _metadata(path: Path) -> dict:
    import onnx

    entries = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    return json.loads(entries[METADATA_KEY])


def _calibration_files(calib: str | Path | None, count: int) -> list[Path]:
    from .data.io import IMAGE_SUFFIXES

    if calib is None:
        raise ValueError("INT8 export needs calibration images: --calib FOLDER (the training images suit)")
    folder = Path(calib)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise ValueError(f"{folder}: no images to calibrate INT8 ranges with (a folder of .jpg / .png files)")
    return files[:count]


def _quantize_openvino(model, predictor: Predictor, files: list[Path]):
    """``model`` quantized to INT8 by NNCF's post-training quantization, calibrated on ``files``.

    Only the network is quantized: the post-processing's ONNX nodes (named ``/Op_N``, the
    network's ``/model/...``) are ignored and stay float32; NNCF otherwise stored the anchors (a
    ``Gather``'s data) in int8, moving boxes by half a pixel (COCO AP 0.9 points lower, measured
    on the digit scenes).
    """
    import nncf

    from .data.io import read_image

    dataset = nncf.Dataset(files, lambda file: predictor.prepare(read_image(file)).numpy())
    post_processing = nncf.IgnoredScope(patterns=["^/(?!model/).*"])
    logger = logging.getLogger("nncf")  # quiet while it runs (a line for each ignored node), then as it was
    levels = [logger.level, *(handler.level for handler in logger.handlers)]
    nncf.set_log_level(logging.WARNING)
    try:
        return nncf.quantize(model, dataset, subset_size=len(files), ignored_scope=post_processing)
    finally:
        logger.setLevel(levels[0])
        for handler, level in zip(logger.handlers, levels[1:], strict=True):
            handler.setLevel(level)
