"""Natural key order: digit runs compare as numbers, any two keys compare, and the order is total."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from fancli.columns import digit_templates
from fancli.loaders.key_order import LONGEST_NUMBER, natural_key, natural_order, natural_sorted

KEYS = st.text(alphabet="ab.019", max_size=12)


@given(st.lists(KEYS, max_size=30))
def test_any_keys_sort_and_the_order_does_not_depend_on_the_input_order(keys):
    shuffled = list(keys)
    random.Random(0).shuffle(shuffled)
    assert sorted(keys, key=natural_key) == sorted(shuffled, key=natural_key)


def test_numbers_compare_as_numbers_and_a_key_that_ends_first_sorts_first():
    keys = [f"layers.{i}.mlp.experts.{e}.w" for i in (10, 2, 1) for e in (11, 3)] + ["a1b", "a1b2", "a1b10", "a1"]
    assert sorted(keys, key=natural_key) == [
        "a1", "a1b", "a1b2", "a1b10",
        "layers.1.mlp.experts.3.w", "layers.1.mlp.experts.11.w", "layers.2.mlp.experts.3.w",
        "layers.2.mlp.experts.11.w", "layers.10.mlp.experts.3.w", "layers.10.mlp.experts.11.w"]


def test_digit_runs_past_int_limits_sort_by_length():
    huge, longer = "9" * (LONGEST_NUMBER + 1), "1" * (LONGEST_NUMBER + 2)
    assert sorted([f"x{longer}", f"x{huge}", "x5"], key=natural_key) == ["x5", f"x{huge}", f"x{longer}"]


@given(st.lists(st.text(alphabet="ab.0190\x00 ~é", max_size=12), max_size=30))
def test_natural_sorted_is_the_order_of_natural_key(keys):
    """The one-string-per-key sort (NUL before any text, a number's length before its digits, leading zeros
    dropped) orders any keys as natural_key does, NULs and ties of `07` and `7` included."""
    assert natural_sorted(keys) == sorted(keys, key=natural_key)


@given(st.lists(st.text(alphabet="ab.0190\n %~é", max_size=12), max_size=30))
def test_natural_sorted_by_template_is_the_order_of_natural_key(keys):
    """Keys with no NUL take the template path (runs of one length at one place, each digit column copied into
    the template written once; a run with a leading 0 written by `_Runs`; a key with a newline written by
    `_Runs` too); the digit templates it
    hands on with them are each sorted key's (what folding would compute again)."""
    assert natural_sorted(keys) == sorted(keys, key=natural_key)
    ordered, digits = natural_order(keys)
    assert ordered == natural_sorted(keys) and digits == digit_templates(ordered)


def test_natural_sorted_sorts_runs_past_int_limits_by_length_as_natural_key_does():
    long = "9" * (LONGEST_NUMBER + 1)
    keys = [f"a{long}", "a7", f"a{'0' * LONGEST_NUMBER}5", f"a{long}0", "a07"]
    assert natural_sorted(keys) == sorted(keys, key=natural_key)


def test_the_template_path_copies_digits_between_any_characters():
    """Keys copied as one byte a character where all are ASCII, else as four (UTF-32, a lone surrogate too);
    a run of 80 digits or more writes its length past ASCII, so its keys take four bytes too."""
    keys = [f"a.{'1' * 85}.b", f"a.{'2' * 85}.b", "a.3.b", "é.10.x", "é.9.x", "\ud800.40", "\ud800.5", "z.12.3", "z.3.12"]
    assert natural_sorted(keys) == sorted(keys, key=natural_key)
    assert natural_sorted(keys)[:3] == ["a.3.b", f"a.{'1' * 85}.b", f"a.{'2' * 85}.b"]
