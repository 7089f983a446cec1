"""Detection losses: focal losses, (smooth) L1 with masks, the IoU family, hard negative mining.

Element-wise losses take a ``reduction`` of ``"none"``, ``"sum"`` or ``"mean"``. Dense
detectors sum their losses over anchors and divide by the number of positive anchors (at
least 1): see :func:`positive_normalizer`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import check_boxes, iou_family
from .matching import IGNORE, NEGATIVE

__all__ = [
    "check_targets",
    "hard_negative_mining",
    "iou_loss",
    "l1_loss",
    "positive_normalizer",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_dense",
    "smooth_l1_loss",
    "soft_target_bce",
    "softmax_focal_loss",
]

_REDUCTIONS = ("none", "sum", "mean")

# Smooth L1's switch point. 1/9 is the value of Fast R-CNN's successors and torchvision's
# detection models (SSD, R-CNN box heads); beta -> 0 gives L1.
SMOOTH_L1_BETA = 1.0 / 9


def check_targets(targets, batch: int) -> None:
    """A criterion's guard: one target a batch image, or a ValueError naming both counts."""
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch} images")


def _reduce(loss: Tensor, reduction: str, count: Tensor | int | None = None) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / (count if count is not None else max(1, loss.numel()))
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def positive_normalizer(num_positive: Tensor | int, across_processes: bool = False) -> Tensor:
    """The RetinaNet / SSD loss divisor: the number of positive anchors, at least 1.

    With ``across_processes`` in a distributed run, the count averaged over the processes
    (detectron2's choice): each process divides its sum by it, so that the gradients that
    ``DistributedDataParallel`` averages equal those of one process normalising the whole
    batch by its positives. In a single process it is the count itself.
    """
    count = torch.as_tensor(num_positive, dtype=torch.float32)
    if across_processes and torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            count = count.detach().clone()
            torch.distributed.all_reduce(count)
            count = count / world
    return count.clamp(min=1)


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float | None = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017), element-wise, as ``torchvision.ops.sigmoid_focal_loss``.

    ``FL = -alpha_t * (1 - p_t)^gamma * log(p_t)`` with ``p = sigmoid(logits)``.

    Args:
        logits: raw scores, any shape.
        targets: same shape, 1 for the true class and 0 otherwise (soft targets allowed).
        alpha: weight of the positive class in ``[0, 1]`` (``1 - alpha`` for negatives);
            ``None`` or negative for no weighting.
        gamma: focusing parameter; 0 gives binary cross-entropy.
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {list(logits.shape)} and targets {list(targets.shape)} must have one shape")
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None and alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


