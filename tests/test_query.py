"""The filter language of `nqexp runs ls --where` (nqexp/experiment/query.py): precedence, missing metrics,
and refusals that name the character, without ever evaluating Python."""

from __future__ import annotations

import pytest

from nqexp.errors import DataError
from nqexp.experiment.query import metric_key, parse


@pytest.mark.parametrize("text, values, want", [
    ("crps_15m < 0.0012", {"crps_15m": 0.0011}, True),
    ("crps_15m < 0.0012", {"crps_15m": 0.0012}, False),
    ("crps_15m <= 1.2e-3", {"crps_15m": 0.0012}, True),
    ("0.0012 > crps_15m", {"crps_15m": 0.0011}, True),           # a number first: the comparison is flipped
    ("ic >= -0.5", {"ic": -0.5}, True),
    ("ic != 0", {"ic": 0.0}, False),
    ("ic = 0", {"ic": 0.0}, True),
    ("a < 1 or b < 1 and c < 1", {"a": 5, "b": 0, "c": 5}, False),   # and binds tighter than or
    ("(a < 1 or b < 1) and c < 1", {"a": 0, "b": 5, "c": 0}, True),
    ("not a < 1 and b < 1", {"a": 5, "b": 0}, True),              # not binds tightest
    ("NOT (a < 1 OR b < 1)", {"a": 5, "b": 5}, True),             # keywords in any case
    ("crps < 1", {}, False),                                       # a missing metric fails the comparison
    ("crps < 1", {"crps": float("nan")}, False),
    ("not crps < 1", {}, True),
    ("val/crps > 0.002", {"val/crps": 0.003}, True),
])
def test_filters_evaluate_with_the_usual_precedence(text, values, want):
    assert parse(text).matches(values) is want


def test_a_filter_lists_the_metrics_it_reads_in_order():
    assert parse("crps_15m < 1 and (val/crps > 0 or crps_15m > 2)").metrics == ["crps_15m", "val/crps"]
    assert (metric_key("crps_15m"), metric_key("val/crps")) == ("test/crps_15m", "val/crps")


@pytest.mark.parametrize("text, message", [
    ("crps_15m <", "expected a number, found the end at character 11"),
    ("crps_15m 0.1", "expected a comparison (< <= > >= == !=), found '0.1' at character 10"),
    ("crps < 1 and", "expected a metric name or a number, found the end at character 13"),
    ("(crps < 1", "expected ')', found the end at character 10"),
    ("crps < 1 crps", "expected 'and', 'or' or the end, found 'crps' at character 10"),
    ("crps < 15m", "unexpected '1' at character 8"),
    ("1 < 2", "expected a metric name, found '2' at character 5"),
    ("__import__('os').system('x') < 1", "unexpected \"'\" at character 12"),
    ("crps < 1e999", "1e999 is not a finite number at character 8"),
    ("crps ; drop", "unexpected ';' at character 6"),
])
def test_refusals_are_one_line_naming_the_character(text, message):
    with pytest.raises(DataError) as err:
        parse(text)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"cannot read the filter {text!r}: ")


def test_an_empty_filter_is_refused():
    with pytest.raises(DataError, match="the filter is empty"):
        parse("  ")
