"""records.record: a frozen dataclass built faster, the same in every way a caller can see."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from fancli.layer import Layer
from fancli.records import record


@record
class Point:
    x: int
    y: int = 2
    tags: tuple[str, ...] = ()


def test_a_record_is_a_frozen_dataclass_with_its_defaults():
    point = Point(1)
    assert (point.x, point.y, point.tags) == (1, 2, ()) and Point(1, tags=("a",)).tags == ("a",)
    assert point == Point(1, 2) and hash(point) == hash(Point(1, 2)) and repr(point) == "Point(x=1, y=2, tags=())"
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.x = 3
    assert dataclasses.replace(point, y=5) == Point(1, 5)
    assert pickle.loads(pickle.dumps(point)) == point
    with pytest.raises(TypeError):
        Point()


def test_layer_keeps_the_signature_and_defaults_of_its_fields():
    layer = Layer("a", "a.weight", "linear", (2, 3))
    assert all(getattr(layer, f.name) == f.default for f in dataclasses.fields(Layer) if f.default is not
               dataclasses.MISSING)


@pytest.mark.parametrize("name", ["self", "_defaults", "_record_dict_"])
def test_a_field_named_as_the_generated_code_is_refused(name):
    with pytest.raises(TypeError):
        record(type("Bad", (), {"__annotations__": {name: "int"}}))


def test_a_record_without_eq_is_hashed_and_compared_by_identity():
    """`@record(eq=False)`, as `dataclass(frozen=True, eq=False)` (a pickle's SavedTensor: a dict key by identity)."""

    @record(eq=False)
    class Saved:
        key: str
        size: tuple = ()

    a, b = Saved("0", (2,)), Saved("0", (2,))
    assert a != b and a == a and hash(a) == object.__hash__(a) and len({a, b}) == 2
    assert (a.key, a.size) == ("0", (2,)) and repr(a).endswith("Saved(key='0', size=(2,))")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.key = "1"
