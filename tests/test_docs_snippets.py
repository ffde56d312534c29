"""Every Python code block of the README and of docs/*.md runs, in order, per file."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run(document: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = FENCE.findall(document.read_text())
    assert blocks or document.name != "README.md"
    monkeypatch.chdir(tmp_path)
    # A real module, as SQLAlchemy resolves Mapped[] annotations through sys.modules.
    module = types.ModuleType(f"snippets_{document.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"{document.name}:block{number}", "exec")
        exec(code, module.__dict__)
