"""Exported detectors on OpenVINO's CPU runtime: fp32, bf16 where the CPU has it, INT8.

``multibox export --format openvino`` writes an OpenVINO IR (``model.xml`` and ``model.bin``)
converted from the ONNX detection graph (NMS inside), with multibox's metadata in the IR's
``rt_info`` (key ``multibox``) and the precision it runs at. ``multibox.load("model.xml")`` gives
an :class:`OpenVinoPredictor`: prediction, tiling, evaluation and the server run it as they run a
checkpoint.

OpenVINO runs bf16 by default on CPUs with bf16 instructions (AVX512-BF16, AMX): here fp32 is
asked for explicitly (``INFERENCE_PRECISION_HINT``), so that ``fp32`` means fp32 on every CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .onnx import METADATA_KEY, OnnxNetwork, exported_parts
from .predictor import Predictor

__all__ = ["PRECISIONS", "OpenVinoNetwork", "OpenVinoPredictor", "check_precision", "cpu_capabilities"]

PRECISIONS = ("fp32", "bf16", "int8")
# what each precision asks of the CPU plugin: bf16 computes in bf16; an INT8 IR computes its
# quantized operations in int8 and the rest in fp32
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def cpu_capabilities() -> list[str]:
    """OpenVINO's CPU plugin's ``OPTIMIZATION_CAPABILITIES`` here (``FP32``, ``BF16``, ``INT8``, ...)."""
    import openvino

    return list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_precision(precision: str) -> None:
    """A ValueError for a precision OpenVINO cannot run on this CPU, saying what to use instead."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    capabilities = cpu_capabilities()
    if precision == "bf16" and "BF16" not in capabilities:
        raise ValueError(
            "bf16 needs a CPU with bf16 instructions (AVX512-BF16 or AMX); this one has "
            f"{', '.join(capabilities)} for OpenVINO: use --precision fp32, or --precision int8 --calib FOLDER"
        )


class OpenVinoNetwork(OnnxNetwork):
    """An OpenVINO compiled model used as the network it came from (see :class:`OnnxNetwork`)."""

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        result = self.session(images)
        return [result[output] for output in self.session.outputs]


class OpenVinoPredictor(Predictor):
    """:class:`~multibox.inference.Predictor` on OpenVINO, from an IR of ``multibox export --format
    openvino`` (its ``model`` an :class:`OpenVinoNetwork`), at the precision it was exported for
    or at ``precision``."""

    def __init__(self, path: str | Path, precision: str | None = None):
        import openvino

        path = Path(path)
        if not path.is_file() or not path.with_suffix(".bin").is_file():
            raise FileNotFoundError(f"{path}: OpenVINO IR not found (an .xml file with its .bin beside it)")
        core = openvino.Core()
        try:
            model = core.read_model(str(path))
        except RuntimeError as error:
            raise ValueError(f"{path}: not a readable OpenVINO IR ({str(error).strip().splitlines()[0]})") from None
        if not model.has_rt_info([METADATA_KEY]):
            raise ValueError(f"{path}: not a multibox IR (no '{METADATA_KEY}' metadata); use multibox export")
        metadata = json.loads(model.get_rt_info([METADATA_KEY]).astype(str))
        precision = precision or metadata["precision"]
        check_precision(precision)
        if precision == "int8" and metadata["precision"] != "int8":
            raise ValueError(f"{path} is an {metadata['precision']} IR; INT8 needs one exported with --precision int8")
        settings = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        compiled = core.compile_model(model, "CPU", settings)
        config, names, skeleton = exported_parts(metadata, path)
        super().__init__(OpenVinoNetwork(compiled, metadata, skeleton, path), config, names, device="cpu")
        self.metadata, self.path, self.precision = metadata, path, precision
