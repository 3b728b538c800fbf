"""The package tree is the architecture: who may import whom, checked on every module's AST.

core is shared by everything and imports no subsystem; the build stages use core; the bench
times what the stages built; predict runs models (on the host through the stages' evaluate,
on a board through the bench); the nightly drives doit and reads the stages' and the bench's
outputs; the virtual K1 is a board and knows only core. The root package (PipelineError,
load_runner) counts as core; `pipeline/history.py` and `pipeline/report.py` are command
names kept for users (`python -m pipeline.history`), one import each."""

import ast
from pathlib import Path

from tests.conftest import REPO

MAY_IMPORT = {
    "core": {"core"},
    "stages": {"core", "stages"},
    "bench": {"core", "stages", "bench"},
    "predict": {"core", "stages", "bench", "predict"},
    "nightly": {"core", "stages", "bench", "nightly"},
    "virtual_k1": {"core", "virtual_k1"},
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
