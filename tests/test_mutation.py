"""benchmarks/mutation.py: one module's mutmut configuration, and the per-module table that
feeds it agrees with the whole-checkout [tool.mutmut]."""

import runpy

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tests.conftest import REPO

mutation = runpy.run_path(str(REPO / "benchmarks" / "mutation.py"))
PYPROJECT_TEXT = (REPO / "pyproject.toml").read_text()
PYPROJECT = tomllib.loads(PYPROJECT_TEXT)
CONFIG = tomllib.loads((REPO / "benchmarks" / "mutation.toml").read_text())


def test_every_mutated_module_has_its_tests_and_every_test_file_is_selected():
    whole = PYPROJECT["tool"]["mutmut"]
    per_module = mutation["module_tests"](CONFIG)
    assert sorted(per_module) == sorted(whole["only_mutate"])
    # A module's list may also hold pytest options (-k EXPRESSION) after its test files.
    named = {test for tests in per_module.values() for test in tests if test.endswith(".py")}
    assert named == set(whole["pytest_add_cli_args_test_selection"])
    assert all((REPO / test).is_file() for test in named)


def test_a_modules_configuration_mutates_it_alone_with_its_tests_and_keeps_the_rest():
    text = mutation["module_config"](PYPROJECT_TEXT, "pipeline/core/params.py",
                                     ["tests/test_params.py"])
    doc = tomllib.loads(text)
    config, whole = doc["tool"]["mutmut"], PYPROJECT["tool"]["mutmut"]
    assert config["only_mutate"] == ["pipeline/core/params.py"]
    assert config["pytest_add_cli_args_test_selection"] == ["tests/test_params.py"]
    assert config["use_git_change_detection"] is False
    changed = {"only_mutate", "pytest_add_cli_args_test_selection", "use_git_change_detection"}
    assert {k: v for k, v in config.items() if k not in changed} == \
        {k: v for k, v in whole.items() if k not in changed}
    assert doc["project"] == PYPROJECT["project"]
    assert doc["tool"].keys() == PYPROJECT["tool"].keys()
    assert "timeout_constant" not in config
    own = tomllib.loads(mutation["module_config"](
        PYPROJECT_TEXT, "pipeline/bench/floor.py", ["tests/test_floor.py"],
        {"timeout_constant": 20, "process_isolation": "forkserver"}))["tool"]["mutmut"]
    assert (own["timeout_constant"], own["process_isolation"]) == (20, "forkserver")
    assert own["only_mutate"] == ["pipeline/bench/floor.py"]


def test_a_modules_own_settings_are_mutmuts():
    fields = {"timeout_constant", "timeout_multiplier", "process_isolation",
              "forkserver_warmup", "preload_modules_file"}
    for module, own in CONFIG.get("mutation_settings", {}).items():
        assert module in CONFIG["mutation_tests"]
        assert set(own) <= fields, set(own) - fields
        # mutmut 3.8's values (mutmut is not among the test dependencies)
        assert own.get("process_isolation", "fork") in ("fork", "forkserver")
        assert own.get("forkserver_warmup", "collect") in ("collect", "import", "none")
        if "preload_modules_file" in own:  # each line a module this venv imports
            import importlib.util

            lines = (REPO / own["preload_modules_file"]).read_text().splitlines()
            for name in (n.strip() for n in lines if n.strip() and not n.startswith("#")):
                assert importlib.util.find_spec(name.split(".")[0]), name


def test_counts_take_untested_mutants_as_survivors_and_timeouts_as_killed():
    stats = {"killed": 10, "timeout": 2, "segfault": 1, "survived": 3, "no_tests": 4,
             "suspicious": 1, "skipped": 5, "total": 40}   # 14 left untested
    assert mutation["counts"](stats) == {"mutants": 21, "killed": 13, "survived": 8}


def test_functions_restricting_a_pass_exist_in_their_module():
    import ast

    for module, names in CONFIG.get("mutation_functions", {}).items():
        tree = ast.parse((REPO / module).read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert set(names) <= defined, (module, set(names) - defined)
        assert module in CONFIG["mutation_tests"]


def test_only_a_change_of_prose_is_wording():
    wording = mutation["wording_only"]
    prose = ('-        raise SamplesError(f"{path}: cannot read it ({exc}); bench again")\n'
             '+        raise SamplesError(f"XX{path}: cannot read it ({exc}); bench againXX")\n')
    assert wording(prose)
    assert not wording('-    return row["p50_us"]\n+    return row["XXp50_usXX"]\n')  # a key
    assert not wording('-        return "ok"\n+        return "OK"\n')  # a state word
    assert not wording('-    x = f"{v:.1f} us"\n+    x = None\n')
    assert not wording('-    if a < b:\n+    if a <= b:\n')
    assert not wording('-    parts.append(f"{label}: none")\n')  # a removed line
    two = ('-        msg = ("a b " +\n-               "c d")\n'
           '+        msg = ("XXa b XX" +\n+               "c d")\n')
    assert wording(two)