class _NegativeFocalSum(torch.autograd.Function):
    """``(sigmoid(x) ** gamma * softplus(x)).sum(-1)`` with a hand-written backward.

    Autograd's version of this expression makes about twenty passes over the dense ``[B, A, K]``
    logits forward and backward (the largest tensor of the loss); this one makes ten:
    ``d/dx = s^gamma * (gamma * (1 - s) * softplus(x) + s)`` with ``s = sigmoid(x)``, from the
    saved ``s``, ``s^gamma`` and ``softplus(x)``. Same values; gradients equal to float rounding
    (tested against torchvision's focal loss).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, gamma: float) -> Tensor:
        s = torch.sigmoid(logits)
        softplus = F.softplus(logits)
        s_gamma = s * s if gamma == 2 else s.pow(gamma)
        ctx.gamma = gamma
        ctx.save_for_backward(s, s_gamma, softplus)
        return (s_gamma * softplus).sum(dim=-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        s, s_gamma, softplus = ctx.saved_tensors
        slope = torch.rsub(s, 1).mul_(softplus)
        return s.add(slope, alpha=ctx.gamma).mul_(s_gamma).mul_(grad.unsqueeze(-1)), None


def sigmoid_focal_loss_dense(
    cls_logits: Tensor, labels: Tensor, alpha: float | None = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sigmoid focal loss of a dense head against matched anchor labels, summed per image.

    Equal to :func:`sigmoid_focal_loss` on one-hot targets summed over the non-ignored
    anchors, without building the one-hot tensor: every entry is first scored as a negative,
    then the few positive entries are corrected. This is the RetinaNet classification loss
    before normalisation.

    Args:
        cls_logits: ``[B, A, K]`` raw scores (``[A, K]`` for one image).
        labels: ``[B, A]`` class index ``0..K-1`` of each anchor's match, ``NEGATIVE`` for
            background or ``IGNORE`` to leave the anchor out.
        alpha: weight of positives (``1 - alpha`` for negatives); ``None`` for none.
        gamma: focusing parameter.

    Returns:
        ``[B]`` (or scalar) summed loss per image.
    """
    if labels.shape != cls_logits.shape[:-1]:
        raise ValueError(
            f"labels {list(labels.shape)} must match cls_logits {list(cls_logits.shape)} without the class axis"
        )
    num_classes = cls_logits.shape[-1]
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"labels hold class {int(labels.max())} but cls_logits has only {num_classes} classes")
    weighted = alpha is not None and alpha >= 0
    w_pos, w_neg = (alpha, 1 - alpha) if weighted else (1.0, 1.0)

    # Every entry as a negative: -(1 - alpha) * p^gamma * log(1 - p) = (1 - alpha) * p^gamma * softplus(x).
    as_negative = _NegativeFocalSum.apply(cls_logits, gamma)  # [B, A]
    per_image = (as_negative * (labels != IGNORE)).sum(dim=-1) * w_neg

    positive = labels >= 0
    x = cls_logits[positive].gather(-1, labels[positive][:, None]).squeeze(-1)  # [P]
    correction = w_pos * torch.sigmoid(-x) ** gamma * F.softplus(-x) - w_neg * torch.sigmoid(x) ** gamma * F.softplus(x)
    image_of_positive = positive.nonzero()[:, 0] if labels.ndim == 2 else torch.zeros_like(x, dtype=torch.long)
    if labels.ndim == 2:
        return per_image.index_add(0, image_of_positive, correction)
    return per_image + correction.sum()


