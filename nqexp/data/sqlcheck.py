"""Static checks shared by the SQL files of bars.py and features.py: the header, the look-ahead scan.

Every pipeline SQL file starts with a comment block of `-- key: value` lines (a value may go on
over lines indented by three or more spaces); which keys are required is the caller's rule
(docs/contributing.md). A file whose `lookahead:` says none must not read later rows: no
`following`, no `lead(`, no `lag()` with a negative offset. These are text checks on the SQL
with comments stripped, cheap enough to run on every load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nqexp.errors import SqlError

_KEY_LINE = re.compile(r"^\s?([a-z_]+):\s*(.*)$")


@dataclass(frozen=True)
class Header:
    keys: dict[str, str]     # key -> value (continuation lines joined by one space)
    other: tuple[str, ...]   # the block's other comment lines, stripped (e.g. feature `filter` lines)


def parse_header(text: str) -> Header:
    """The leading comment block of a SQL file; it ends at the first non-comment, non-blank line."""
    keys: dict[str, str] = {}
    other: list[str] = []
    key = None
    for line in text.splitlines():
        if not line.startswith("--"):
            if line.strip():
                break
            key = None
            continue
        body = line[2:]
        stripped = body.strip()
        m = _KEY_LINE.match(body)
        if m:
            key = m.group(1)
            keys[key] = m.group(2).strip()
        elif key and body.startswith("   ") and stripped:
            keys[key] += " " + stripped          # continuation line of the previous key
        else:
            key = None
            if stripped:
                other.append(stripped)
    return Header(keys, tuple(other))


def require_keys(header: Header, required, where: str, what: str = "every SQL file") -> None:
    missing = [k for k in required if k not in header.keys]
    if missing:
        raise SqlError(f"{where}: header lacks {', '.join(missing)}; {what} starts with "
                       f"`-- key: value` lines for {', '.join(required)} (docs/contributing.md)")


def strip_comments(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def balanced(text: str, open_at: int) -> str:
    """The text inside the parenthesis opening at `open_at` (exclusive)."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
    raise SqlError("unbalanced parentheses")


def top_level(args: str) -> str:
    """`args` with every nested parenthesised part blanked, so top-level commas stand out."""
    out, depth = [], 0
    for ch in args:
        depth += ch == "("
        out.append(ch if depth == 0 else " ")
        depth -= ch == ")"
    return "".join(out)


def check_no_lookahead(code: str, label: str, what: str = "a row") -> None:
    """SqlError if comment-free SQL `code` reads later rows (`following`, lead(), lag(x, -k))."""
    if re.search(r"\bfollowing\b", code, re.I):
        raise SqlError(f"{label}: uses `following`; {what} at bar t may use only bars <= t")
    if re.search(r"\blead\s*\(", code, re.I):
        raise SqlError(f"{label}: uses lead(); {what} at bar t may use only bars <= t")
    for m in re.finditer(r"\blag\s*\(", code, re.I):
        if re.search(r"^[^,]*,\s*-", top_level(balanced(code, m.end() - 1))):
            raise SqlError(f"{label}: lag() with a negative offset looks ahead; {what} at bar t may use only bars <= t")
