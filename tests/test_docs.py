"""The README and the docs/ site: the site builds with `mkdocs build --strict`, and every shell
or Python block either runs here, against the code it describes, or carries
`<!-- not-run: why -->` on the line before it.

How a block runs: a `python` block is executed (a block whose first line is `# <file>.py` is
a model file: written there and built as `train` builds it); a `sh` block's commands are
checked one by one: `python -m pipeline.…` and `python benchmarks/….py` must answer `--help`
and know every option and subcommand the block uses, `doit`'s commands, options and tasks
must exist, `sqlite3` runs its query against a real (empty) history database, and `ssh` hands
its remote command to `sh` exactly as ssh does (arguments joined by spaces), with a stand-in
`python3` that compiles its `-c` code, so a quoting mistake fails as it would on a board.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"sh", "bash", "shell", "console"}
PYTHON_LANGS = {"python", "py"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->\s*$", re.S)
CI_MARKER = "<!-- ci-test-command -->"
SEPARATORS = {"&&", "||", ";", "|", "&"}
DOIT_COMMANDS = {"list", "clean", "forget", "info", "help", "run", "ignore", "dumpdb",
                 "strace", "reset-dep", "auto", "tabcompletion"}
# ssh options that take a value (ssh(1)); the first other word is the host.
SSH_VALUE_OPTIONS = set("BbcDEeFIiJLlmOoPpQRSWw")
# A model file's block: the file it is, then its code.
MODEL_FILE = re.compile(r"^#\s*(\S+\.py)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int           # 1-based line of the opening fence
    lang: str
    code: str
    not_run: str | None  # why it cannot run here, or None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    """README.md and every page of the site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def marker_before(lines: list[str], fence: int) -> str | None:
    """The reason an HTML comment just before line `fence` gives for not running the block
    (the CI marker: CI runs it), or None."""
    before = "\n".join(lines[:fence]).rstrip()
    if before.endswith(CI_MARKER):
        return "the CI test command: .ci/run runs it"
    if not before.endswith("-->"):
        return None
    match = NOT_RUN.search(before[before.rfind("<!--"):])
    return match.group(1) if match else None


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file."""
    return blocks_in(path.read_text(encoding="utf-8"), path)


def blocks_in(text: str, path: Path) -> list[Block]:
    """The fenced code blocks of Markdown text read from `path`."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line.lstrip()
                         for line in lines[i + 1:end])
        found.append(Block(path, i + 1, lang.lower(), code, marker_before(lines, i)))
        i = end + 1
    return found


