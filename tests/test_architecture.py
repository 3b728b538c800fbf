"""The package tree is the architecture: who may import whom, checked on every module's AST.

core is shared by everything and imports no subsystem; the build stages use core; the bench
times what the stages built; predict runs models (on the host through the stages' evaluate,
on a board through the bench); the nightly drives doit and reads the stages' and the bench's
outputs (and the task graph's file name, to leave it out of the artifacts); the virtual K1
is a board and knows only core; the task graph (dodo.py's) names the stages' and the
bench's functions as strings and imports only core. The root package
(PipelineError, load_runner) counts as core; `pipeline/history.py` and `pipeline/report.py`
are command names kept for users (`python -m pipeline.history`), one import each."""

import ast
from pathlib import Path

from tests.conftest import REPO

MAY_IMPORT = {
    "core": {"core"},
    "stages": {"core", "stages"},
    "bench": {"core", "stages", "bench"},
    "predict": {"core", "stages", "bench", "predict"},
    "nightly": {"core", "stages", "bench", "graph", "nightly"},
    "virtual_k1": {"core", "virtual_k1"},
    "graph": {"core", "graph"},
}
COMMAND_SHIMS = {"history": "nightly", "report": "bench"}


def subsystem(path: Path) -> str:
    parts = path.relative_to(REPO / "pipeline").with_suffix("").parts
    if len(parts) == 1:
        return COMMAND_SHIMS.get(parts[0], "core")  # __init__ is the root: core
    return parts[0]


def imported_subsystems(path: Path) -> set[str]:
    """Subsystems a module imports (pipeline.X... or `from pipeline import X`), at any depth
    (a function-level import is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pipeline":
                names = [f"pipeline.{a.name}" for a in node.names]
            else:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "pipeline" and len(parts) > 1:
                top = parts[1]
                found.add(top if top in MAY_IMPORT else "core")
    return found


def test_every_module_imports_only_what_its_subsystem_may():
    broken = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        own = subsystem(path)
        for other in imported_subsystems(path) - MAY_IMPORT[own]:
            broken.append(f"{path.relative_to(REPO)} ({own}) imports {other}")
    assert not broken, "\n".join(broken)


def test_every_subsystem_is_a_package_and_nothing_else_sits_at_the_top():
    top = {p.stem for p in (REPO / "pipeline").glob("*.py")}
    assert top == {"__init__", *COMMAND_SHIMS}
    packages = {p.name for p in (REPO / "pipeline").iterdir()
                if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(MAY_IMPORT)


def test_the_rule_catches_a_forbidden_import(tmp_path):
    """The checker itself: core importing the bench is found."""
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from pipeline.bench.report import main\n")
    assert imported_subsystems(module) == {"bench"}
    assert "bench" not in MAY_IMPORT["core"]


MAX_FUNCTION_LINES = 60


def long_functions(path: Path, root: Path = REPO) -> list[str]:
    """Functions of `path` over MAX_FUNCTION_LINES lines whose first lines (signature,
    docstring, first comments) do not say why ("... 60 lines because ...")."""
    lines = path.read_text().splitlines()
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            head = "\n".join(lines[node.lineno - 1:node.lineno + 12])
            if length > MAX_FUNCTION_LINES and f"{MAX_FUNCTION_LINES} lines" not in head:
                out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {length} lines")
    return out


def test_no_function_is_over_60_lines_unless_a_comment_says_why():
    found = [f for path in sorted((REPO / "pipeline").rglob("*.py")) for f in long_functions(path)]
    assert found == []


def test_the_length_rule_catches_a_long_function_without_a_reason(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    module = tmp_path / "m.py"
    module.write_text(f"def f():\n{body}\n\n\ndef g():\n    # Over 60 lines because "
                      f"it is a test.\n{body}\n\n\ndef h():\n{body[:-8]}\n")
    assert long_functions(module, tmp_path) == [f"m.py:1 f: {MAX_FUNCTION_LINES + 1} lines"]
