"""The AST walk behind each task's code dependencies (pipeline/core/importscan.py): module
texts written here, each expected name by hand. An import the walk misses leaves a stage's
artifacts up to date after an edit of that module; one it adds only reruns more."""

import textwrap

import pytest

from pipeline.core.importscan import imported_names


def names(source: str, package: str = "app.stages") -> set[str]:
    return imported_names(textwrap.dedent(source), package)


def test_absolute_imports_name_the_module_and_each_imported_name():
    assert names("import a.b, c\nfrom d.e import f, g as h\n") == {
        "a.b", "c", "d.e", "d.e.f", "d.e.g"}


@pytest.mark.parametrize("guard", ["TYPE_CHECKING", "typing.TYPE_CHECKING", "t.TYPE_CHECKING"])
def test_a_type_checking_block_is_skipped_and_its_else_followed(guard):
    """`if TYPE_CHECKING:` and `if typing.TYPE_CHECKING:` (no run-time import); the `else:`
    branch runs, so its imports count."""
    assert names(f"""
        import typing
        if {guard}:
            import app.hints
        else:
            import app.runtime
        """) == {"typing", "app.runtime"}


@pytest.mark.parametrize("condition", ["DEBUG", "sys.flags.optimize", "config.TYPE_CHECKING_x",
                                       "not TYPE_CHECKING", "TYPE_CHECKING()"])
def test_an_ordinary_condition_is_followed_in_both_branches(condition):
    """Any other test, a name or an attribute, is a run-time branch: both count."""
    assert names(f"""
        if {condition}:
            import app.one
        else:
            from app import two
        """) == {"app.one", "app", "app.two"}


def test_the_command_lines_imports_are_skipped_but_not_its_else_or_other_functions():
    assert names("""
        def main():
            import app.cli_only
        async def fetch():
            import app.fetcher
        def helper():
            from app import helped
        if __name__ == "__main__":
            import app.cli_too
        else:
            import app.imported_as_module
        if __name__ == "app":
            import app.by_name
        """) == {"app.fetcher", "app", "app.helped", "app.imported_as_module", "app.by_name"}


def test_relative_imports_climb_from_the_package_one_level_per_dot():
    assert names("from . import x\nfrom .. import y\nfrom ...z import w\n", "a.b.c") == {
        "a.b.c", "a.b.c.x", "a.b", "a.b.y", "a.z", "a.z.w"}
