"""The dotted names a module's source imports, read with an AST walk (nothing is imported).

pipeline/core/codedeps.py calls it for a file whose cached imports are stale; a module of
its own so that loading dodo.py, which reads every file's imports from the cache on a no-op
`doit`, does not compile it. Not followed: imports inside a function named `main` or under
`if __name__ == "__main__":` (they serve the module's command line, which a task never
runs) and under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast


def _is_main_guard(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and len(test.comparators) == 1
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


class _Imports(ast.NodeVisitor):
    """Dotted names a module imports (for `from a import b`: `a` and `a.b`, since `b` may
    be a submodule), outside its command line and type-checking blocks."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.names: set[str] = set()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name != "main":
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if _is_main_guard(node.test) or _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module  # None only in a relative `from . import x`
        if node.level:  # relative: from the module's own package upwards
            parts = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        self.names.add(base)
        self.names.update(f"{base}.{alias.name}" for alias in node.names)


def imported_names(source: str, package: str) -> set[str]:
    """Every dotted name the module text `source` (in package `package`) imports."""
    visitor = _Imports(package)
    visitor.visit(ast.parse(source))
    return visitor.names