def code_blocks() -> list[Block]:
    """Every shell and Python block of the README and the site."""
    return [block for path in doc_files() for block in blocks_of(path)
            if block.lang in SHELL_LANGS | PYTHON_LANGS]


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block, as the local shell splits them: at newlines
    (not inside quotes) and at `&&`/`;`/`|`/`&`, comments dropped, leading VAR=value
    assignments removed."""
    lexer = shlex.shlex(code.replace("\\\n", " "), posix=True, punctuation_chars=";&|\n")
    lexer.whitespace, lexer.commenters, lexer.whitespace_split = " \t", "", True
    found, current, comment = [], [], False
    for token in [*lexer, "\n"]:
        if token and set(token) <= set(";&|\n"):
            while current and re.match(r"^[A-Z_][A-Z0-9_]*=", current[0]):
                current.pop(0)
            if current:
                found.append(current)
            current, comment = [], comment and "\n" not in token
        elif comment or token.startswith("#"):
            comment = True
        else:
            current.append(token)
    return found


def kind(command: list[str]) -> str | None:
    """Which checker runs a command, or None if this file cannot run it."""
    program, args = Path(command[0]).name, command[1:]
    if program in ("python", "python3") and args[:1] == ["-m"] and len(args) > 1 \
            and args[1].split(".")[0] == "pipeline":
        return "cli"
    if program in ("python", "python3") and args and args[0].startswith("benchmarks/"):
        return "cli"
    if program in ("doit", "ssh", "sqlite3"):
        return program
    return None


def runnable(block: Block) -> bool:
    if block.lang in PYTHON_LANGS:
        return True
    cmds = commands(block.code)
    return bool(cmds) and all(kind(command) for command in cmds)


# --- the checks -----------------------------------------------------------------------------

def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the user's PIPELINE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(extra)
    return env


@lru_cache(maxsize=None)
def help_text(*program: str) -> str:
    done = subprocess.run([sys.executable, *program, "--help"], cwd=ROOT, env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(program)} --help: {done.stderr[-2000:]}"
    return done.stdout


def options(args: list[str]) -> list[str]:
    """The long and short options a command line uses (`[--json]` in a synopsis too)."""
    found = []
    for arg in args:
        match = re.match(r"^\[?(--?[A-Za-z][\w-]*)", arg)
        if match:
            found.append(match.group(1))
    return found


def mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def check_cli(command: list[str]) -> None:
    """The module or script answers --help and knows the options and subcommand used."""
    program = command[1:3] if command[1] == "-m" else command[1:2]
    text = help_text(*program)
    unknown = [opt for opt in options(command[len(program) + 1:]) if not mentions(text, opt)]
    assert not unknown, f"{' '.join(program)} has no option {unknown}:\n{text}"
    choices = re.search(r"\{([\w,-]+)\}", text.split("\n\n")[0])  # the usage lines
    positional = [a for a in command[len(program) + 1:] if not a.startswith(("-", "["))]
    if choices and positional:
        assert positional[0] in choices.group(1).split(","), \
            f"{' '.join(program)}: no subcommand {positional[0]!r} (has {choices.group(0)})"


@lru_cache(maxsize=None)
def doit_output(*args: str) -> str:
    """doit's answer in this project, with an empty artifact tree and no network."""
    with tempfile.TemporaryDirectory() as artifacts:
        done = subprocess.run([str(Path(sys.executable).with_name("doit")), *args], cwd=ROOT,
                              env=clean_env(PIPELINE_ARTIFACTS=artifacts, PIPELINE_OFFLINE="1"),
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"doit {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def check_doit(command: list[str]) -> None:
    """doit's command, its options and the tasks named exist (`bench:k1`: the task `bench`;
    its boards come from an inventory)."""
    args = command[1:]
    sub = args.pop(0) if args and args[0] in DOIT_COMMANDS else "run"
    text = doit_output("help", sub)
    unknown = [opt for opt in options(args) if not mentions(text, opt)]
    assert not unknown, f"doit {sub} has no option {unknown}"
    tasks = {line.split()[0] for line in doit_output("list").splitlines() if line.strip()}
    for arg in args:
        if arg.startswith("-") or arg.isdigit():
            continue
        assert arg.split(":")[0] in tasks, f"doit has no task {arg!r} (has {sorted(tasks)})"


def stand_in_python(bin_dir: Path) -> None:
    """A `python3` for the stand-in board: compiles its `-c` code, runs nothing."""
    stub = bin_dir / "python3"
    stub.write_text(f"#!{sys.executable}\nimport sys\n"
                    "if sys.argv[1:2] == ['-c']:\n"
                    "    compile(sys.argv[2], '<ssh python3 -c>', 'exec')\n")
    stub.chmod(0o755)


def check_ssh(command: list[str], tmp_path: Path) -> None:
    """ssh joins its remote words with spaces and the board's shell parses the result: run
    that through `sh` with a stand-in python3, as `ssh` to a board would."""
    args, i = command[1:], 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i][1:] in SSH_VALUE_OPTIONS else 1
    remote = " ".join(args[i + 1:])
    assert remote, f"{command}: no remote command"
    bin_dir = tmp_path / "board-bin"
    bin_dir.mkdir(exist_ok=True)
    stand_in_python(bin_dir)
    done = subprocess.run(["sh", "-c", remote], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 0, f"the board's shell cannot run {remote!r}: {done.stderr}"


def history_db(cwd: Path) -> None:
    """An empty nightly history database at the documented path."""
    from pipeline.nightly import history

    path = cwd / "artifacts" / "history.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    history.connect(path).close()


def check_sqlite3(command: list[str], tmp_path: Path) -> None:
    if shutil.which("sqlite3") is None:
        pytest.fail("sqlite3 is not installed (a test prerequisite; .ci/run installs it)")
    history_db(tmp_path)
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr, f"{command}: {done.stderr}"


def run_python(block: Block, tmp_path: Path) -> None:
    """Run a Python block in a directory holding what it reads; a model file is built."""
    first = block.code.splitlines()[0]
    model_file = MODEL_FILE.match(first)
    if model_file:
        check_model_file(block.code, model_file.group(1), tmp_path)
        return
    history_db(tmp_path)
    done = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{block.name}: {done.stderr[-3000:]}"


def check_model_file(code: str, name: str, tmp_path: Path) -> None:
    """Write the documented model file and build it as the train stage does: checked, and
    with the same layer names on two calls."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code)
    script = ("import sys; from pathlib import Path\n"
              "from pipeline.core.models import resolve\n"
              "from pipeline.stages.train import make_model\n"
              f"source = resolve({name + ':build'!r}, Path.cwd())\n"
              "model, stable = make_model(source, (28, 28), 10)\n"
              "assert stable, 'layer names differ between two calls'\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600,
                          env=clean_env(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"


CHECKS = {"cli": lambda command, _tmp: check_cli(command),
          "doit": lambda command, _tmp: check_doit(command),
          "ssh": check_ssh, "sqlite3": check_sqlite3}


# --- the tests ------------------------------------------------------------------------------

def test_every_block_runs_or_says_why():
    unexplained = [f"{block.name}: {block.code.splitlines()[0] if block.code else ''}"
                   for block in code_blocks() if block.not_run is None and not runnable(block)]
    assert not unexplained, ("blocks that neither run here nor say why "
                             "(<!-- not-run: why --> before them):\n" + "\n".join(unexplained))
    empty = [block.name for block in code_blocks() if block.not_run == ""]
    assert not empty, f"not-run markers without a reason: {empty}"


def test_markers_are_needed():
    """A block this file could run is run: a not-run marker never hides one."""
    needless = [block.name for block in code_blocks()
                if block.not_run and block.lang in SHELL_LANGS and runnable(block)
                and "CI test command" not in block.not_run]
    assert not needless, f"blocks marked not-run that this file runs: {needless}"


@pytest.mark.parametrize("block", [b for b in code_blocks() if b.not_run is None and runnable(b)],
                         ids=lambda block: block.name)
def test_block_runs(block: Block, tmp_path):
    if block.lang in PYTHON_LANGS:
        run_python(block, tmp_path)
        return
    for command in commands(block.code):
        CHECKS[kind(command)](command, tmp_path)


@pytest.mark.parametrize("block", [b for path in doc_files() for b in blocks_of(path)
                                   if b.lang == "toml"], ids=lambda block: block.name)
def test_toml_blocks_parse(block: Block):
    tomllib.loads(block.code)


def test_stand_in_ssh_catches_the_quoting_that_fails_on_a_board(tmp_path):
    """The provider check as board/README.md once had it: ssh joins the words, and the
    board's shell sees an unquoted `(`."""
    broken = ["ssh", "k1", "python3", "-c",
              "import onnxruntime; print(onnxruntime.get_available_providers())"]
    with pytest.raises(AssertionError, match="cannot run"):
        check_ssh(broken, tmp_path)
    check_ssh(["ssh", "k1", 'python3 -c "import onnxruntime; print(1)"'], tmp_path)


def test_checks_catch_a_stale_option_and_task():
    with pytest.raises(AssertionError, match="no option"):
        check_cli(["python", "-m", "pipeline.history", "--lastt", "3"])
    with pytest.raises(AssertionError, match="no subcommand"):
        check_cli(["python", "-m", "pipeline.virtual_k1", "start"])
    with pytest.raises(AssertionError, match="no task"):
        check_doit(["doit", "quantize:mnist_cnn"])


def test_blocks_and_markers_are_parsed():
    page = ("text\n\n<!-- not-run: needs a board\n  on the desk -->\n```sh\nssh k1 true\n```\n"
            "<!-- ci-test-command -->\n```sh\npytest\n```\n  ```python\n  print(1)\n  ```\n")
    found = [(b.line, b.lang, b.code, b.not_run) for b in blocks_in(page, ROOT / "x.md")]
    assert found == [(5, "sh", "ssh k1 true", "needs a board\n  on the desk"),
                     (9, "sh", "pytest", "the CI test command: .ci/run runs it"),
                     (12, "python", "print(1)", None)]
    assert commands("A=1 doit list && python -m pipeline.x --y \\\n  z  # note\nssh h 'a b'") \
        == [["doit", "list"], ["python", "-m", "pipeline.x", "--y", "z"], ["ssh", "h", "a b"]]


def test_site_builds_strict(tmp_path):
    """No broken link or anchor, no page left out of the build."""
    for module in ("mkdocs", "material"):
        if not _importable(module):
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]' (the test "
                        "extra includes it)")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").is_file()


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def table_defaults(path: Path) -> dict[str, list[str]]:
    """`section.key` -> the other cells of its row, from every table of a page."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key = re.fullmatch(r"`([a-z_]+\.[a-z0-9_]+)`", cells[0]) if line.startswith("|") else None
        if key:
            rows[key.group(1)] = cells[1:]
    return rows


def toml_value(cell: str) -> object:
    """A table cell's value, as TOML reads it (`"cosine"`, `[]`, 0.965)."""
    return tomllib.loads(f"v = {cell.strip('`')}")["v"]


