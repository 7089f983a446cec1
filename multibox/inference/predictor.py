"""A trained detector as one object: ``Predictor.predict(image)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data.io import read_image
from ..data.preprocess import Preprocess
from ..detect import TILE_OVERLAP, detect_images, detect_tiled
from ..kinds import kind_of
from ..models.autocast import BFloat16Network
from ..structures import Detections

__all__ = ["ImageLike", "Predictor"]

ImageLike = str | Path | np.ndarray


class Predictor:
    """A trained model with its class names and the settings it was trained with.

    Args:
        model: the network (a ``torch.nn.Module`` with ``detect``, or an exported graph's runtime).
        config: the run's configuration: its ``input`` section is the input contract
            (:class:`~multibox.data.preprocess.Preprocess`), ``detect`` the post-processing.
        class_names: names of classes ``0..C-1``.
        device: where to run (default: the GPU where there is one).
        precision: ``fp32``, or ``bf16``: the network (a dense detector's) under bf16 autocast,
            the post-processing in float32 (:class:`~multibox.models.autocast.BFloat16Network`);
            it pays on CPUs with AMX and on GPUs. ``model`` stays the float32 network (export,
            evaluation); ``predict`` uses the precision.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: Config,
        class_names: Sequence[str],
        device: str | None = None,
        precision: str = "fp32",
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.config = config
        self.preprocess = Preprocess.of(config.input)
        self.memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.class_names = list(class_names)
        self.precision = precision
        self._network = self.model
        if precision == "bf16":
            kind = kind_of(config)
            if not kind.dense or kind.two_stage:
                raise ValueError(f"bf16 inference covers the dense detectors; a {config.model.kind} runs in fp32")
            self._network = BFloat16Network(self.model)
        elif precision != "fp32":
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")

    @torch.no_grad()
    def predict(
        self,
        source: ImageLike | Sequence[ImageLike],
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        tile: int | None = None,
        overlap: float = TILE_OVERLAP,
        batch_size: int = 8,
        progress: Callable[[int, int], None] | None = None,
    ) -> Detections | list[Detections]:
        """Detect objects in one image (a path or an RGB ``uint8 [H, W, 3]`` array) or a list of them.

        With ``tile`` (default: the run's ``input.tile``; 0: none), an image is cut into
        overlapping ``tile x tile`` windows (``overlap`` a fraction of a tile), each detected as
        an image of its own, ``batch_size`` at a time, and the boxes merged back
        (:func:`~multibox.detect.detect_tiled`): for images much larger than the network's
        input, whose objects would shrink below what it can see. ``max_det`` then applies per tile;
        ``progress(done, total)`` is told the tiles done after each batch.

        Returns :class:`Detections` with boxes in pixels of each original image, scores, labels
        and ``names``; a list for a list input.
        """
        single = isinstance(source, str | Path | np.ndarray)
        images = [source] if single else list(source)
        settings = asdict(self.config.detect)
        asked = {"score_thresh": conf, "nms_iou": iou, "max_det": max_det}
        settings.update({k: v for k, v in asked.items() if v is not None})
        tile = self.preprocess.tile if tile is None else tile
        results = []
        for image in images:
            pixels = read_image(Path(image)) if isinstance(image, str | Path) else np.asarray(image)
            if tile:
                det = detect_tiled(self._network, pixels, self.preprocess, settings, tile, overlap, batch_size,
                                   self.memory_format, progress)  # fmt: skip
            else:
                (det,) = detect_images(self._network, [pixels], self.preprocess, settings, self.memory_format)
            det.names = self.class_names
            results.append(det)
        return results[0] if single else results

    def prepare(self, pixels: np.ndarray) -> torch.Tensor:
        """The network input ``[1, 3, H, W]`` (resized, normalised) of an RGB ``uint8`` image."""
        return self.preprocess(pixels)[None]
