"""The data that crosses between a completion's sandbox and its tests: what is data comes back
equal and of its own type; a subclass comes back as the plain value it holds; the rest is not
data."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefopt.oracles.sandboxed import wire

leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
leaves = leaves | st.binary() | st.complex_numbers(allow_nan=False)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.integers() | st.text(), inner, max_size=4)
        | st.frozensets(st.integers() | st.text(), max_size=4)
    ),
    max_leaves=20,
)


@given(values)
def test_data_comes_back_equal_and_of_its_own_type(value):
    back = wire.decode(wire.encode(value))
    assert back == value and type(back) is type(value)


def test_special_floats_sets_and_nested_keys():
    value = {"nan": float("nan"), (1, 2): {3, 4}, b"k": [float("inf"), -float("inf")]}
    back = wire.decode(wire.encode(value))
    assert (
        math.isnan(back["nan"]) and back[(1, 2)] == {3, 4} and back[b"k"] == [math.inf, -math.inf]
    )


def test_a_subclass_comes_back_as_the_plain_value_it_holds():
    class Liar(int):
        def __eq__(self, other):
            return True

        def __int__(self):
            return 4

        __hash__ = int.__hash__

    class Text(str):
        def __str__(self):
            return "forged"

    assert wire.decode(wire.encode(Liar(0))) == 0 and type(wire.decode(wire.encode(Liar(0)))) is int
    assert wire.decode(wire.encode([Text("real")])) == ["real"]


def test_what_is_not_data_says_so():
    for value in (object(), lambda: 1, iter([1]), [1, object()]):
        with pytest.raises(wire.NotData):
            wire.encode(value)
    deep = []
    for _ in range(wire.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(wire.NotData):
        wire.encode(deep)
