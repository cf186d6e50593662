"""The README's Python example runs as written."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_runs_as_written(capsys):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    for key in ("nc1", "nc2_w", "nc2_h", "nc3", "nc4"):
        assert f"'{key}'" in printed
    assert namespace["head"].training is False
