import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_boxes(n: int, size: float = 100.0, min_side: float = 1.0, generator=None) -> torch.Tensor:
    """``n`` valid xyxy boxes inside a ``size`` x ``size`` image."""
    xy = torch.rand(n, 2, generator=generator) * size * 0.8
    wh = min_side + torch.rand(n, 2, generator=generator) * size * 0.5
    return torch.cat((xy, xy + wh), dim=1)
