"""``multibox data ...``: convert, check, show and synthesise datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from .cli_errors import fail
from .data.records import DataError

app = typer.Typer(help="Datasets: convert between formats, check, show, synthesise.", no_args_is_help=True)
synth_app = typer.Typer(help="Render synthetic datasets.", no_args_is_help=True)
app.add_typer(synth_app, name="synth")

FORMAT_HELP = "voc | coco | yolo | csv (default: detected from PATH)"
IMAGES_HELP = "COCO: the folder file_name is relative to (default: the JSON file's folder)"


@app.command()
def convert(
    src: Path = typer.Argument(..., help="dataset to read (VOC root, COCO .json or folder, YOLO data.yaml, .csv)"),
    dst: Path = typer.Argument(..., help="folder to write"),
    to: str = typer.Option(..., "--to", help="voc | coco | yolo | csv"),
    fmt: str | None = typer.Option(None, "--format", help=FORMAT_HELP),
    policy: str = typer.Option("error", help="bad boxes: error | clip | skip"),
    images: Path | None = typer.Option(None, help=IMAGES_HELP),
) -> None:
    """Convert every split of a dataset to another format.

    Example: multibox data convert data/digits data/digits-yolo --to yolo
    """
    from .data.loading import convert as run

    try:
        reports = run(src, dst, to, fmt, policy, images)
    except (DataError, ValueError, OSError) as error:
        fail(error)
    for split, report in reports.items():
        typer.echo(f"{split}: written to {dst} as {to}; {report}".rstrip())


@app.command()
def check(
    path: Path = typer.Argument(..., help="dataset to check"),
    fmt: str | None = typer.Option(None, "--format", help=FORMAT_HELP),
    split: str | None = typer.Option(None, help="one split (default: all)"),
    out: Path | None = typer.Option(
        None,
        "--out",
        "--plot",
        help="PNG of box size and aspect histograms (default: box_statistics.png beside the dataset's annotations)",
    ),
    no_plot: bool = typer.Option(False, "--no-plot", help="do not write the histograms"),
    decode: bool = typer.Option(True, help="decode every image to find corrupt files"),
    images: Path | None = typer.Option(None, help=IMAGES_HELP),
) -> None:
    """Summarise a dataset and list every problem (file, line or annotation id, box; missing,
    truncated or corrupt images), and warn of classes that only other splits than train hold.
    Exit 1 if there is a problem.

    Example: multibox data check data/digits --out boxes.png
    """
    from .data.check import check_dataset, plot_box_statistics, unseen_warning

    try:
        results, datasets = check_dataset(path, fmt, split, decode, images)
    except (DataError, ValueError, OSError) as error:
        fail(error)
    total = 0
    for result in results:
        s = result.summary
        typer.echo(
            f"[{result.split}] {s['images']} images ({s['empty_images']} without boxes), {s['boxes']} boxes; "
            f"COCO sizes: {s['small']} small, {s['medium']} medium, {s['large']} large"
        )
        typer.echo("  classes: " + ", ".join(f"{k} {v}" for k, v in s["classes"].items()))
        for problem in result.problems:
            typer.echo(f"  problem: {problem}")
        if result.unseen:
            typer.secho(f"  warning: {unseen_warning(result.split, result.unseen)}", fg=typer.colors.YELLOW)
        total += len(result.problems)
    if not no_plot and datasets:
        target = out or (path if path.is_dir() else path.parent) / "box_statistics.png"
        try:
            plot_box_statistics(datasets, target)
        except OSError as error:
            fail(error)
        typer.echo(f"box statistics ({', '.join(datasets)}): {target}")
    typer.echo(f"{total} problem(s) found")
    if total:
        raise typer.Exit(1)


@app.command()
def show(
    path: Path = typer.Argument(..., help="dataset to show"),
    out: Path = typer.Option(Path("grid.png"), help="PNG to write"),
    n: int = typer.Option(16, help="number of images"),
    fmt: str | None = typer.Option(None, "--format", help=FORMAT_HELP),
    split: str = typer.Option("train", help="split to show"),
    seed: int = typer.Option(0, help="which images (random sample)"),
    images: Path | None = typer.Option(None, help=IMAGES_HELP),
) -> None:
    """Draw images of a dataset with their boxes and class names into one grid PNG.

    Example: multibox data show data/digits --n 16 --out grid.png
    """
    import numpy as np

    from .data.io import atomic_write_bytes, read_image
    from .data.loading import load_dataset
    from .viz import draw_detections, image_grid

    try:
        data, _ = load_dataset(path, split, fmt, policy="skip", image_dir=images)
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(data.records), size=min(n, len(data.records)), replace=False)
        tiles = [
            draw_detections(
                read_image(data.records[i].image_path), data.records[i].boxes, data.records[i].labels, data.class_names
            )
            for i in sorted(picks)
        ]
    except (DataError, ValueError, OSError) as error:
        fail(error)
    import cv2

    grid = cv2.cvtColor(image_grid(tiles), cv2.COLOR_RGB2BGR)
    atomic_write_bytes(out, cv2.imencode(".png", grid)[1].tobytes())
    typer.echo(f"{len(tiles)} images drawn: {out}")


@synth_app.command()
def digits(
    out: Path = typer.Option(..., help="dataset folder to create"),
    train: int = typer.Option(1000, help="training scenes"),
    val: int = typer.Option(200, help="validation scenes"),
    size: int = typer.Option(256, help="scene side in pixels"),
    seed: int = typer.Option(0, help="the same seed gives identical files"),
    fmt: str = typer.Option("voc", "--format", help="voc | coco"),
    classes: str | None = typer.Option(None, help="comma-separated subset of 0..9, e.g. '3' or '1,7'"),
    max_digits: int = typer.Option(6, help="digits per scene: 0..max"),
) -> None:
    """Render scenes of real MNIST digits on real photographs (no download).

    Example: multibox data synth digits --out data/digits --train 2000 --val 400
    """
    from .data.synthetic import SceneConfig, synthesize_digits

    def render():
        chosen = [c.strip() for c in classes.split(",")] if classes else None
        return synthesize_digits(out, train, val, seed, fmt, chosen, SceneConfig(size=size, max_digits=max_digits))

    _synthesized(render, train, val)


@synth_app.command()
def shapes(
    out: Path = typer.Option(..., help="dataset folder to create"),
    train: int = typer.Option(36, help="training scenes"),
    val: int = typer.Option(12, help="validation scenes (on other photographs)"),
    size: int = typer.Option(448, help="scene side in pixels"),
    min_side: float = typer.Option(20.0, help="smallest object side in pixels"),
    max_side: float = typer.Option(150.0, help="largest object side in pixels"),
    objects: str = typer.Option("2,8", help="objects per scene: MIN,MAX"),
    distractors: int = typer.Option(4, help="unlabelled shapes per scene: 0..N"),
    seed: int = typer.Option(0, help="the same seed gives identical files"),
) -> None:
    """Render scenes of discs, squares and triangles (among unlabelled pentagons, stars and
    crosses) on real photographs, training and validation on different ones (no download).

    Example: multibox data synth shapes --out data/shapes --train 36 --val 12
    Example: multibox data synth shapes --out data/aerial --size 2048 --min-side 10 --max-side 60 --objects 60,160
    """
    from .data.shapes import ShapeConfig, synthesize_shapes

    def render():
        config = ShapeConfig(size, size, min_side, max_side, *_min_max(objects), distractors=distractors)
        return synthesize_shapes(out, train, val, seed, config)

    _synthesized(render, train, val)


def _min_max(text: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--objects {text!r}: give the objects per scene as MIN,MAX, e.g. --objects 2,8") from None
    return low, high


def _synthesized(render, train: int, val: int) -> None:
    """Run ``render`` (a synthesizer returning each split's path), stop with its error, or say
    what it wrote and how long it took."""
    import time

    start = time.perf_counter()
    try:
        paths = render()
    except (DataError, ValueError, OSError) as error:
        fail(error)
    typer.echo(
        f"{train} training and {val} validation scenes in {time.perf_counter() - start:.1f} s: "
        f"{', '.join(f'{k} -> {v}' for k, v in paths.items())}"
    )
