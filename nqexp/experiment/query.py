"""A small, safe filter language over trial metrics: `nqexp runs ls --where` and `nqexp.find_trials`.

    crps_15m < 0.0012
    crps < 1.2e-3 and (ic > 0 or val/picp80 >= 0.75)
    not crpss_best < 0

A comparison is METRIC OP NUMBER (or NUMBER OP METRIC), OP one of < <= > >= == != (= is ==);
comparisons combine with `and`, `or`, `not` and parentheses (`not` binds tightest, then `and`, then
`or`). A metric is a run store key without its split, which is then `test` (`crps_15m` is
`test/crps_15m`), or with it (`val/crps`). A trial without the metric, or with NaN, fails the
comparison. The text is tokenized and parsed here, never evaluated by Python (docs/api.md §3).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from nqexp.errors import DataError

DEFAULT_SPLIT = "test"
EXAMPLE = "crps_15m < 0.0012 and ic > 0"
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z0-9_./]))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z_][A-Za-z0-9_]*)?)
  | (?P<op><=|>=|==|!=|<|>|=)
  | (?P<paren>[()])
""", re.VERBOSE)
_OPS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__,
        "==": float.__eq__, "=": float.__eq__, "!=": float.__ne__}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "=": "==", "!=": "!="}
_WORDS = ("and", "or", "not")


def metric_key(name: str) -> str:
    """A metric as written ('crps_15m', 'val/crps') -> its run store key ('test/crps_15m', 'val/crps')."""
    return name if "/" in name else f"{DEFAULT_SPLIT}/{name}"


@dataclass(frozen=True)
class _Token:
    kind: str       # number, name, op, paren, word, end
    text: str
    pos: int        # 1-based character position in the filter, for messages


def _tokens(text: str) -> list[_Token]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _error(text, pos + 1, f"unexpected {text[pos]!r}")
        kind = m.lastgroup
        if kind != "space":
            word = m.group().lower()
            out.append(_Token("word" if kind == "name" and word in _WORDS else kind,
                              word if kind == "name" and word in _WORDS else m.group(), pos + 1))
        pos = m.end()
    out.append(_Token("end", "", len(text) + 1))
    return out


def _error(text: str, pos: int, why: str) -> DataError:
    return DataError(f"cannot read the filter {text!r}: {why} at character {pos}; "
                     f"write comparisons like {EXAMPLE!r}")


class Query:
    """A parsed filter. `metrics`: the names it reads, as written; `matches(values)`: whether a trial whose
    metrics are `values` (name as written -> value) passes."""

    def __init__(self, text: str):
        self.text = str(text)
        if not self.text.strip():
            raise DataError(f"the filter is empty; write comparisons like {EXAMPLE!r}")
        self._toks = _tokens(self.text)
        self._i = 0
        self.metrics: list[str] = []
        self.tree = self._or()
        if self._peek().kind != "end":
            raise self._unexpected("'and', 'or' or the end")

    # Recursive descent, one method per precedence level.
    def _peek(self) -> _Token:
        return self._toks[self._i]

    def _take(self) -> _Token:
        tok = self._toks[self._i]
        self._i += 1
        return tok

    def _unexpected(self, wanted: str) -> DataError:
        tok = self._peek()
        got = "the end" if tok.kind == "end" else repr(tok.text)
        return _error(self.text, tok.pos, f"expected {wanted}, found {got}")

    def _or(self):
        node = self._and()
        while self._peek().kind == "word" and self._peek().text == "or":
            self._take()
            node = ("or", node, self._and())
        return node

    def _and(self):
        node = self._not()
        while self._peek().kind == "word" and self._peek().text == "and":
            self._take()
            node = ("and", node, self._not())
        return node

    def _not(self):
        tok = self._peek()
        if tok.kind == "word" and tok.text == "not":
            self._take()
            return ("not", self._not())
        if tok.kind == "paren" and tok.text == "(":
            self._take()
            node = self._or()
            if self._peek().text != ")":
                raise self._unexpected("')'")
            self._take()
            return node
        return self._comparison()

    def _comparison(self):
        first = self._peek()
        if first.kind not in ("name", "number"):
            raise self._unexpected("a metric name or a number")
        self._take()
        if self._peek().kind != "op":
            raise self._unexpected("a comparison (< <= > >= == !=)")
        op = self._take().text
        second = self._peek()
        want = "number" if first.kind == "name" else "name"
        if second.kind != want:
            raise self._unexpected("a number" if want == "number" else "a metric name")
        self._take()
        name, number = (first.text, second.text) if want == "number" else (second.text, first.text)
        if want == "name":
            op = _FLIP[op]
        value = float(number)
        if not math.isfinite(value):
            raise _error(self.text, second.pos, f"{number} is not a finite number")
        if name not in self.metrics:
            self.metrics.append(name)
        return ("cmp", name, op, value)

    def matches(self, values: Mapping[str, float]) -> bool:
        return _eval(self.tree, values)

    def __repr__(self) -> str:
        return f"Query({self.text!r})"


def _eval(node, values: Mapping[str, float]) -> bool:
    kind = node[0]
    if kind == "cmp":
        _, name, op, number = node
        value = values.get(name)
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return bool(_OPS[op](float(value), number))
    if kind == "not":
        return not _eval(node[1], values)
    left = _eval(node[1], values)
    if kind == "and":
        return left and _eval(node[2], values)
    return left or _eval(node[2], values)


def parse(text: str) -> Query:
    """The filter `text` parsed; DataError (one line, with the character) when it is not one."""
    return Query(text)
