"""Mutation testing of one module at a time, against that module's own tests only.

A plain `mutmut run` first runs every configured test file once ("collect stats"); one failing
or slow file stops or slows every module's pass. This script runs mutmut per module in a copy
of the checkout (build/mutation/<module>/, kept between runs: a second run reuses the record of
which test calls which function, but tests every mutant again) whose [tool.mutmut] mutates
just that module and selects just the tests that `[mutation_tests]` in benchmarks/mutation.toml names for it (and, for a module listed in
`[mutation_functions]`, mutates only those functions: a module whose other functions
draw charts or write files too slowly to test each mutant; `[mutation_settings]` gives
a module mutmut settings of its own). It prints one row per
module for docs/testing-oracles.md and each survivor's name (`mutmut show NAME` in that
directory shows its diff). A survivor that changes only the prose of a message (a string
literal with a space in it, nothing else on its lines) is counted apart as "wording" and
left out of the survival rate.

Usage: nice -n 10 python benchmarks/mutation.py [MODULE ...] [--max-children 2]
With no MODULE, every module of [mutation_tests]. Needs `pip install -e '.[test,mutation]'`.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import time
import tokenize
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
SCRATCH = REPO / "build" / "mutation"


CONFIG = Path(__file__).with_name("mutation.toml")


def module_tests(config: dict) -> dict[str, list[str]]:
    """Each mutated module's own test files, from [mutation_tests] of mutation.toml."""
    return config["mutation_tests"]


def module_config(pyproject_text: str, module: str, tests: list[str],
                  settings: dict | None = None) -> str:
    """pyproject.toml's text with [tool.mutmut] mutating only `module`, testing with `tests`,
    with the module's own mutmut `settings` ([mutation_settings]) over the others."""
    base = dict(tomllib.loads(pyproject_text)["tool"]["mutmut"])
    # The copy lives inside this checkout's build/: git would answer about the checkout.
    base.update(only_mutate=[module], pytest_add_cli_args_test_selection=tests,
                use_git_change_detection=False)
    base.update(settings or {})
    # JSON's strings, lists, numbers and booleans are also TOML's.
    table = "[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in base.items())
    section = re.compile(r"^\[tool\.mutmut\]\n(?:(?!\[).*\n)*", re.MULTILINE)
    new_text, count = section.subn(table + "\n", pyproject_text)
    if count != 1:
        raise SystemExit("pyproject.toml: expected one [tool.mutmut] table; restore it.")
    return new_text


