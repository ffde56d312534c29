"""Which rows a Core statement names: sa_stockpyle.dml, without a database."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_stockpyle import dml


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "dml_items"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


class Pair(Base):
    __tablename__ = "dml_pairs"
    __stockpyle_keys__ = [("a", "b")]

    a: Mapped[int] = mapped_column(Integer, primary_key=True)
    b: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


class Unkeyed(Base):
    __tablename__ = "dml_unkeyed"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)


ITEMS = Item.__table__
PAIRS = Pair.__table__
ALONE = Table("dml_alone", MetaData(), Column("id", Integer, primary_key=True))


def lookups(statement: object, rows: list[dict[str, object]] | None = None) -> object:
    found = dml.touched(statement, rows or [], None)
    return [(t.klass.__name__, t.lookups, t.every_row) for t in found]


def test_a_where_on_the_key_names_its_rows() -> None:
    assert lookups(update(ITEMS).where(ITEMS.c.id == 5).values(name="x")) == [
        ("Item", [{"id": 5}], False)
    ]
    assert lookups(delete(ITEMS).where(ITEMS.c.id.in_([1, 2]))) == [
        ("Item", [{"id": 1}, {"id": 2}], False)
    ]
    many = update(ITEMS).where(ITEMS.c.id == bindparam("k")).values(name=bindparam("n"))
    assert lookups(many, [{"k": 1, "n": "a"}, {"k": 2, "n": "b"}]) == [
        ("Item", [{"id": 1}, {"id": 2}], False)
    ]
    both = (PAIRS.c.a == 1) & (PAIRS.c.b == bindparam("b")) & (PAIRS.c.name == "z")
    assert lookups(delete(PAIRS).where(both), [{"b": 7}]) == [("Pair", [{"a": 1, "b": 7}], False)]


def test_an_orm_statement_names_its_rows_too() -> None:
    assert lookups(update(Item).where(Item.id == 3).values(name="x")) == [
        ("Item", [{"id": 3}], False)
    ]


def test_rows_that_cannot_be_known_are_every_row() -> None:
    every = [("Item", [], True)]
    assert lookups(update(ITEMS).values(name="x")) == every  # no WHERE
    assert lookups(update(ITEMS).where(ITEMS.c.name == "a").values(name="x")) == every
    assert lookups(update(ITEMS).where((ITEMS.c.id == 1) | (ITEMS.c.id == 2))) == every
    assert lookups(delete(PAIRS).where(PAIRS.c.a == 1)) == [("Pair", [], True)]
    pairs_in = tuple_(PAIRS.c.a, PAIRS.c.b).in_([(1, 2)])
    assert lookups(delete(PAIRS).where(pairs_in)) == [("Pair", [], True)]
    missing = update(ITEMS).where(ITEMS.c.id == bindparam("k")).values(name="x")
    assert lookups(missing, [{"other": 1}]) == every
    # A value the database would convert may name another key than the cache's.
    assert lookups(update(ITEMS).where(ITEMS.c.id == "1").values(name="x")) == every


def test_a_plain_insert_changes_nothing_cached_and_an_upsert_its_rows() -> None:
    assert lookups(insert(ITEMS), [{"id": 1, "name": "a"}]) == []
    # The row an upsert updates is the one that conflicts, on whichever unique key: only
    # what the database returns names it.
    upsert = postgresql.insert(ITEMS).on_conflict_do_nothing()
    assert lookups(upsert, [{"id": 1, "name": "a"}]) == [("Item", [], True)]
    assert [t.lookups for t in dml.touched(upsert, [{}], [(3,)])] == [[{"id": 3}]]


def test_statements_on_other_tables_name_nothing() -> None:
    assert lookups(update(Unkeyed.__table__).values(id=1)) == []
    assert lookups(delete(ALONE)) == []
    assert lookups(select(ITEMS)) == []
    assert lookups(text("DELETE FROM dml_items")) == []


def test_returning_is_added_only_where_it_is_needed_and_supported() -> None:
    pg, lite = postgresql.dialect(), sqlite.dialect()
    criteria = update(ITEMS).where(ITEMS.c.name == "a").values(name="b")
    changed = dml.with_returning(criteria, [{}], pg)
    assert changed is not None
    assert changed.get_execution_options()[dml.RETURNING_OPTION] is True
    assert dml.with_returning(update(ITEMS).where(ITEMS.c.id == 1), [{}], pg) is None
    assert dml.with_returning(criteria, [{}, {}], pg) is None  # executed many times
    assert dml.with_returning(criteria.returning(ITEMS.c.id), [{}], pg) is None  # theirs
    assert dml.with_returning(insert(ITEMS), [{}], pg) is None
    upsert = postgresql.insert(ITEMS).on_conflict_do_nothing()
    assert dml.with_returning(upsert, [{"id": 1, "name": "a"}], pg) is not None
    assert dml.with_returning(delete(ALONE), [{}], pg) is None
    lite.delete_returning = False
    assert dml.with_returning(delete(ITEMS).where(ITEMS.c.name == "a"), [{}], lite) is None


def test_an_update_that_may_change_a_key_is_not_named_by_what_it_returns() -> None:
    # RETURNING gives the new keys; the entries under the old ones could not be named.
    pg = postgresql.dialect()
    by_name = update(ITEMS).where(ITEMS.c.name == "a")
    for renames, rows, klass in [
        (by_name.values(id=5), [{}], "Item"),
        (by_name.values({ITEMS.c.id: 5}), [{}], "Item"),
        (by_name.values({Item.id: 5}), [{}], "Item"),
        (by_name, [{"id": 5}], "Item"),  # a parameter set's value for the key column
        (update(PAIRS).where(PAIRS.c.name == "a").values(b=2), [{}], "Pair"),
    ]:
        assert dml.sets_primary_key(renames, rows)
        assert dml.with_returning(renames, rows, pg) is None
        assert lookups(renames, rows) == [(klass, [], True)]
    assert not dml.sets_primary_key(by_name.values(name="b"), [{"name": "c"}])
    assert not dml.sets_primary_key(delete(ITEMS), [{"id": 5}])
    # Pinned by its WHERE, the old key is known: that entry goes, and no other.
    renamed = update(ITEMS).where(ITEMS.c.id == 1).values(id=5)
    assert lookups(renamed) == [("Item", [{"id": 1}], False)]


def test_returned_keys_name_the_rows() -> None:
    criteria = update(ITEMS).where(ITEMS.c.name == "a").values(name="b")
    assert [t.lookups for t in dml.touched(criteria, [{}], [(4,), (9,)])] == [
        [{"id": 4}, {"id": 9}]
    ]
