"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_examples_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # runs the examples start land here, not in the repository
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python examples"
    namespace: dict[str, object] = {}
    for block in blocks:  # later blocks build on earlier ones, as a reader would run them
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert namespace["check_compliance"](namespace["qmodel"]).passed  # type: ignore[operator]
