"""The score of the last mutation run (``scripts/mutation``), and its unexplained survivors.

``python -m tests.mutation_report --scope`` prints the mutants in scope (:data:`SCOPE`).

``python -m tests.mutation_report`` reads mutmut's results in ``mutants/`` and
``tests/mutation-survivors.toml``, where every mutant the tests do not kill is listed with
the line it changes and why that change cannot break a promise (an equivalent mutant).
It prints the score per module and exits 1 if a survivor is not listed, or a listed one
no longer survives or no longer changes the line it names (the code moved on: look again).
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import tomllib
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parents[1]
SURVIVORS = ROOT / "tests" / "mutation-survivors.toml"
#: The code that decides what a commit writes and what a fill may write: the write-through
#: plugin (its flush and transaction listeners, its record of each session, the change
#: buffer and its bulk and Core statement tracking), the chain (with its layers' health
#: and its reads' claims), which objects the SQLAlchemy store lets fill a cache, and the
#: record and lease code of the stores' base classes (mutmut names a method
#: ``module.xǁClassǁmethod__mutmut_N``).
SCOPE = [
    "sa_stockpyle.orm.*",
    "sa_stockpyle.sessions.*",
    "sa_stockpyle.bulk.*",
    "sa_stockpyle.changes.xǁBufferǁ*",
    "sa_stockpyle.stores.freshness.*",
    "sa_stockpyle.stores.chained.*",
    "sa_stockpyle.stores.chain_reads.*",
    "sa_stockpyle.stores.broadcast.*",
    "sa_stockpyle.stores.health.*",
    "sa_stockpyle.stores.claims.*",
    # records: what is written under which keys, and what a read may return
    "sa_stockpyle.stores.records.*",
    "sa_stockpyle.stores.ops.x_unexpired__mutmut_*",
    *(
        f"sa_stockpyle.stores.keyvalue.xǁBaseKeyValueStoreǁ{method}__mutmut_*"
        for method in [
            "_resolve",
            "_decoded",
            "_check_alternates",
            "_tombstone",
            "marker_of",
            "version_held",
            # commits
            "start_committed",
        ]
    ),
    "sa_stockpyle.stores.keyvalue.x__answering__mutmut_*",
    # leases
    "sa_stockpyle.stores.leases.*",
    *(
        f"sa_stockpyle.stores.dictionary.xǁBaseDictionaryStoreǁ{method}__mutmut_*"
        for method in ["apply", "_decide"]
    ),
]
#: What became of a mutant: these mean a check noticed the change (strict mypy, which the
#: test command runs, rejected it, or a test failed or hung).
CAUGHT = {"caught by type check", "killed", "timeout"}


@dataclass(frozen=True)
class Mutant:
    """One mutant of the last run: its name, its module and what became of it."""

    name: str
    module: str
    status: str

    def change(self) -> str:
        """The mutated line(s), as the mutant writes them."""
        source = ROOT / Path(*self.module.split(".")).with_suffix(".py")
        diff = get_diff_for_mutant(self.name, path=source.relative_to(ROOT))
        added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+")]
        return "\n".join(line for line in added if not line.startswith("++"))


def results(mutants_dir: Path) -> list[Mutant]:
    """Every mutant mutmut made in the last run, with its status."""
    found = []
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        module = ".".join(meta.relative_to(mutants_dir).with_suffix("").with_suffix("").parts)
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        found += [
            Mutant(name, module, status_by_exit_code[code])
            for name, code in codes.items()
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in SCOPE)
        ]
    return found


def explained() -> dict[str, dict[str, str]]:
    """The survivors file: mutant name to its ``change`` and ``reason``."""
    entries = tomllib.loads(SURVIVORS.read_text()).get("survivor", [])
    return {entry["mutant"]: entry for entry in entries}


def report(mutants: list[Mutant], listed: dict[str, dict[str, str]]) -> list[str]:
    """Print the score per module; return what is wrong with the survivors file."""
    problems = []
    by_module: dict[str, Counter[str]] = {}
    for mutant in mutants:
        by_module.setdefault(mutant.module, Counter())[mutant.status] += 1
        entry = listed.get(mutant.name)
        if mutant.status in CAUGHT:
            if entry is not None:
                problems.append(f"{mutant.name} is listed as a survivor but is now killed")
            continue
        if mutant.status == "not checked":
            continue  # counted below
        change = mutant.change()
        if entry is None:
            problems.append(f"{mutant.name} {mutant.status}, unexplained:\n    {change}")
        elif entry["change"].strip() != change:
            problems.append(
                f"{mutant.name} now changes\n    {change}\n"
                f"  but the survivors file explains\n    {entry['change'].strip()}"
            )
    unchecked = sum(mutant.status == "not checked" for mutant in mutants)
    if unchecked:
        problems.append(f"{unchecked} mutants not checked yet: bash scripts/mutation --resume")
    ran = {mutant.name for mutant in mutants}
    problems += [f"{name} is listed but was not made" for name in listed if name not in ran]
    columns = ("mutants", "checked", "by mypy", "caught", "survived", "untested")
    print(f"{'module':28}", *(f"{column:>8}" for column in columns), "score")
    total: Counter[str] = Counter()
    for module, counts in sorted(by_module.items()):
        total += counts
        print(_line(module, counts))
    print(_line("all", total))
    return problems


def _line(name: str, counts: Counter[str]) -> str:
    """A row of the report: the score is the share of the checked mutants a test caught."""
    made = sum(counts.values())
    checked = made - counts["not checked"]
    caught = sum(counts[status] for status in CAUGHT)
    score = f"{100 * caught / checked:.1f}%" if checked else "-"
    row = (made, checked, counts["caught by type check"], caught, counts["survived"])
    return f"{name:28} " + " ".join(f"{n:>8}" for n in (*row, counts["no tests"])) + f" {score}"


def main(argv: list[str]) -> int:
    if argv == ["--scope"]:  # for scripts/mutation: what to give `mutmut run`
        print("\n".join(SCOPE))
        return 0
    mutants = results(ROOT / "mutants")
    if not mutants:
        print("no mutation results in mutants/: run scripts/mutation", file=sys.stderr)
        return 1
    problems = report(mutants, explained())
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) with {SURVIVORS.relative_to(ROOT)}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
