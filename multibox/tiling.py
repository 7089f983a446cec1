"""Detection on images larger than the network's input: overlapping tiles, then one set of boxes.

:func:`tile_windows` lays square tiles over the image with a given overlap; a detector runs on
each tile (resized to its input as any image is); :func:`merge_tiles` maps the boxes back and
merges them: the pieces of an object cut by tile edges are joined into one box, and objects
that several tiles see whole are reduced to one by class-wise NMS.

    windows = tile_windows(height, width, tile=512, overlap=0.2)
    found = merge_tiles(per_tile_detections, windows, (height, width))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .structures import Detections

__all__ = ["merge_tiles", "tile_windows"]


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    step = max(1, math.floor(tile * (1 - overlap)))
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]  # the last tile ends at the border


def tile_windows(height: int, width: int, tile: int, overlap: float = 0.2) -> list[tuple[int, int, int, int]]:
    """``(x1, y1, x2, y2)`` windows of side ``tile`` (less where the image is smaller) covering the
    image, neighbours overlapping by at least ``overlap`` of a tile; rows first."""
    if tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, got {tile}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap is a fraction of the tile in [0, 1), got {overlap}")
    return [
        (x, y, min(x + tile, width), min(y + tile, height))
        for y in _starts(height, tile, overlap)
        for x in _starts(width, tile, overlap)
    ]


def _cut_sides(boxes: Tensor, windows: Tensor, image: tuple[int, int], margin: float) -> Tensor:
    """``[N, 4]`` booleans: each box's left, top, right, bottom side lies on an edge of its tile
    that is inside the image (where the tile may have cut the object)."""
    height, width = image
    inner = torch.stack((windows[:, 0] > 0, windows[:, 1] > 0, windows[:, 2] < width, windows[:, 3] < height), dim=1)
    near = (boxes - windows).abs() <= margin
    return near & inner


def _overlap_1d(a1: Tensor, a2: Tensor, b1: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise overlap length and 1-D IoU of intervals ``[a1, a2]`` x ``[b1, b2]``."""
    inter = (torch.minimum(a2[:, None], b2[None]) - torch.maximum(a1[:, None], b1[None])).clamp(min=0)
    union = (a2 - a1)[:, None] + (b2 - b1)[None] - inter
    return inter, inter / union.clamp(min=1e-9)


def merge_tiles(
    detections: Sequence[Detections],
    windows: Sequence[Sequence[int]],
    image_size: Sequence[int],
    nms_iou: float = 0.5,
    join_iou: float = 0.5,
    contain: float = 0.7,
    margin: float = 2.0,
    max_det: int | None = None,
) -> Detections:
    """One set of detections for the whole image from the detections of its tiles.

    Args:
        detections: per tile, boxes in that tile's pixels (after undoing the resize).
        windows: the tiles, as :func:`tile_windows` gives them.
        image_size: ``(height, width)`` of the image.
        nms_iou: class-wise NMS over the joined boxes (objects seen whole by several tiles).
        join_iou: two boxes of one class from different tiles, each cut by its tile on facing
            sides (one's right and the other's left, or bottom and top), whose extents across
            that cut overlap with this 1-D IoU and along it meet, are pieces of one object.
        contain: a box cut by its tile that lies this much (intersection over its own area)
            inside a box of the same class from another tile is a piece of that object.
        margin: pixels within which a box side counts as lying on a tile edge.
        max_det: keep the best this many (all by default).

    Returns:
        :class:`Detections` in image pixels, highest score first; a joined object's box is the
        union of its pieces, its score the best of theirs.
    """
    if len(detections) != len(windows):
        raise ValueError(f"got detections for {len(detections)} tiles and {len(windows)} windows")
    if sum(len(d) for d in detections) == 0:
        return Detections.empty()
    boxes, tiles = _in_image(detections, windows)
    scores = torch.cat([d.scores.float().cpu() for d in detections])
    labels = torch.cat([d.labels.cpu() for d in detections])
    tile_index = torch.cat([torch.full((len(d),), i) for i, d in enumerate(detections)])
    cut = _cut_sides(boxes, tiles, (int(image_size[0]), int(image_size[1])), margin)  # left, top, right, bottom
    pairs = _pieces_of_one_object(boxes, labels, tile_index, windows, cut, join_iou, contain)
    group = _components(len(boxes), pairs)
    joined = torch.empty((int(group.max()) + 1, 4))
    joined[:, :2] = torch.full_like(joined[:, :2], math.inf).scatter_reduce(
        0, group[:, None].expand(-1, 2), boxes[:, :2], "amin"
    )
    joined[:, 2:] = torch.full_like(joined[:, 2:], -math.inf).scatter_reduce(
        0, group[:, None].expand(-1, 2), boxes[:, 2:], "amax"
    )
    best = torch.zeros(len(joined)).scatter_reduce(0, group, scores, "amax", include_self=False)
    joined_labels = torch.zeros(len(joined), dtype=torch.long).scatter(0, group, labels)
    keep = batched_nms(joined, best, joined_labels, nms_iou)
    if max_det is not None:
        keep = keep[:max_det]
    return Detections(joined[keep], best[keep], joined_labels[keep])


