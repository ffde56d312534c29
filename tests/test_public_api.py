"""The public surface: exported names, docstrings, the error tree, and lazy optional imports."""

from __future__ import annotations

import inspect
import subprocess
import sys

import sa_stockpyle
import sa_stockpyle.asyncio
import sa_stockpyle.errors
import sa_stockpyle.stores
from sa_stockpyle.errors import StockpyleError


def _public(module: object) -> list[str]:
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("sa_stockpyle")
        and (inspect.isclass(value) or inspect.isfunction(value))
    )


def test_all_lists_exactly_what_the_package_exports() -> None:
    assert sorted(sa_stockpyle.__all__) == sa_stockpyle.__all__
    assert set(sa_stockpyle.__all__) == {*_public(sa_stockpyle), "__version__"}
    assert sorted(sa_stockpyle.stores.__all__) == sa_stockpyle.stores.__all__
    assert set(sa_stockpyle.stores.__all__) == set(_public(sa_stockpyle.stores))
    assert sorted(sa_stockpyle.asyncio.__all__) == sa_stockpyle.asyncio.__all__
    assert set(sa_stockpyle.asyncio.__all__) == set(_public(sa_stockpyle.asyncio))


def test_every_public_name_has_a_docstring() -> None:
    for module in (sa_stockpyle, sa_stockpyle.stores, sa_stockpyle.asyncio):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                assert inspect.getdoc(value), name


def test_every_error_is_a_stockpyle_error() -> None:
    for name in sa_stockpyle.errors.__all__:
        assert issubclass(getattr(sa_stockpyle.errors, name), StockpyleError)


def test_importing_the_package_loads_no_optional_client() -> None:
    script = (
        "import sys, sa_stockpyle, sa_stockpyle.stores\n"
        "loaded = [m for m in ('redis', 'pymemcache', 'fsspec', 'diskcache', 'alembic', "
        "'sqlalchemy.ext.asyncio', 'greenlet') "
        "if m in sys.modules]\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_importing_the_asyncio_stores_loads_no_optional_client() -> None:
    script = (
        "import sys, sa_stockpyle.asyncio\n"
        "print([m for m in ('redis', 'asyncpg', 'psycopg') if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
