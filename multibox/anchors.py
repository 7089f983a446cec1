"""Anchor (prior, default box) generators and k-means anchor fitting.

All generators return ``[A, 4]`` xyxy boxes ordered level-major, then row (y), then column
(x), then anchor type: the order of ``torchvision.models.detection.anchor_utils`` so that head
outputs (``[B, A, K]`` after the usual permute/reshape) line up with torchvision's models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "TOY_SSD",
    "grid_anchors",
    "grid_cell_sizes",
    "grid_ratios",
    "kmeans_anchors",
    "pyramid_anchors",
    "pyramid_grid_sizes",
    "ssd_default_boxes",
    "wh_iou",
    "yolo_anchors",
]

# RetinaNet defaults (Lin et al. 2017): P3-P7, one base size per level, 3 scales x 3 ratios.
RETINA_STRIDES = (8, 16, 32, 64, 128)
RETINA_SIZES = (32, 64, 128, 256, 512)
RETINA_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
RETINA_RATIOS = (0.5, 1.0, 2.0)


def _hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def pyramid_grid_sizes(image_size: int | Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """Feature-map ``(rows, cols)`` per level for an input of ``image_size = (height, width)``.

    A backbone of stride-2 convolutions with padding maps ``n`` pixels to ``ceil(n / stride)``
    cells, which is what this returns.
    """
    height, width = _hw(image_size)
    return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


def pyramid_anchors(
    image_size: int | Sequence[int],
    strides: Sequence[int] = RETINA_STRIDES,
    sizes: Sequence[float] = RETINA_SIZES,
    scales: Sequence[float] = RETINA_SCALES,
    ratios: Sequence[float] = RETINA_RATIOS,
    *,
    grid_sizes: Sequence[Sequence[int]] | None = None,
    offset: float = 0.0,
    quantize: bool = True,
) -> Tensor:
    """RetinaNet / FPN anchors for one input size.

    Level ``l`` has stride ``strides[l]`` and anchors of side ``sizes[l] * scale`` for each
    scale, reshaped to each aspect ratio ``h / w`` at constant area. With the defaults this is
    RetinaNet's 9 anchors per location on P3-P7, 49,104 anchors for a 512x512 input.

    Args:
        image_size: ``(height, width)`` of the network input in pixels (or one int).
        strides: pixel stride of each pyramid level.
        sizes: base anchor side in pixels, one per level.
        scales: multipliers of the base side (octave scales).
        ratios: aspect ratios ``height / width``.
        grid_sizes: ``(rows, cols)`` per level; defaults to :func:`pyramid_grid_sizes`.
        offset: anchor centres sit at ``(i + offset) * stride``; 0 is torchvision's and
            detectron2's convention, 0.5 puts them at cell centres.
        quantize: round as torchvision does (sides truncated to whole pixels, half-extents
            rounded), so that anchors and pretrained torchvision weights agree exactly.

    Returns:
        ``[A, 4]`` xyxy anchors in input pixels, ordered level, row, column, then anchor type
        with types ratio-major, scale-minor.
    """
    if not (len(strides) == len(sizes)):
        raise ValueError(f"strides and sizes need one entry per level, got {len(strides)} and {len(sizes)}")
    grids = list(grid_sizes) if grid_sizes is not None else pyramid_grid_sizes(image_size, strides)
    if len(grids) != len(strides):
        raise ValueError(f"grid_sizes needs one (rows, cols) per level, got {len(grids)} for {len(strides)}")
    ratio_t = torch.as_tensor(ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratio_t)
    w_ratios = 1 / h_ratios
    levels = []
    for (rows, cols), stride, size in zip(grids, strides, sizes, strict=True):
        sides = [size * scale for scale in scales]
        if quantize:
            sides = [float(int(side)) for side in sides]
        side_t = torch.as_tensor(sides, dtype=torch.float32)
        ws = (w_ratios[:, None] * side_t[None, :]).reshape(-1)  # [types], ratio-major
        hs = (h_ratios[:, None] * side_t[None, :]).reshape(-1)
        cell = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        if quantize:
            cell = cell.round()
        shifts_x = (torch.arange(cols, dtype=torch.float32) + offset) * stride
        shifts_y = (torch.arange(rows, dtype=torch.float32) + offset) * stride
        sy, sx = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)  # [rows*cols, 1, 4]
        levels.append((shifts + cell[None]).reshape(-1, 4))
    return torch.cat(levels)


def grid_anchors(
    grids: Sequence[int] = (4, 2, 1),
    zooms: Sequence[float] = (0.7, 1.0, 1.3),
    ratios: Sequence[tuple[float, float]] = ((1.0, 1.0), (1.0, 0.5), (0.5, 1.0)),
) -> Tensor:
    """The fastai course's SSD anchors on square grids, in normalised ``[0, 1]`` coordinates.

    Each grid of ``g x g`` cells gets, at every cell centre, one anchor per (ratio, zoom) of
    height ``ratio[0] * zoom / g`` and width ``ratio[1] * zoom / g``. With the defaults:
    ``(16 + 4 + 1) * 9 = 189`` anchors. Multiply by the image size for pixels.

    Args:
        grids: cells per side of each grid, coarse levels last.
        zooms: size multipliers of the cell.
        ratios: ``(height, width)`` multipliers, as the course writes them.

    Returns:
        ``[A, 4]`` xyxy anchors in ``[0, 1]`` (they may reach past the border for zooms > 1),
        ordered grid, row, column, then type ratio-major, zoom-minor. Not clipped.
    """
    wh = torch.tensor([[r[1] * z, r[0] * z] for r in ratios for z in zooms], dtype=torch.float32)
    levels = []
    for g in grids:
        centres = (torch.arange(g, dtype=torch.float32) + 0.5) / g
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        ctr = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2)  # [g*g, 1, 2]
        half = (wh / g / 2)[None]  # [1, types, 2]
        levels.append(torch.cat((ctr - half, ctr + half), dim=-1).reshape(-1, 4))
    return torch.cat(levels)


def grid_ratios(aspects: Sequence[float]) -> tuple[tuple[float, float], ...]:
    """The course's ``(height, width)`` multipliers for aspect ratios ``h / w``: the longer side
    is the zoomed cell, the other shorter by the ratio (``1, 2, 0.5`` give the course's
    ``(1, 1), (1, 0.5), (0.5, 1)``), so that an anchor of zoom ``z`` is ``z`` cells long."""
    if not aspects or not all(math.isfinite(r) and r > 0 for r in aspects):
        raise ValueError(f"aspect ratios (height / width) must be positive numbers, got {list(aspects)}")
    return tuple((1.0, 1.0 / r) if r >= 1 else (r, 1.0) for r in map(float, aspects))


def grid_cell_sizes(grids: Sequence[int] = (4, 2, 1), anchors_per_cell: int = 9) -> Tensor:
    """Side of the grid cell (normalised) that each :func:`grid_anchors` anchor belongs to, ``[A]``."""
    return torch.cat([torch.full((g * g * anchors_per_cell,), 1.0 / g) for g in grids])


# SSD300's scales (fractions of the image side): s_k for map k, one more for sqrt(s_k * s_{k+1})
SSD300_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
# SSD300's extra aspect ratios (width / height) per feature map, each with its reciprocal.
SSD300_RATIOS = ((2, 1 / 2), (2, 1 / 2, 3, 1 / 3), (2, 1 / 2, 3, 1 / 3), (2, 1 / 2, 3, 1 / 3), (2, 1 / 2), (2, 1 / 2))

# The d2l.ai "toy SSD" (pikachu) anchors: five feature maps of a 256x256 input, two sizes at
# ratio 1 plus the first size at ratios 2 and 1/2, four anchors per location, 5,444 in all.
TOY_SSD = {
    "image_size": 256,
    "feature_maps": (32, 16, 8, 4, 1),
    "steps": None,
    "sizes": ((0.2, 0.272), (0.37, 0.447), (0.54, 0.619), (0.71, 0.79), (0.88, 0.961)),
    "ratios": ((2.0, 0.5),) * 5,
    "clip": False,
}


def ssd_default_boxes(
    image_size: int | Sequence[int] = 300,
    feature_maps: Sequence[int | Sequence[int]] = (38, 19, 10, 5, 3, 1),
    steps: Sequence[float] | None = (8, 16, 32, 64, 100, 300),
    scales: Sequence[float] = SSD300_SCALES,
    ratios: Sequence[Sequence[float]] = SSD300_RATIOS,
    sizes: Sequence[Sequence[float]] | None = None,
    clip: bool = True,
) -> Tensor:
    """SSD default boxes (Liu et al. 2016); the defaults give SSD300's 8,732 boxes.

    At every location of feature map ``k`` the boxes are: each of ``sizes[k]`` at aspect ratio
    1, then ``sizes[k][0]`` at each of ``ratios[k]`` (``width / height``). Without ``sizes``,
    level ``k`` uses SSD's ``(s_k, sqrt(s_k * s_{k+1}))`` from ``scales``. Sizes are fractions of
    the image side. ``ssd_default_boxes(**TOY_SSD)`` gives the d2l.ai toy-SSD anchors.

    Args:
        image_size: ``(height, width)`` of the input in pixels, or one int.
        feature_maps: side (or ``(rows, cols)``) of each feature map.
        steps: pixel step between box centres per map; ``None`` spreads the centres over the
            image (``image_side / map_side``).
        scales: SSD's per-level scales, one more than the levels (used without ``sizes``).
        ratios: extra aspect ratios per level; SSD lists each ratio with its reciprocal.
        sizes: explicit ratio-1 sizes per level.
        clip: clamp widths and heights to the image (torchvision's SSD does this).

    Returns:
        ``[A, 4]`` xyxy boxes in pixels, ordered map, row, column, then box type as above:
        the order and values of ``torchvision``'s ``DefaultBoxGenerator``.
    """
    height, width = _hw(image_size)
    maps = [(f, f) if isinstance(f, int) else (int(f[0]), int(f[1])) for f in feature_maps]
    if sizes is None:
        if len(scales) != len(maps) + 1:
            raise ValueError(f"scales needs {len(maps) + 1} entries for {len(maps)} maps, got {len(scales)}")
        sizes = [(scales[k], math.sqrt(scales[k] * scales[k + 1])) for k in range(len(maps))]
    if not (len(sizes) == len(ratios) == len(maps)):
        raise ValueError(
            f"feature_maps, sizes and ratios need one entry per level, got {len(maps)}, {len(sizes)}, {len(ratios)}"
        )
    if steps is not None and len(steps) != len(maps):
        raise ValueError(f"steps needs one entry per level, got {len(steps)} for {len(maps)}")
    levels = []
    for k, (rows, cols) in enumerate(maps):
        wh = [(s, s) for s in sizes[k]]
        first = sizes[k][0]
        wh += [(first * math.sqrt(r), first / math.sqrt(r)) for r in ratios[k]]
        wh_t = torch.tensor(wh, dtype=torch.float32)  # [types, 2], fractions of (width, height)
        if clip:
            wh_t = wh_t.clamp(min=0, max=1)
        step_x = steps[k] / width if steps is not None else 1 / cols
        step_y = steps[k] / height if steps is not None else 1 / rows
        cx = ((torch.arange(cols) + 0.5) * step_x).to(torch.float32)
        cy = ((torch.arange(rows) + 0.5) * step_y).to(torch.float32)
        gy, gx = torch.meshgrid(cy, cx, indexing="ij")
        ctr = torch.stack((gx, gy), dim=-1).reshape(-1, 1, 2)
        half = wh_t[None] / 2
        levels.append(torch.cat((ctr - half, ctr + half), dim=-1).reshape(-1, 4))
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return torch.cat(levels) * scale


def yolo_anchors(
    image_size: int | Sequence[int],
    strides: Sequence[int],
    shapes: Sequence[Sequence[Sequence[float]]],
    grid_sizes: Sequence[Sequence[int]] | None = None,
) -> Tensor:
    """YOLO's anchors: fixed ``(width, height)`` shapes at the centre of every cell.

    Args:
        image_size: ``(height, width)`` of the network input in pixels (or one int).
        strides: pixel stride of each output level.
        shapes: per level, its anchor shapes ``[(w, h), ...]`` in pixels (YOLOv3: three per
            level, the 9 k-means shapes from small to large over strides 8, 16, 32).
        grid_sizes: ``(rows, cols)`` per level; defaults to :func:`pyramid_grid_sizes`.

    Returns:
        ``[A, 4]`` xyxy anchors centred at ``((col + 0.5) * stride, (row + 0.5) * stride)``,
        ordered level, row, column, then shape.
    """
    if len(shapes) != len(strides):
        raise ValueError(f"shapes need one list per level: {len(strides)} strides, got {len(shapes)}")
    grids = list(grid_sizes) if grid_sizes is not None else pyramid_grid_sizes(image_size, strides)
    levels = []
    for (rows, cols), stride, level_shapes in zip(grids, strides, shapes, strict=True):
        wh = torch.as_tensor(level_shapes, dtype=torch.float32).reshape(-1, 2)
        if not bool((wh > 0).all()):
            raise ValueError(f"anchor shapes must be positive (width, height) pairs, got {wh.tolist()}")
        cx = (torch.arange(cols, dtype=torch.float32) + 0.5) * stride
        cy = (torch.arange(rows, dtype=torch.float32) + 0.5) * stride
        sy, sx = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)
        half = torch.cat((-wh, wh), dim=1) / 2
        levels.append((centres + half[None]).reshape(-1, 4))
    return torch.cat(levels)


def wh_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU of boxes given only as ``(width, height)``, aligned at a common corner: ``[N, 2] x [M, 2] -> [N, M]``."""
    inter = torch.minimum(wh1[:, None, 0], wh2[None, :, 0]) * torch.minimum(wh1[:, None, 1], wh2[None, :, 1])
    union = (wh1[:, 0] * wh1[:, 1])[:, None] + (wh2[:, 0] * wh2[:, 1])[None, :] - inter
    return inter / union


def kmeans_anchors(boxes_wh: Tensor, k: int, *, iters: int = 300, seed: int = 0) -> Tensor:
    """Fit ``k`` anchor shapes to box sizes with k-means under the ``1 - IoU`` distance (YOLOv2).

    Boxes are compared by shape alone (aligned at a corner, :func:`wh_iou`). Initialised with
    k-means++ seeding under the same distance; each centre is the mean of its cluster; an
    emptied cluster is re-seeded with the box worst served by the current centres.

    Args:
        boxes_wh: ``[N, 2]`` widths and heights in pixels, all positive; ``N >= k``.
        k: number of anchors.
        iters: maximum Lloyd iterations (stops earlier once assignments settle).
        seed: seed of the k-means++ initialisation, for reproducible anchors.

    Returns:
        ``[k, 2]`` anchor widths and heights in pixels, sorted by area (smallest first).
    """
    if boxes_wh.ndim != 2 or boxes_wh.shape[1] != 2:
        raise ValueError(f"boxes_wh must have shape [N, 2] (width, height), got {list(boxes_wh.shape)}")
    wh = boxes_wh.to(torch.float64)
    if wh.numel() and not bool((torch.isfinite(wh) & (wh > 0)).all()):
        row = int((~(torch.isfinite(wh) & (wh > 0)).all(dim=1)).nonzero()[0, 0])
        raise ValueError(f"boxes_wh row {row} is {boxes_wh[row].tolist()}: widths and heights must be finite and > 0")
    if not 1 <= k <= len(wh):
        raise ValueError(f"k must be between 1 and the number of boxes ({len(wh)}), got {k}")
    gen = torch.Generator().manual_seed(seed)
    centres = wh[torch.randint(len(wh), (1,), generator=gen)]
    for _ in range(1, k):  # k-means++: pick far boxes with probability ~ distance^2
        dist = 1 - wh_iou(wh, centres).max(dim=1).values
        weights = dist**2
        pick = (
            torch.multinomial(weights, 1, generator=gen)
            if weights.sum() > 0
            else torch.randint(len(wh), (1,), generator=gen)
        )
        centres = torch.cat((centres, wh[pick]))
    assign = None
    for _ in range(iters):
        iou = wh_iou(wh, centres)  # [N, k]
        new_assign = iou.argmax(dim=1)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = torch.zeros_like(centres).index_add_(0, assign, wh)
        counts = torch.bincount(assign, minlength=k).to(wh.dtype)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp(min=1)[:, None])
        for j in empty.nonzero().flatten().tolist():
            worst = int(iou.max(dim=1).values.argmin())
            centres[j] = wh[worst]
    order = (centres[:, 0] * centres[:, 1]).argsort()
    return centres[order].to(boxes_wh.dtype)
