"""Every Python example in the README runs (except those marked as an illustration)."""
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _blocks():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    out = []
    for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        code = m.group(1)
        line = text.count("\n", 0, m.start()) + 1
        # (a block the README says prints something: "Prints `...`" right after it)
        said = re.match(r"\s*Prints `([^`]+)`", text[m.end():])
        if "(illustration" not in code.splitlines()[0]:
            out.append(pytest.param(code, said and said.group(1), id=f"line{line}"))
    return out


BLOCKS = _blocks()


def test_readme_has_runnable_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("code,prints", BLOCKS)
def test_readme_example_runs(code, prints, tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")  # some examples build their input with torch (test extra)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    if prints:          # (what the README says the block prints)
        assert prints in capsys.readouterr().out