def softmax_focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | None = None,
    ignore_index: int = IGNORE,
    reduction: str = "none",
) -> Tensor:
    """Softmax focal loss: ``-alpha_t * (1 - p_t)^gamma * log(p_t)``, ``p_t`` the softmax of the true column.

    The form of the d2l.ai toy-SSD exercise; ``gamma = 0`` gives cross-entropy. For a softmax
    detection head the background is a column of ``logits`` (column 0 by multibox's
    convention), so ``targets`` index columns, not user classes.

    Args:
        logits: ``[N, C]`` raw scores.
        targets: ``[N]`` column indices; ``ignore_index`` entries contribute 0.
        gamma: focusing parameter.
        alpha: optional ``[C]`` per-column weights.
        ignore_index: target value to leave out.
        reduction: ``"none"`` (``[N]``), ``"sum"``, or ``"mean"`` over non-ignored entries.
    """
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, C] and targets [N], got {list(logits.shape)}, {list(targets.shape)}")
    keep = targets != ignore_index
    safe = targets.masked_fill(~keep, 0)
    if keep.any() and (int(safe.max()) >= logits.shape[1] or int(safe.min()) < 0):
        raise ValueError(f"targets must lie in 0..{logits.shape[1] - 1} (or be {ignore_index} to ignore)")
    log_p = F.log_softmax(logits, dim=-1).gather(1, safe[:, None]).squeeze(1)
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    if alpha is not None:
        loss = loss * alpha.to(loss)[safe]
    loss = loss * keep
    return _reduce(loss, reduction, count=keep.sum().clamp(min=1))


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    beta: float = SMOOTH_L1_BETA,
    mask: Tensor | None = None,
    reduction: str = "sum",
) -> Tensor:
    """Smooth L1 (Huber / beta) loss, element-wise; ``beta = 0`` gives L1.

    Args:
        pred, target: same shape, e.g. ``[B, A, 4]`` deltas.
        beta: where the loss turns from quadratic to linear.
        mask: optional boolean tensor broadcastable to ``pred`` (e.g. positives ``[B, A, 1]``);
            masked-out entries contribute 0 and are not counted by ``"mean"``.
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} must have one shape")
    diff = (pred - target).abs()
    loss = diff if beta <= 0 else torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
    count = None
    if mask is not None:
        mask = mask.expand_as(loss)
        loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
        count = mask.sum().clamp(min=1)
    return _reduce(loss, reduction, count)


def l1_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None, reduction: str = "sum") -> Tensor:
    """L1 loss with an optional mask; :func:`smooth_l1_loss` with ``beta = 0``."""
    return smooth_l1_loss(pred, target, beta=0.0, mask=mask, reduction=reduction)


def iou_loss(pred: Tensor, target: Tensor, kind: str = "giou", reduction: str = "none") -> Tensor:
    """``1 - IoU`` of matched box pairs, for ``kind`` in ``iou``, ``giou``, ``diou``, ``ciou``.

    Args:
        pred: ``[..., 4]`` predicted xyxy boxes in pixels.
        target: ``[..., 4]`` ground-truth xyxy boxes, same shape, valid boxes.
        kind: which member of the IoU family.
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.

    Same values as ``torchvision.ops.generalized_box_iou_loss`` / ``distance_box_iou_loss`` /
    ``complete_box_iou_loss`` (up to their ``eps``).
    """
    if kind not in ("iou", "giou", "diou", "ciou"):
        raise ValueError(f"kind must be one of 'iou', 'giou', 'diou', 'ciou', got {kind!r}")
    if pred.shape != target.shape or pred.shape[-1:] != (4,):
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} must both be [..., 4]")
    check_boxes(target, "target")
    return _reduce(1 - iou_family(pred, target, kind), reduction)


def hard_negative_mining(loss: Tensor, labels: Tensor, neg_pos_ratio: float = 3.0, min_negatives: int = 0) -> Tensor:
    """SSD's hard negative mining: keep the positives and the highest-loss negatives.

    Per image, the ``neg_pos_ratio * num_positives`` negatives (at least ``min_negatives``)
    with the largest ``loss`` are kept. SSD uses ratio 3 and no minimum, so an image without
    positives contributes no classification loss; set ``min_negatives`` to train its
    background anyway.

    Args:
        loss: ``[B, A]`` (or ``[A]``) per-anchor classification loss; only its order is used.
        labels: same shape; ``>= 0`` positive, ``NEGATIVE`` background, ``IGNORE`` never kept.
        neg_pos_ratio: negatives kept per positive.
        min_negatives: negatives kept per image at least (when it has that many).

    Returns:
        Boolean mask, same shape: the anchors whose loss counts.
    """
    if loss.shape != labels.shape:
        raise ValueError(f"loss {list(loss.shape)} and labels {list(labels.shape)} must have one shape")
    positive = labels >= 0
    negative = labels == NEGATIVE
    quota = (positive.sum(dim=-1, keepdim=True) * neg_pos_ratio).floor().clamp(min=min_negatives)
    ranked = loss.detach().masked_fill(~negative, float("-inf"))
    order = ranked.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order)
    )
    return positive | (negative & (rank < quota))


def soft_target_bce(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy, summed, of ``[B, A, K]`` logits against targets that are 0 except
    in each positive anchor's class column (``labels`` ``[B, A]``, negative for none), where they
    are ``targets`` ``[B, A]``."""
    dense = torch.zeros_like(logits)
    image, anchor = (labels >= 0).nonzero(as_tuple=True)
    dense[image, anchor, labels[image, anchor]] = targets[image, anchor].to(dense)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, dense, reduction="sum")