def sync_checkout(dest: Path) -> None:
    """Copy the checkout's tracked and untracked-but-not-ignored files to `dest` (unchanged
    files are left alone, so mutmut sees only real changes); drop files gone from it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    wanted = {name for name in listed if name and (REPO / name).is_file()}
    for name in wanted:
        src, dst = REPO / name, dest / name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    for path in dest.rglob("*"):
        name = path.relative_to(dest).as_posix()
        if path.is_file() and name.split("/")[0] != "mutants" and name not in wanted:
            path.unlink()


def counts(stats: dict) -> dict[str, int]:
    """mutmut's CI/CD figures as the table counts them: a mutant no test runs survived, a
    timeout was killed."""
    survived = stats["survived"] + stats["no_tests"] + stats["suspicious"]
    killed = stats["killed"] + stats["timeout"] + stats["segfault"]
    # Mutants left untested (outside a pass restricted to some functions) are not counted.
    return {"mutants": killed + survived, "killed": killed, "survived": survived}


def _tokens(line: str) -> list[tuple[int, str]]:
    """The tokens of one source line (a fragment of a longer statement is fine)."""
    found = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline):
            if tok.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER,
                                tokenize.INDENT, tokenize.DEDENT):
                found.append((tok.type, tok.string))
    except (tokenize.TokenError, IndentationError):  # an unclosed bracket: the line's part
        pass
    return found


def wording_only(diff: str) -> bool:
    """Whether a mutant's diff changes nothing but the prose of messages: every changed line
    has the same tokens as before except string literals, and each changed literal was prose
    (it has a space). A changed key, format spec, state word or column name is no prose."""
    lines = diff.splitlines()
    old = [x[1:] for x in lines if x.startswith("-") and not x.startswith("---")]
    new = [x[1:] for x in lines if x.startswith("+") and not x.startswith("+++")]
    if not old or len(old) != len(new):
        return False
    for before, after in zip(old, new):
        a, b = _tokens(before), _tokens(after)
        if not a or len(a) != len(b):
            return False
        for (kind_a, text_a), (kind_b, text_b) in zip(a, b):
            if text_a == text_b:
                continue
            if kind_a != tokenize.STRING or kind_b != tokenize.STRING or " " not in text_a:
                return False
    return True


def run_module(module: str, tests: list[str], functions: list[str], max_children: int,
               settings: dict | None = None) -> tuple[dict, list[str], float]:
    """mutmut over `module` (only its module-level `functions` if any are given) in its own
    copy of the checkout: the counts, the survivors' names and the pass's wall time in
    seconds."""
    dest = SCRATCH / module.replace("/", ".")
    dest.mkdir(parents=True, exist_ok=True)
    sync_checkout(dest)
    (dest / "pyproject.toml").write_text(
        module_config((REPO / "pyproject.toml").read_text(), module, tests, settings))
    mutmut = [sys.executable, "-m", "mutmut"]
    start = time.monotonic()
    # Named, every mutant is tested again: mutmut keeps a cached verdict otherwise, even
    # after the tests changed (a survivor would stay one after the test that kills it).
    dotted = module.removesuffix(".py").replace("/", ".")
    patterns = [f"{dotted}.x_{name}__mutmut_*" for name in functions] or [f"{dotted}.*"]
    subprocess.run([*mutmut, "run", "--max-children", str(max_children), *patterns], cwd=dest,
                   check=True)
    seconds = time.monotonic() - start
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=dest, check=True, capture_output=True)
    stats = json.loads((dest / "mutants" / "mutmut-cicd-stats.json").read_text())
    listed = subprocess.run([*mutmut, "results"], cwd=dest, check=True, capture_output=True,
                            text=True).stdout
    survivors = [line.split(":")[0].strip() for line in listed.splitlines()
                 if line.rstrip().endswith(("survived", "no tests", "suspicious"))]
    wording = [name for name in survivors if wording_only(subprocess.run(
        [*mutmut, "show", name], cwd=dest, capture_output=True, text=True).stdout)]
    found = counts(stats)
    found["wording"] = len(wording)
    return found, [n for n in survivors if n not in wording], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="e.g. pipeline/core/params.py")
    parser.add_argument("--max-children", type=int, default=2)
    args = parser.parse_args()
    config = tomllib.loads(CONFIG.read_text())
    mapping = module_tests(config)
    functions = config.get("mutation_functions", {})
    settings = config.get("mutation_settings", {})
    unknown = [m for m in args.modules if m not in mapping]
    if unknown:
        raise SystemExit(f"benchmarks/mutation.toml [mutation_tests] has no {', '.join(unknown)}; "
                         "add the module with its test files there.")
    rows = []
    for module in args.modules or list(mapping):
        found, survivors, seconds = run_module(module, mapping[module],
                                               functions.get(module, []), args.max_children,
                                               settings.get(module))
        # Survivors that change only a message's prose are left out, and counted.
        survived, counted = found["survived"] - found["wording"], \
            found["mutants"] - found["wording"]
        share = 100 * survived / counted if counted else 0.0
        rows.append(f"| `{module}` | {found['mutants']} | {found['killed']} | "
                    f"{survived} | {found['wording']} | {share:.1f} % | "
                    f"{seconds / 60:.0f} min |")
        print(f"{module}: survivors (not counting wording): {' '.join(survivors) or 'none'}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
