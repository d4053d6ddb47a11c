"""The README's code example runs as written (its three blocks form one script)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_example_runs() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## What it does, in code") : text.index("## The demo, step by step")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile("\n".join(blocks), str(README), "exec"), namespace)
    opt = namespace["opt"]
    head = namespace["model"][2]  # type: ignore[index]
    # The frozen rows of the README's RowRules did not move from their initial values.
    assert opt.frozen[:3].all()  # type: ignore[attr-defined]
    assert head.weight.grad is not None


def test_quick_start_is_make_demo_then_make_test() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quick start") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block[1].splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
