"""Every Python code block of the README and of docs/*.md runs, in order, per file.

The README's blocks run as a user would run them: in a virtualenv built from uv.lock that
holds the package and only the extras a block names on its first line
(``# needs: sa_stockpyle[shove]``); a block that names none runs with the package alone.
Under ``scripts/test-newest`` (``STOCKPYLE_NEWEST=1``) those virtualenvs take the newest
releases instead. The guide's pages run here, in the test environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from uv import find_uv_bin

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
NEEDS = re.compile(r"\A# needs: sa_stockpyle\[([a-z,]+)\]\n")
GUIDE = sorted((ROOT / "docs").glob("**/*.md"))
# What each extra brings that the package alone lacks: a README environment must hold
# exactly the extras its blocks name, so a block that forgets to name one fails.
EXTRA_MODULES = {
    "redis": "redis",
    "memcache": "pymemcache",
    "shove": "fsspec",
    "alembic": "alembic",
    "postgresql": "psycopg",
}


def extras_of(block: str) -> frozenset[str]:
    """The extras a README block names on its first line."""
    needs = NEEDS.match(block)
    return frozenset(needs.group(1).split(",")) if needs else frozenset()


def readme_blocks() -> list[str]:
    return FENCE.findall(README.read_text())


def _uv(*arguments: str, **env: str) -> None:
    environment = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    environment.update(UV_PYTHON_DOWNLOADS="never", **env)
    result = subprocess.run(
        [find_uv_bin(), *arguments],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def user_env(path: Path, extras: frozenset[str]) -> Path:
    """A virtualenv at ``path`` with the package and ``extras``: as uv.lock pins them (as
    scripts/lib.sh's locked_env builds them), or the newest releases under test-newest."""
    python = path / "bin" / "python"
    if os.environ.get("STOCKPYLE_NEWEST"):
        _uv("venv", "--quiet", "--python", sys.executable, str(path))
        package = f"{ROOT}[{','.join(sorted(extras))}]" if extras else str(ROOT)
        _uv("pip", "install", "--quiet", "--python", str(python), "--upgrade", "-e", package)
    else:
        extra_options = [f"--extra={extra}" for extra in sorted(extras)]
        _uv(
            "sync",
            "--quiet",
            "--locked",
            "--python",
            sys.executable,
            *extra_options,
            UV_PROJECT_ENVIRONMENT=str(path),
        )
    return python


@pytest.mark.parametrize(
    "extras",
    sorted({extras_of(block) for block in readme_blocks()}, key=sorted),
    ids=lambda extras: "+".join(sorted(extras)) or "package-alone",
)
def test_readme_blocks_run_with_only_the_extras_they_name(
    extras: frozenset[str], tmp_path: Path
) -> None:
    """The README's blocks whose extras are among ``extras``, in order, in such an env."""
    assert extras <= EXTRA_MODULES.keys(), f"the README names an unknown extra: {extras}"
    python = user_env(tmp_path / "venv", extras)
    probe = "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m)])"
    found = subprocess.run(
        [python, "-c", probe, *EXTRA_MODULES.values()],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert set(found) == {EXTRA_MODULES[extra] for extra in extras}

    blocks = [block for block in readme_blocks() if extras_of(block) <= extras]
    script = tmp_path / "readme.py"
    script.write_text(
        "".join(f"# README block {n}\n{block}\n" for n, block in enumerate(blocks, start=1))
    )
    result = subprocess.run(
        [python, script], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("document", GUIDE, ids=lambda p: str(p.relative_to(ROOT)))
def test_guide_code_blocks_run(
    document: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = FENCE.findall(document.read_text())
    monkeypatch.chdir(tmp_path)
    # A real module, as SQLAlchemy resolves Mapped[] annotations through sys.modules.
    module = types.ModuleType(f"snippets_{document.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"{document.name}:block{number}", "exec")
        exec(code, module.__dict__)
