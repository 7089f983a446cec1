import pytest
import torch

from multibox.structures import Detections, match_detections


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """A VOC set of 16 + 4 digit scenes, 64x64, 1 to 3 digits each."""
    from multibox.data.synthetic import SceneConfig, synthesize_digits

    root = tmp_path_factory.mktemp("digits")
    synthesize_digits(root, train=16, val=4, seed=0, config=SceneConfig(size=64, max_digits=3, min_height=8))
    return root


@pytest.fixture(scope="session")
def digits_run(digits, tmp_path_factory):
    """A cpu_digits RetinaNet trained one epoch on ``digits`` at 64x64 (ImageNet MobileNetV2,
    offline; FPN width 16; score threshold 0.01): a real checkpoint to export, tile, serve."""
    from multibox.config import load_config
    from multibox.engine import train

    run = tmp_path_factory.mktemp("digits_run")
    overrides = [f"data.path={digits}", f"output={run}", "train.image_size=[64, 64]", "train.batch_size=4",
                 "train.epochs=1", "model.fpn_channels=16", "train.score_thresh=0.01"]  # fmt: skip
    train(load_config("cpu_digits", overrides), progress=False)
    return run


@pytest.fixture(scope="session")
def trained_run(digits, tmp_path_factory):
    """cpu_digits trained 40 epochs on the 16 scenes at 64x64: detections it is sure of."""
    from multibox.config import load_config
    from multibox.engine import train

    run = tmp_path_factory.mktemp("trained_run")
    overrides = [f"data.path={digits}", f"output={run}", "data.val_split=", "input.size=[64, 64]",
                 "train.batch_size=4", "train.epochs=40", "train.warmup_steps=20", "train.precompute=false",
                 "model.retinanet.fpn_channels=16", "train.checkpoint_every=0"]  # fmt: skip
    torch.manual_seed(0)
    train(load_config("cpu_digits", overrides), progress=False)
    return run


def agreement(found, reference) -> float:
    """The share of ``reference``'s detections that ``found`` has too: same label, IoU >= 0.9."""
    from multibox.boxes import box_iou

    if len(reference) == 0:
        return 1.0
    iou = box_iou(reference.boxes, found.boxes) * (reference.labels[:, None] == found.labels[None])
    return float((iou.amax(1) >= 0.9).float().mean()) if len(found) else 0.0


def random_boxes(n: int, size: float = 100.0, min_side: float = 1.0, generator=None) -> torch.Tensor:
    """``n`` valid xyxy boxes inside a ``size`` x ``size`` image."""
    xy = torch.rand(n, 2, generator=generator) * size * 0.8
    wh = min_side + torch.rand(n, 2, generator=generator) * size * 0.5
    return torch.cat((xy, xy + wh), dim=1)


def assert_same_detections(found, expected, *, score_atol: float = 1e-6, box_atol: float = 1e-4) -> None:
    """``found`` and ``expected`` (``Detections``, or torchvision's dicts) are the same detections.

    The same count, and one to one the same label with the score within ``score_atol`` and each box
    coordinate within ``box_atol`` px (``multibox.structures.match_detections``). The defaults fit
    two sides that differ only in the last bits of a vectorised ``exp`` / ``sigmoid`` (AVX2 and
    AVX-512 round differently, and so do a vector body and its scalar tail): scores in [0, 1] move by
    an ulp or two (6e-8 to 1.2e-7), boxes of images up to 256 px by a few ulps (1.5e-5 each below 256).
    """
    found, expected = (_as_detections(d) for d in (found, expected))
    assert len(found) == len(expected), f"{len(found)} detections, expected {len(expected)}"
    assert bool((found.scores[1:] <= found.scores[:-1]).all()), "detections not sorted best first"
    index = match_detections(found, expected, score_atol=score_atol, box_atol=box_atol)
    unmatched = (index < 0).nonzero().flatten().tolist()
    assert not unmatched, [
        (found.labels[i].item(), found.scores[i].item(), found.boxes[i].tolist()) for i in unmatched[:5]
    ]


def _as_detections(detections):
    if isinstance(detections, dict):  # torchvision's detection models return dicts
        return Detections(detections["boxes"], detections["scores"], detections["labels"])
    return detections


def pytest_collection_modifyitems(config, items):
    """OpenVINO's tests last: with them in their alphabetical place, the full suite of 3ce6724
    crashed (SIGSEGV, 3 runs of 3 on the Intel Xeon) in test_serve's first fixture, in CPython's
    evaluation loop in the main thread (gdb: a corrupted object, not a crash inside OpenVINO's
    code), not in any smaller combination tried. The suite of issue 27's part 2 passed once in
    that order; the cause is not known, so they stay last (issue 27's notes)."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_openvino.py"))
