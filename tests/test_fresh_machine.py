"""`make demo` on a fresh machine: the demo extra holds what the demo imports, and CI runs it in its own venv."""

import ast
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, for the lazily imported packages the demo path uses
DISTRIBUTIONS = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def lazy_imports(path: Path) -> set[str]:
    """Top-level packages imported inside functions of a module (the lazy optional imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in inner.names}
                elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                    names.add(inner.module.split(".")[0])
    return names


def test_the_demo_extra_has_every_optional_package_the_demo_imports():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    demo = {re.split(r"[<>=!~ ;\[]", requirement)[0] for requirement in extras["demo"]}
    src = ROOT / "src/mtlkit"
    # the demo draws graph.png (viz) and curves.png (report) and loads digits (scikit-learn) by import_extra
    used = lazy_imports(src / "viz.py") | lazy_imports(src / "experiments/report.py") | {"sklearn"}
    needed = {DISTRIBUTIONS[name] for name in used if name in DISTRIBUTIONS}
    assert needed == {"scikit-learn", "matplotlib"}
    assert needed <= demo, f"the demo extra lacks {sorted(needed - demo)}"


def test_ci_runs_the_demo_in_a_venv_of_its_own_before_the_tests():
    lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    demo = next(i for i, line in enumerate(lines) if line.startswith("make demo"))
    assert "VENV=" in lines[demo] and lines.index("make test") > demo
    assert re.search(r"^demo: \$\(VENV\)/\.installed$", (ROOT / "Makefile").read_text(), re.M)
