"""Claims about the package layout (docs/contributing.md §1): stages import downstream only, no circles,
and every in-function import of an nqexp module says why it is lazy."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nqexp"


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": str(Path(sys.executable).parent)})


def test_lint_imports_keeps_every_contract():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("planted, contract", [
    # an upward import: the data stage reaching into the model stage
    ("nqexp/data/bars.py", "stages import downstream only"),
    # a circle inside one package: two evaluation modules importing each other
    ("nqexp/evaluation/evaluate.py", "no import circle between sibling modules"),
])
def test_lint_imports_fails_on_a_planted_violation(tmp_path, planted, contract):
    """The contracts are not vacuous: a copy of the tree with one bad import breaks the named contract."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "nqexp", copy / "nqexp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    bad = {"nqexp/data/bars.py": "from nqexp.model import windows  # planted\n",
           "nqexp/evaluation/evaluate.py": "from nqexp.evaluation import report  # planted\n"}[planted]
    path = copy / planted
    path.write_text(path.read_text() + "\n" + bad)
    result = _lint_imports(copy)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout[-3000:]


def _function_imports(path: Path):
    """(line, module) of every import of an nqexp module made inside a function."""
    tree = ast.parse(path.read_text())
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "nqexp":
                yield node.lineno, node.module
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "nqexp":
                        yield node.lineno, alias.name


def test_in_function_imports_of_nqexp_modules_say_why():
    """Outside cli/ (whose commands import lazily so `nqexp --help` stays fast, tested below), an
    in-function import of an nqexp module needs a `# lazy:` comment on its line or the line above."""
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "cli":
            continue
        lines = path.read_text().splitlines()
        for lineno, module in _function_imports(path):
            here, above = lines[lineno - 1], lines[lineno - 2] if lineno > 1 else ""
            if "# lazy:" not in here and not above.strip().startswith("# lazy:"):
                missing.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
    assert not missing, "in-function imports without a `# lazy:` reason:\n" + "\n".join(missing)


def test_help_loads_no_heavy_library():
    """Why cli/ imports inside its commands: `nqexp --help` loads none of the heavy libraries."""
    code = ("import sys; from nqexp.cli import cli; "
            "heavy = {'torch', 'ray', 'wandb', 'databento', 'pandas', 'duckdb', 'lightgbm'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_sql_lives_in_the_data_stage_the_features_store_and_the_run_store():
    """Each store has one owner (docs/contributing.md §9): outside data/, features/ and the run store
    (experiment/track.py), no module runs SQL."""
    owners = {PACKAGE / "experiment" / "track.py"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name in ("data", "features") or path in owners:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("execute", "executemany", "sql", "fetchall", "fetchnumpy"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.func.attr}(")
    assert not offenders, "SQL outside its owners:\n" + "\n".join(offenders)
