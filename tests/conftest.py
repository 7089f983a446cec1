import pytest
import torch


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
    from multibox.engine.train import train

    run = tmp_path_factory.mktemp("digits_run")
    overrides = [f"data.path={digits}", f"output={run}", "train.image_size=[64, 64]", "train.batch_size=4",
                 "train.epochs=1", "model.fpn_channels=16", "train.score_thresh=0.01"]  # fmt: skip
    train(load_config("cpu_digits", overrides), progress=False)
    return run


def random_boxes(n: int, size: float = 100.0, min_side: float = 1.0, generator=None) -> torch.Tensor:
    """``n`` valid xyxy boxes inside a ``size`` x ``size`` image."""
    xy = torch.rand(n, 2, generator=generator) * size * 0.8
    wh = min_side + torch.rand(n, 2, generator=generator) * size * 0.5
    return torch.cat((xy, xy + wh), dim=1)


def canonical(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Detections as rows ``[score, label, x1, y1, x2, y2]``, by score, ties by label then box.

    Correct NMS implementations may order detections of exactly equal score differently.
    """
    rows = torch.cat((scores[:, None], labels[:, None].to(scores), boxes), dim=1).double()
    for column in reversed(range(1, rows.shape[1])):
        rows = rows[rows[:, column].argsort(stable=True)]
    return rows[(-rows[:, 0]).argsort(stable=True)]
