import pytest
import torch
import torchvision
from conftest import assert_same_detections
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

import multibox.postprocess as pp
from multibox.anchors import grid_anchors, grid_cell_sizes, pyramid_anchors, pyramid_grid_sizes
from multibox.coding import DeltaCoder, TanhCoder
from multibox.postprocess import SoftNMS, postprocess
from multibox.structures import Detections

STRIDES, SIZES = (8, 16, 32), (16, 32, 64)


def _setup(batch=3, num_classes=5, size=(128, 160), peaky=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    anchors = pyramid_anchors(size, STRIDES, SIZES)
    level_sizes = [h * w * 9 for h, w in pyramid_grid_sizes(size, STRIDES)]
    num = len(anchors)
    if peaky:  # a trained detector: few objects, many overlapping confident candidates around each
        logits = torch.randn(batch, num, num_classes, generator=gen) - 6
        hot = torch.randint(0, num, (batch, 40), generator=gen)
        for b in range(batch):
            logits[b, hot[b], torch.randint(0, 2, (40,), generator=gen)] += 8
            logits[b, hot[b].clamp(max=num - 2) + 1, 0] += 7
    else:
        logits = torch.randn(batch, num, num_classes, generator=gen) - 3.5
    deltas = torch.randn(batch, num, 4, generator=gen) * 0.3
    return logits, deltas, anchors, level_sizes


def _torchvision(logits, deltas, anchors, level_sizes, image_sizes, max_det=100, score_thresh=0.05, topk=1000, nms=0.5):
    model = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=logits.shape[-1],
        detections_per_img=max_det,
        score_thresh=score_thresh,
        topk_candidates=topk,
        nms_thresh=nms,
    )
    head = {"cls_logits": list(logits.split(level_sizes, 1)), "bbox_regression": list(deltas.split(level_sizes, 1))}
    per_image = [list(anchors.split(level_sizes))] * len(logits)
    return model.postprocess_detections(head, per_image, image_sizes)


def _assert_same(ours, theirs):
    # the same detections, not the same bits: torchvision's sigmoid runs on each level's scores and
    # ours on the candidates, so a vectorised sigmoid may round a score an ulp apart (AVX-512: 6e-8)
    assert len(ours) == len(theirs)
    for o, t in zip(ours, theirs, strict=True):
        assert_same_detections(o, t)


@pytest.mark.parametrize("peaky", [False, True])
@pytest.mark.parametrize("max_det,topk", [(100, 1000), (20, 50), (300, 200)])
def test_equals_torchvision_retinanet(peaky, max_det, topk):
    logits, deltas, anchors, level_sizes = _setup(peaky=peaky)
    sizes = [(128, 160), (100, 150), (64, 64)]  # different clipping per image
    ours = postprocess(
        logits, deltas, anchors, sizes, coder=DeltaCoder(), level_sizes=level_sizes, topk=topk, max_det=max_det
    )
    _assert_same(ours, _torchvision(logits, deltas, anchors, level_sizes, sizes, max_det=max_det, topk=topk))


def test_exact_fallback_path_equals_torchvision(monkeypatch):
    monkeypatch.setattr(pp, "_FIRST_ROUND", 8)
    monkeypatch.setattr(pp, "_DENSE_LIMIT", 32)  # every image falls through to per-class NMS
    logits, deltas, anchors, level_sizes = _setup(peaky=True, seed=3)
    sizes = [(128, 160)] * 3
    ours = postprocess(logits, deltas, anchors, sizes, coder=DeltaCoder(), level_sizes=level_sizes, nms_iou=0.45)
    _assert_same(ours, _torchvision(logits, deltas, anchors, level_sizes, sizes, nms=0.45))


def test_batched_equals_one_image_at_a_time():
    logits, deltas, anchors, level_sizes = _setup(batch=4, peaky=True, seed=1)
    sizes = [(128, 160), (120, 160), (128, 100), (90, 90)]
    batched = postprocess(logits, deltas, anchors, sizes, coder=DeltaCoder(), level_sizes=level_sizes)
    for i in range(4):
        (single,) = postprocess(
            logits[i : i + 1], deltas[i : i + 1], anchors, sizes[i : i + 1], coder=DeltaCoder(), level_sizes=level_sizes
        )
        assert torch.equal(single.boxes, batched[i].boxes) and torch.equal(single.labels, batched[i].labels)


def _reference_with_scores(
    scores, deltas, anchors, level_sizes, image_size, thresh=0.05, topk=1000, nms=0.5, max_det=100
):
    """torchvision's per-level loop on given probabilities ``[A, K]`` (one image)."""
    boxes_all, scores_all, labels_all = [], [], []
    start = 0
    for n in level_sizes:
        s = scores[start : start + n].flatten()
        keep = torch.where(s > thresh)[0]
        v, i = s[keep].topk(min(topk, len(keep)))
        idx = keep[i]
        a = idx // scores.shape[1] + start
        boxes_all.append(clip_boxes_to_image(DeltaCoder().decode(anchors[a], deltas[a]), image_size))
        scores_all.append(v)
        labels_all.append(idx % scores.shape[1])
        start += n
    b, s, lab = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
    k = batched_nms(b, s, lab, nms)[:max_det]
    return b[k], s[k], lab[k]


