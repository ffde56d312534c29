"""Griffe extension for the API reference: the package's docstrings use Sphinx roles
(``:class:`~sa_stockpyle.stores.BaseStore```), which Markdown would print literally.

Each role becomes an optional autorefs cross-reference: a link when the target is
documented on this site, plain code otherwise (Python's and SQLAlchemy's names), so a
role never breaks the strict build.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([\w.]+)`")


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring in the package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        pending: list[griffe.Object] = [pkg]
        while pending:
            obj = pending.pop()
            pending.extend(member for member in obj.members.values() if not member.is_alias)
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value)


def _rewrite(obj: griffe.Object, text: str) -> str:
    return ROLE.sub(lambda match: _reference(obj, match), text)


def _reference(obj: griffe.Object, match: re.Match[str]) -> str:
    short, name = match.groups()
    shown = name.rsplit(".", 1)[-1] if short else name
    target = name
    if "." not in name:
        scope = obj if isinstance(obj, (griffe.Module, griffe.Class)) else obj.parent
        try:
            target = scope.resolve(name) if scope is not None else name
        except griffe.NameResolutionError:
            target = name
    return (
        f'<autoref identifier="{html.escape(target)}" optional>'
        f"<code>{html.escape(shown)}</code></autoref>"
    )