def _in_image(detections: Sequence[Detections], windows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Every tile's boxes in the image's pixels ``[N, 4]``, and the window each came from ``[N, 4]``."""
    parts, where = [], []
    for det, window in zip(detections, windows, strict=True):
        offset = torch.tensor([window[0], window[1], window[0], window[1]], dtype=torch.float32)
        parts.append(det.boxes.float().cpu() + offset)
        where.append(torch.tensor(window, dtype=torch.float32).expand(len(det), 4))
    return torch.cat(parts), torch.cat(where)


def _pieces_of_one_object(
    boxes: Tensor,
    labels: Tensor,
    tile_index: Tensor,
    windows: Sequence[Sequence[int]],
    cut: Tensor,
    join_iou: float,
    contain: float,
) -> Tensor:
    """``[E, 2]`` index pairs of boxes of one class from different tiles that are pieces of one
    object. Pieces overlap, so only the boxes of overlapping tiles are compared, tile pair by tile
    pair: memory grows with the boxes of two tiles, not with the square of the image's (a
    10000-px image cut into 400-px tiles has hundreds of thousands of candidate boxes)."""
    tiles = torch.unique(tile_index)
    members = [(tile_index == t).nonzero().flatten() for t in tiles]
    w = torch.tensor([windows[int(t)] for t in tiles], dtype=torch.float32).reshape(-1, 4)
    overlap = (w[:, None, 0] < w[None, :, 2]) & (w[None, :, 0] < w[:, None, 2])
    overlap &= (w[:, None, 1] < w[None, :, 3]) & (w[None, :, 1] < w[:, None, 3])
    found = [torch.zeros((0, 2), dtype=torch.long)]
    for a, b in torch.triu(overlap, diagonal=1).nonzero().tolist():  # each pair of overlapping tiles once
        i, j = members[a], members[b]
        linked = _pieces_between(boxes[i], labels[i], cut[i], boxes[j], labels[j], cut[j], join_iou, contain)
        pairs = linked.nonzero()
        found.append(torch.stack((i[pairs[:, 0]], j[pairs[:, 1]]), dim=1))
    return torch.cat(found)


def _pieces_between(
    boxes_a: Tensor,
    labels_a: Tensor,
    cut_a: Tensor,
    boxes_b: Tensor,
    labels_b: Tensor,
    cut_b: Tensor,
    join_iou: float,
    contain: float,
) -> Tensor:
    """``[Na, Nb]``: box ``i`` of one tile and box ``j`` of another are pieces of one object."""
    x_inter, x_iou = _overlap_1d(boxes_a[:, 0], boxes_a[:, 2], boxes_b[:, 0], boxes_b[:, 2])
    y_inter, y_iou = _overlap_1d(boxes_a[:, 1], boxes_a[:, 3], boxes_b[:, 1], boxes_b[:, 3])
    # pieces across a vertical cut (one cut on its right, the other on its left) or a horizontal one
    meet_x, meet_y = (x_inter > 0) & (y_iou >= join_iou), (y_inter > 0) & (x_iou >= join_iou)
    across_x = ((cut_a[:, 2, None] & cut_b[None, :, 0]) | (cut_a[:, 0, None] & cut_b[None, :, 2])) & meet_x
    across_y = ((cut_a[:, 3, None] & cut_b[None, :, 1]) | (cut_a[:, 1, None] & cut_b[None, :, 3])) & meet_y
    # a cut piece inside a whole view of the object (either way round)
    inter = x_inter * y_inter
    area_a = ((boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])).clamp(min=1e-9)
    area_b = ((boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])).clamp(min=1e-9)
    inside = ((inter / area_a[:, None] >= contain) & cut_a.any(dim=1)[:, None]) | (
        (inter / area_b[None] >= contain) & cut_b.any(dim=1)[None]
    )
    return (labels_a[:, None] == labels_b[None]) & (across_x | across_y | inside)


def _components(count: int, pairs: Tensor) -> Tensor:
    """Connected components of the graph of ``count`` nodes and edges ``pairs [E, 2]``: a
    component index ``0..G-1`` per node."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs.tolist():
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return torch.unique(torch.tensor([root(i) for i in range(count)]), return_inverse=True)[1]
