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