def test_params_tables_match_the_schema():
    """Every key of the schema is in docs/params.md (nightly's in the Gates table of
    docs/nightly.md, with the smoke preset's value beside it) with the default the schema
    gives it, and no table names a key the schema lacks."""
    import dataclasses

    from pipeline.core.params import load_params, sections

    smoke = load_params(ROOT / "params" / "smoke.toml")
    documented = {**table_defaults(ROOT / "docs" / "params.md"),
                  **table_defaults(ROOT / "docs" / "nightly.md")}
    schema = {}
    for name, cls in sections().items():
        for spec in dataclasses.fields(cls):
            default = (spec.default if spec.default is not dataclasses.MISSING
                       else spec.default_factory())
            schema[f"{name}.{spec.name}"] = (default, getattr(getattr(smoke, name), spec.name))
    assert set(documented) == set(schema), set(documented) ^ set(schema)
    for key, (default, smoke_value) in schema.items():
        cells = documented[key]
        expected = list(default) if isinstance(default, tuple) else default
        assert toml_value(cells[0]) == expected, (key, cells[0], default)
        if key.startswith("nightly."):  # the Gates table: default, smoke, meaning
            assert toml_value(cells[1]) == pytest.approx(smoke_value), (key, cells[1])


def test_the_task_table_lists_every_task():
    """docs/pipeline.md's table has a row for each task `doit list` shows, and no other."""
    tasks = {line.split()[0] for line in doit_output("list").splitlines() if line.strip()}
    documented = set()
    for line in (ROOT / "docs" / "pipeline.md").read_text(encoding="utf-8").splitlines():
        task = re.match(r"^\| `([a-z_]+)(:<[a-z]+>|:mnist)?` \|", line)
        if task:
            documented.add(task.group(1))
    assert documented == tasks, documented ^ tasks
