"""Regenerate the results table and pictures of docs/TUTORIAL.md: train each preset on the
digit scenes, time it, evaluate it on the validation scenes, draw its predictions (those
scoring 0.3 or more).

    python docs/tutorial.py --data data/demo-digits largest_cls largest_box single_object multilabel

Each preset trains with its own recipe (``multibox train --preset NAME``) into
``runs/tutorial/NAME``; the table between the ``results`` markers of TUTORIAL.md is rewritten
with the measured numbers, and ``docs/tutorial/NAME.jpg`` shows six validation scenes.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from multibox import load
from multibox.config import load_config
from multibox.data import load_dataset
from multibox.data.io import read_image, write_image
from multibox.engine import train
from multibox.hardware import cpu_label
from multibox.viz import draw_detections, image_grid

DOCS = Path(__file__).parent
SHOWN = ("accuracy", "IoU", "L1", "AP", "AP50", "mAP", "F1")


def run(name: str, data: Path, runs: Path) -> dict:
    output = runs / name
    config = load_config(name, [f"data.path={data}", f"output={output}"])
    started = time.perf_counter()
    metrics = train(config, progress=False)
    minutes = (time.perf_counter() - started) / 60
    log = (output / "train_log.csv").read_text().splitlines()
    speed = float(log[-1].split(",")[-1])  # images/s of the last epoch, data loading included
    draw(name, output / "best.pt", data, config.data.val_split)
    return {
        "preset": name,
        "cpu": cpu_label(),
        "minutes": round(minutes, 1),
        "images_per_s": round(speed, 1),
        "epochs": config.train.epochs,
        **{k: round(metrics[k], 4) for k in SHOWN if k in metrics},
    }


def draw(name: str, weights: Path, data: Path, split: str, conf: float = 0.3) -> None:
    """``docs/tutorial/NAME.jpg``: the detections of ``weights`` on six ``split`` scenes, those
    scoring ``conf`` or more (as `multibox predict` draws them)."""
    detector = load(weights)
    val, _ = load_dataset(data, split)
    pictures = []
    for record in val.records[:6]:
        pixels = read_image(record.image_path)
        found = detector.predict(pixels, conf=conf)
        boxes, labels, scores = found.boxes.numpy(), found.labels.numpy(), found.scores.numpy()
        pictures.append(draw_detections(pixels, boxes, labels, found.names, scores))
    (DOCS / "tutorial").mkdir(exist_ok=True)
    write_image(DOCS / "tutorial" / f"{name}.jpg", image_grid(pictures, columns=3))


def table(rows: list[dict]) -> str:
    lines = ["| preset | CPU | training (incl. validation) | images/s | " + " | ".join(SHOWN) + " |"]
    lines.append("|---" * (4 + len(SHOWN)) + "|")
    for row in rows:
        cells = [f"{row[k]:.3f}" if k in row else "" for k in SHOWN]
        lines.append(
            f"| `{row['preset']}` | {row['cpu']} | {row['minutes']} min ({row['epochs']} epochs) | "
            f"{row['images_per_s']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def add_row(results: dict[str, dict], row: dict) -> dict[str, dict]:
    """``results`` with ``row`` in it: a preset's rows stay together, one per CPU (figures from
    different CPUs are never one row)."""
    key = f"{row['preset']} on {row['cpu']}"
    if key in results:
        return {**results, key: row}
    keys = list(results)
    same = [i for i, k in enumerate(keys) if results[k]["preset"] == row["preset"]]
    at = same[-1] + 1 if same else len(keys)
    return {k: results[k] for k in keys[:at]} | {key: row} | {k: results[k] for k in keys[at:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--data", type=Path, default=Path("data/demo-digits"))
    parser.add_argument("--runs", type=Path, default=Path("runs/tutorial"))
    args = parser.parse_args()
    results_file = DOCS / "tutorial" / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for name in args.presets:
        row = run(name, args.data, args.runs)
        results = add_row(results, row)
        print(json.dumps(row))
    (DOCS / "tutorial").mkdir(exist_ok=True)
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    measured = (
        f"Measured by `python docs/tutorial.py` ({torch.get_num_threads()} threads, torch {torch.__version__}); "
        "each row on the CPU it names: rows of different CPUs are not comparable in time. "
        "L1 in pixels of the original images."
    )
    block = f"<!-- results -->\n{table(list(results.values()))}\n\n{measured}\n<!-- /results -->"
    tutorial = DOCS / "TUTORIAL.md"
    text = tutorial.read_text()
    tutorial.write_text(re.sub(r"<!-- results -->.*<!-- /results -->", lambda _: block, text, flags=re.S))
    print(table(list(results.values())))


if __name__ == "__main__":
    main()
