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
