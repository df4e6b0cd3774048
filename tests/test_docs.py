"""The repository explains itself: every docs/ page and section the code cites exists, and nothing
cites a design note that lives outside the repository (docs/contributing.md §11)."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
THIS = Path(__file__).resolve()

# Where citations live; docs/ itself is included so cross-references between pages are checked too.
CITING_DIRS = ("nqexp", "sql", "experiments", "tests", "benchmarks", "infra", "docs")
CITING_FILES = ("README.md", "Dockerfile", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".sql", ".yaml", ".yml", ".md", ".toml", ".sh", ".txt", ".cfg", ".json"}
SKIP_DIRS = {"__pycache__", "node_modules", "runs", "nqexp_data"}

# `docs/<page>.md`, optionally followed by section numbers: "§4", "§6.7", "§2-§3", "§5, §7".
CITATION = re.compile(r"docs/([A-Za-z0-9_]+\.md)((?:\s*(?:,|-|–|and)?\s*§\s*\d+(?:\.\d+)*)*)")
SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s")
# Design notes that never shipped with the repository. Matched like `grep "DESIGN\|STACK_NOTES\|STYLE"`.
OUTSIDE_NOTES = re.compile(r"DESIGN|STACK_NOTES|STYLE|contracts\.md")


def _text_files(roots) -> list[Path]:
    out = []
    for root in roots:
        path = ROOT / root
        if path.is_file():
            out.append(path)
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS
                           and not d.endswith(".egg-info")]
            for name in filenames:
                p = Path(dirpath) / name
                if (p.suffix in TEXT_SUFFIXES or name == "Dockerfile") and p.resolve() != THIS:
                    out.append(p)
    return sorted(out)


def _citations() -> list[tuple[str, int, str, list[str]]]:
    """(file, line, cited page, cited section numbers) for every docs/ citation in the repository."""
    found = []
    for path in _text_files(CITING_DIRS + CITING_FILES):
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            for m in CITATION.finditer(line):
                found.append((str(path.relative_to(ROOT)), lineno, m.group(1), SECTION.findall(m.group(2))))
    return found


def _headings(page: Path) -> set[str]:
    return {m.group(1) for line in page.read_text(encoding="utf-8").splitlines() if (m := HEADING.match(line))}


def test_the_code_cites_docs_pages_at_all():
    # Guards the checks below against a regex that silently matches nothing.
    cited = {page for _, _, page, _ in _citations()}
    assert {"features.md", "metrics.md", "model.md", "stack_notes.md"} <= cited, sorted(cited)


def test_every_cited_docs_page_exists():
    missing = [f"{f}:{n} cites docs/{page}" for f, n, page, _ in _citations() if not (DOCS / page).is_file()]
    assert not missing, "citations of docs pages that do not exist:\n" + "\n".join(missing)


def test_every_cited_section_is_a_heading_of_its_page():
    headings: dict[str, set[str]] = {}
    missing = []
    for f, n, page, sections in _citations():
        if not (DOCS / page).is_file():
            continue  # reported by test_every_cited_docs_page_exists
        have = headings.setdefault(page, _headings(DOCS / page))
        missing += [f"{f}:{n} cites docs/{page} §{s}; its numbered headings are {sorted(have, key=_key)}"
                    for s in sections if s not in have]
    assert not missing, "citations of sections that do not exist:\n" + "\n".join(missing)


def _key(number: str) -> tuple[int, ...]:
    return tuple(int(x) for x in number.split("."))


def test_section_numbers_of_each_page_are_unique_and_in_order():
    # Citations rely on stable, unambiguous numbers: no page may number two headings alike.
    problems = []
    for page in sorted(DOCS.glob("*.md")):
        numbers = [m.group(1) for line in page.read_text(encoding="utf-8").splitlines() if (m := HEADING.match(line))]
        if len(set(numbers)) != len(numbers):
            problems.append(f"{page.name}: repeated section numbers {numbers}")
        if [_key(x) for x in numbers] != sorted(_key(x) for x in numbers):
            problems.append(f"{page.name}: section numbers out of order {numbers}")
    assert not problems, "\n".join(problems)


def test_docs_index_lists_every_page_and_its_links_resolve():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
    unlisted = [p for p in pages if f"({p})" not in index]
    assert not unlisted, f"docs/README.md does not link {unlisted}"
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.name} -> {target}")
    assert not broken, f"broken relative links: {broken}"


def test_nothing_cites_design_notes_outside_the_repository():
    offending = []
    for path in _text_files(CITING_DIRS + CITING_FILES):
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_NOTES.search(line):
                offending.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()[:100]}")
    files = sorted({o.split(":", 1)[0] for o in offending})
    assert not offending, (f"{len(files)} file(s) cite design notes that are not in the repository "
                           f"(cite docs/ instead): {files}\n" + "\n".join(offending))
