"""The README's code runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_detection_math_example_runs():
    section = README.read_text().split("## The detection math", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "README's detection math section has no python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
    assert set(namespace["losses"]) == {"cls", "box", "total"}
    assert len(namespace["detections"]) == 2


def test_the_own_data_section_runs_as_written_on_a_tiny_dataset(tmp_path, monkeypatch):
    """The commands of "Train on your own data", in a folder holding ``data/my_dataset`` (a few
    shape scenes); training gets a time budget of seconds, nothing else changes."""
    import shlex

    from typer.testing import CliRunner

    from multibox.cli import app
    from multibox.data.shapes import ShapeConfig, synthesize_shapes

    section = README.read_text().split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("  #")[0] for line in re.findall(r"```bash\n(.*?)```", section, re.S)[0].splitlines()]
    assert [shlex.split(c)[1] for c in commands] == ["data", "anchors", "train", "eval", "predict"]
    scenes = ShapeConfig(128, 128, 16, 48, 1, 3, distractors=1)
    synthesize_shapes(tmp_path / "data" / "my_dataset", train=8, val=4, seed=0, config=scenes)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for command in commands:
        args = shlex.split(command)[1:]
        if args[0] == "train":
            args.append("train.time_budget=0.2")  # 12 seconds, not the recipe's 10 minutes
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (command, result.output)
        if args[0] == "train":
            assert "auto: input.size=" in result.output and "auto: train.epochs=" in result.output
            assert "final: AP" in result.output
    decided = (tmp_path / "runs" / "default" / "config.yaml").read_text()
    assert "# auto: train.augment=strong" in decided and "augment: auto" not in decided
    assert (tmp_path / "runs" / "predict" / "predictions.json").is_file()
