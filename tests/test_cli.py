import torch
from typer.testing import CliRunner

from multibox import __version__
from multibox.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"multibox {__version__}"


def test_info_reports_versions_and_offline_weights():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0
    assert "torchvision" in result.stdout and "device" in result.stdout
    assert "mobilenet_v2-b0353104.pth" in result.stdout  # installed by `make` with --no-deps
    assert f"torch kernels {torch.backends.cpu.get_cpu_capability()}" in result.stdout  # the CPU, for bug reports