def test_softmax_activation_equals_reference():
    logits, deltas, anchors, level_sizes = _setup(batch=2, num_classes=4, peaky=True, seed=5)
    logits[..., 0] += 2.0  # a background column
    ours = postprocess(
        logits, deltas, anchors, [(128, 160)] * 2, coder=DeltaCoder(), level_sizes=level_sizes, activation="softmax"
    )
    for i in range(2):
        probs = logits[i].softmax(-1)[:, 1:]
        b, s, lab = _reference_with_scores(probs, deltas[i], anchors, level_sizes, (128, 160))
        assert_same_detections(ours[i], Detections(b, s, lab))  # exp on other shapes: boxes may differ by an ulp
    assert all(int(d.labels.max()) <= 2 for d in ours)  # labels are user classes 0..K-1, background dropped


def _reference_soft_nms(boxes, scores, labels, sigma, min_score, method, nms_iou):
    """The classic per-class loop of Bodla et al. (2017)."""
    kept_boxes, kept_scores, kept_labels = [], [], []
    for c in labels.unique():
        b, s = boxes[labels == c].clone(), scores[labels == c].clone()
        while len(s):
            i = int(s.argmax())
            kept_boxes.append(b[i]), kept_scores.append(s[i].clone()), kept_labels.append(c)
            iou = box_iou(b[i : i + 1], b)[0]
            decay = (
                torch.exp(-(iou**2) / sigma)
                if method == "gaussian"
                else torch.where(iou > nms_iou, 1 - iou, torch.ones_like(iou))
            )
            s = s * decay
            alive = (s > min_score) & (torch.arange(len(s)) != i)
            b, s = b[alive], s[alive]
    order = torch.stack(kept_scores).argsort(descending=True)
    return torch.stack(kept_boxes)[order], torch.stack(kept_scores)[order], torch.stack(kept_labels)[order]


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_equals_slow_reference(method):
    logits, deltas, anchors, level_sizes = _setup(batch=2, num_classes=3, peaky=True, seed=2)
    cfg = SoftNMS(method=method, sigma=0.5, min_score=0.05)
    ours = postprocess(
        logits,
        deltas,
        anchors,
        [(128, 160)] * 2,
        coder=DeltaCoder(),
        level_sizes=level_sizes,
        soft_nms=cfg,
        max_det=1000,
        topk=60,
    )
    for i in range(2):
        # candidates exactly as postprocess selects them, with NMS switched off
        (cand,) = postprocess(
            logits[i : i + 1],
            deltas[i : i + 1],
            anchors,
            [(128, 160)],
            coder=DeltaCoder(),
            level_sizes=level_sizes,
            nms_iou=1.0,
            max_det=10**6,
            topk=60,
        )
        b, s, lab = _reference_soft_nms(cand.boxes, cand.scores, cand.labels, 0.5, 0.05, method, 0.5)
        assert len(ours[i]) == len(s) > 0
        torch.testing.assert_close(ours[i].scores, s)
        torch.testing.assert_close(ours[i].boxes, b)
        assert torch.equal(ours[i].labels, lab)


def test_tanh_coder_on_grid_anchors():
    anchors = grid_anchors() * 224
    coder = TanhCoder(grid_cell_sizes() * 224)
    logits, deltas = torch.randn(2, len(anchors), 3), torch.randn(2, len(anchors), 4)
    (det, _) = postprocess(logits, deltas, anchors, [(224, 224)] * 2, coder=coder, score_thresh=0.3, max_det=5)
    assert len(det) == 5
    full = coder.decode(anchors, deltas[0]).clamp(0, 224)
    # every detection is one of the decoded anchors with its own score
    match = (det.boxes[:, None, :] - full[None]).abs().amax(-1) < 1e-4
    assert match.any(dim=1).all()


def test_no_candidates_and_empty_batch():
    logits, deltas, anchors, level_sizes = _setup(batch=2)
    dets = postprocess(logits - 100, deltas, anchors, [(128, 160)] * 2, coder=DeltaCoder(), level_sizes=level_sizes)
    assert [len(d) for d in dets] == [0, 0] and dets[0].boxes.shape == (0, 4)
    assert postprocess(logits[:0], deltas[:0], anchors, [], coder=DeltaCoder()) == []


def test_bad_inputs_are_named():
    logits, deltas, anchors, _ = _setup(batch=2)
    with pytest.raises(ValueError, match="level_sizes"):
        postprocess(logits, deltas, anchors, [(1, 1)] * 2, coder=DeltaCoder(), level_sizes=[5, 5])
    with pytest.raises(ValueError, match="box_deltas must have shape"):
        postprocess(logits, deltas[:, :-1], anchors, [(1, 1)] * 2, coder=DeltaCoder())
    with pytest.raises(ValueError, match="image_sizes"):
        postprocess(logits, deltas, anchors, [(1, 1)], coder=DeltaCoder())
    with pytest.raises(ValueError, match="activation"):
        postprocess(logits, deltas, anchors, [(1, 1)] * 2, coder=DeltaCoder(), activation="relu")
    with pytest.raises(ValueError, match="SoftNMS method"):
        SoftNMS(method="hard")


def test_float_threshold_matches_double_comparison():
    t = pp._float_threshold(0.45, torch.float32)
    values = torch.tensor([0.45, 0.4499999, 0.45000002], dtype=torch.float32)
    assert ((values > t) == (values.double() > 0.45)).all()
