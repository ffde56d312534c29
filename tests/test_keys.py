"""Keys: declarations, lookups and cache-key strings."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from decimal import Decimal
from uuid import UUID

import pytest

from sa_stockpyle.cache_keys import MAX_KEY_LENGTH, KeyMaker
from sa_stockpyle.errors import InvalidKeyValueError, NotStorableError, UnknownKeyError
from sa_stockpyle.key_encoding import encode_value
from sa_stockpyle.keys import key_spec, storage_classes
from sa_stockpyle.testing import Automobile, Car, Color, Foo, Pair


def _key(klass: type, lookup: object, prefix: str = "stockpyle") -> str:
    spec = key_spec(klass)
    index, values = spec.lookup(lookup)
    return KeyMaker(prefix).key(spec, index, values)


def test_key_layout_is_readable() -> None:
    assert _key(Foo, 5) == "stockpyle:v1:sa_stockpyle.testing.models.Foo:key:i5"
    assert _key(Foo, {"bar": "b", "zap": 1.5}, prefix="app") == (
        "app:v1:sa_stockpyle.testing.models.Foo:zap+bar:f1.5,sb"
    )
    assert (
        _key(Pair, ("a b", None)) == "stockpyle:v1:sa_stockpyle.testing.models.Pair:a+b:sa%20b,n"
    )


def test_lookup_forms_normalise_alike() -> None:
    spec = key_spec(Foo)
    assert spec.lookup(5) == spec.lookup({"key": 5}) == (0, (5,))
    assert spec.lookup({"bar": 2, "zap": 1}) == (1, (1, 2))
    assert key_spec(Pair).lookup(("x", 1)) == key_spec(Pair).lookup({"b": 1, "a": "x"})


def test_values_are_type_tagged() -> None:
    encoded = {encode_value(v) for v in [1, "1", True, 1.0, b"1", (1,), Decimal(1), Color.RED]}
    assert len(encoded) == 8


def test_equal_values_encode_alike() -> None:
    utc = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    assert encode_value(utc) == encode_value(utc.astimezone(dt.timezone(dt.timedelta(hours=3))))
    assert encode_value(-0.0) == encode_value(0.0)
    assert encode_value(Decimal("1.50")) == encode_value(Decimal("1.5"))
    assert encode_value(10**5000).startswith("I")  # beyond int->str digit limits


def test_an_aware_datetime_whose_instant_utc_cannot_hold_is_refused() -> None:
    # A datetime, but not an instant datetime can name in UTC: astimezone() overflowed.
    for value in (
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        dt.datetime.max.replace(tzinfo=dt.timezone(-dt.timedelta(minutes=1))),
    ):
        with pytest.raises(InvalidKeyValueError, match="outside datetime's range in UTC"):
            _key(Foo, value)
    assert encode_value(dt.datetime(1, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))) == (
        "tZ0001-01-01T00:00:00"
    )


def test_long_or_odd_keys_stay_within_backend_limits() -> None:
    for value in ["x" * 300, "sp ace", "tab\t", "ünï", "\x00"]:
        key = _key(Foo, value)
        assert len(key) <= MAX_KEY_LENGTH
        assert key.isascii()
        assert key.isprintable()
        assert " " not in key
    assert _key(Foo, "x" * 300).startswith("stockpyle:v1:#")
    assert _key(Foo, "x" * 300) != _key(Foo, "x" * 301)


def test_keys_are_the_same_in_every_process() -> None:
    lookups = (
        "[5, 'x', ('a', 1), 2.5, b'z', 'ü' * 300, "
        "__import__('uuid').UUID(int=1), __import__('decimal').Decimal('3.10')]"
    )
    script = (
        "from sa_stockpyle.cache_keys import KeyMaker\n"
        "from sa_stockpyle.keys import key_spec\n"
        "from sa_stockpyle.testing import Foo\n"
        "spec = key_spec(Foo)\n"
        f"for v in {lookups}:\n"
        "    print(KeyMaker().key(spec, 0, (v,)))\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("0", "1", "12345")
    }
    assert len(outputs) == 1
    assert _key(Foo, UUID(int=1)) in outputs.pop()


def test_polymorphic_storage_classes() -> None:
    assert storage_classes(Car, polymorphic=False) == (Car,)
    assert storage_classes(Car, polymorphic=True) == (Car, Automobile)


def test_messages_name_the_class_and_its_keys() -> None:
    with pytest.raises(UnknownKeyError) as info:
        key_spec(Foo).lookup({"zip": 1})
    message = str(info.value)
    assert "Foo declares __stockpyle_keys__ = ['key', ('zap', 'bar')]" in message
    assert "{'zip': 1}" in message
    with pytest.raises(InvalidKeyValueError, match=r"list value \[1\] cannot be part of a key"):
        encode_value([1])


@pytest.mark.parametrize("prefix", ["", "has space", "co:lon", "x" * 65, "ü"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(InvalidKeyValueError, match="prefix"):
        KeyMaker(prefix)


def test_not_a_class() -> None:
    with pytest.raises(NotStorableError, match="expected a class"):
        key_spec(Foo(key=1))


def test_a_new_generation_replaces_the_cached_key_heads_of_its_class() -> None:
    # A process that invalidates a class often (bulk updates) starts a generation each
    # time: the cached key heads must not pile up with them.
    keymaker = KeyMaker()
    spec = key_spec(Foo)
    before = keymaker.key(spec, 0, (1,))
    [token_key] = keymaker.generation_keys(Foo)
    for generation in range(1000):
        keymaker.set_tokens({token_key: f"g{generation}"})
        assert keymaker.key(spec, 1, (2, 3)).split(":")[2].endswith(f"~g{generation}")
    assert len(keymaker._heads) == 1
    assert keymaker.key(spec, 0, (1,)) != before
    assert keymaker.keys_of(spec, Foo(key=1, zap=2, bar=3)) == (
        keymaker.key(spec, 0, (1,)),
        keymaker.key(spec, 1, (2, 3)),
    )


def test_a_top_level_tuple_of_names_is_refused_with_both_spellings() -> None:
    class Ambiguous:
        __stockpyle_keys__ = ("zap", "bar")

    with pytest.raises(NotStorableError) as refused:
        key_spec(Ambiguous)
    message = str(refused.value)
    assert "['zap', 'bar']" in message  # two single keys
    assert "[('zap', 'bar')]" in message  # one composite key

    class Clear:
        __stockpyle_keys__ = ("id", ("zap", "bar"))  # a tuple, but only one reading

    assert key_spec(Clear).items == (("id",), ("zap", "bar"))


def test_decimal_keys_are_exact_past_the_default_context() -> None:
    # Decimal.normalize() rounds to 28 digits and overflows on huge exponents: keys must
    # neither merge unequal values nor raise.
    maker = KeyMaker("exact")
    spec = key_spec(Foo)

    def key(value: Decimal) -> str:
        return maker.key(spec, 1, (value, 1))

    assert key(Decimal("1")) == key(Decimal("1.000")) == key(Decimal("1E0"))
    assert key(Decimal("1")) != key(Decimal("1.00000000000000000000000000001"))
    assert key(Decimal("0")) == key(Decimal("-0")) == key(Decimal("0E-99"))
    assert key(Decimal("0")) != key(Decimal("1e-1000030"))
    assert key(Decimal("1e999999999999999999")) != key(Decimal("1e999999999999999998"))
    # Values within the default context keep the keys they always had: fixed-point.
    assert key(Decimal("123.4500")).endswith(":zap+bar:D123.45,i1")
    assert key(Decimal("1E+2")).endswith(":zap+bar:D100,i1")
    for exact in ("1E+101", "1E-101", "123E+150", "1.5E-120", "-9.99E+200", "7E+999999"):
        assert encode_value(Decimal(exact)) == f"D{Decimal(exact).normalize() + 0:f}"
