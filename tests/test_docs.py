"""The README and the docs/ site: the site builds with `mkdocs build --strict`, and every shell
or Python block either runs here or carries `<!-- not-run: why -->` on the line before it.

How a page's blocks run: in order, in one copy of the smoke build (`smoke_project`, with
`params/smoke.toml` and no network), as the user would type them: a `sh` block is a `bash`
script under `set -e`, a `python` block is executed (a block whose first line is `# <file>.py`
is a model file: written there and built as `train` builds it). Example paths point where the
test has them (`/data/mnist`: the MNIST archives; `/tmp/...`: a temporary directory). `ssh` is
a stand-in on PATH that hands its remote command to `sh -c` exactly as ssh does (arguments
joined by spaces), so a quoting mistake fails as it would on a board; the board's `python3`
compiles its `-c` code. The history blocks read two nights recorded from the smoke build's
own figures. No block may print a third-party notice (pipeline/core/console.py hides them).
"""

from __future__ import annotations

import dataclasses
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

from tests.conftest import third_party_notices

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
# A model file's block: the file it is, then its code.
MODEL_FILE = re.compile(r"^#\s*(\S+\.py)\s*$")
# Before a block of output: the smoke build's file whose lines the block quotes.
QUOTED_FROM = re.compile(r"<!--\s*quoted-from:\s*(\S+)\s*-->\s*$")
# An example of a command's output: the block is exactly what the command prints on the
# smoke build (seeded and deterministic), never a hand copy.
OUTPUT_OF = re.compile(r"<!--\s*output-of:\s*(.+?)\s*-->\s*$")


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
    """What kind of command this file runs it as, or None if it cannot run it here."""
    program, args = Path(command[0]).name, command[1:]
    if args[:2] == ["-m", "pipeline.nightly"]:
        return None  # a whole build in its own run directory, minutes: test_nightly.py runs it
    if args[:2] == ["-m", "pipeline.virtual_k1"]:
        # test_virtual_k1.py runs up, `doit bench:virtual-k1`, status and down through this
        # CLI, with a state directory of its own; the page's commands use the default one,
        # which is the user's own board on a developer's machine.
        return None
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


# --- running the blocks ---------------------------------------------------------------------

def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the user's PIPELINE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(extra)
    return env


@lru_cache(maxsize=None)
def doit_output(*args: str) -> str:
    """doit's answer in this project, with an empty artifact tree and no network."""
    with tempfile.TemporaryDirectory() as artifacts:
        done = subprocess.run([str(Path(sys.executable).with_name("doit")), *args], cwd=ROOT,
                              env=clean_env(PIPELINE_ARTIFACTS=artifacts, PIPELINE_OFFLINE="1"),
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"doit {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


# The stand-in `ssh`: what OpenSSH does with a remote command (its words joined by spaces,
# parsed by the board's shell), with this machine as the board. Options are skipped; `-G`
# (ssh's resolved configuration) and `-O` (a connection master's control) answer as for a
# board reached directly.
STAND_IN_SSH = """\
import os, sys
VALUE = set("BbcDEeFIiJLlmOoPpQRSWw")
args, i = sys.argv[1:], 0
while i < len(args) and args[i].startswith("-"):
    if args[i] == "--":
        i += 1
        break
    if args[i] == "-G":
        sys.exit(print("hostname 127.0.0.1\\nport 22\\nuser board"))
    if args[i] == "-O":
        sys.exit(0)
    i += 2 if args[i][1:] in VALUE else 1
remote = " ".join(args[i + 1:])
if not remote:
    sys.exit("stand-in ssh: no remote command (an interactive login is not a documented step)")
home = os.environ["STAND_IN_BOARD_HOME"]
os.chdir(home)
os.execve("/bin/sh", ["sh", "-c", remote],
          {"PATH": os.environ["STAND_IN_BOARD_PATH"], "HOME": home})
"""

# The board's `python3` for commands typed at it (not the runner: the inventory names its
# interpreter): compiles its `-c` code, runs nothing, since the board's modules
# (spacemit_ort) are not on this machine.
STAND_IN_PYTHON3 = """\
import sys
if sys.argv[1:2] == ["-c"]:
    compile(sys.argv[2], "<ssh python3 -c>", "exec")
"""


def stand_in_board(where: Path) -> dict[str, str]:
    """`ssh` and the board's `python3` as scripts under `where`; the environment that puts
    that `ssh` first on PATH."""
    host_bin, board_bin, home = where / "bin", where / "board-bin", where / "board-home"
    for directory in (host_bin, board_bin, home):
        directory.mkdir(parents=True, exist_ok=True)
    for path, code in ((host_bin / "ssh", STAND_IN_SSH),
                       (board_bin / "python3", STAND_IN_PYTHON3)):
        path.write_text(f"#!{sys.executable}\n{code}")
        path.chmod(0o755)
    return {"PATH": os.pathsep.join([str(host_bin), str(Path(sys.executable).parent),
                                     os.environ.get("PATH", "/usr/bin:/bin")]),
            "STAND_IN_BOARD_PATH": f"{board_bin}:/usr/bin:/bin", "STAND_IN_BOARD_HOME": str(home)}


def example_paths(code: str, places: dict[str, Path]) -> str:
    """The block with its example paths (`/data/mnist`, `/tmp/mnist`) pointing where this
    test has them."""
    if not places:
        return code
    # One pass: a replaced path (under /tmp itself, where pytest works) is never replaced again.
    pattern = "|".join(re.escape(documented) for documented in places)
    return re.sub(rf"(?<![\w./-])({pattern})(?=[/\s\"']|$)",
                  lambda match: str(places[match.group(1)]), code, flags=re.M)


@dataclass
class Ran:
    block: Block
    output: str


def run_shell(block: Block, cwd: Path, env: dict[str, str], places: dict[str, Path]) -> Ran:
    """The block as a script (`set -e`: every command must succeed) in `cwd`."""
    script = "set -e\n" + example_paths(block.code, places)
    done = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, (f"{block.name} failed ({done.returncode}):\n{script}\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return Ran(block, done.stdout + done.stderr)


def run_python(block: Block, cwd: Path, env: dict[str, str]) -> Ran:
    """Run a Python block in `cwd`; a model file (first line `# <file>.py`) is built."""
    model_file = MODEL_FILE.match(block.code.splitlines()[0])
    if model_file:
        return check_model_file(block, model_file.group(1), cwd, env)
    done = subprocess.run([sys.executable, "-c", block.code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{block.name}: {done.stderr[-3000:]}"
    return Ran(block, done.stdout + done.stderr)


def check_model_file(block: Block, name: str, cwd: Path, env: dict[str, str]) -> Ran:
    """Write the documented model file and build it as the train stage does: checked, and
    with the same layer names on two calls."""
    path = cwd / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.code)
    script = ("import sys; from pathlib import Path\n"
              "from pipeline.core.models import resolve\n"
              "from pipeline.stages.train import make_model\n"
              f"source = resolve({name + ':build'!r}, Path.cwd())\n"
              "model, stable = make_model(source, (28, 28), 10)\n"
              "assert stable, 'layer names differ between two calls'\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True,
                          text=True, timeout=600,
                          env={**env, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    return Ran(block, "")  # TF's own import notices: this is not a documented command


def run_page(blocks: list[Block], cwd: Path, env: dict[str, str],
             places: dict[str, Path]) -> list[Ran]:
    """A page's blocks in order, in one directory (a later block reads what an earlier one
    made); none may print a third-party notice."""
    ran = [run_python(b, cwd, env) if b.lang in PYTHON_LANGS else run_shell(b, cwd, env, places)
           for b in blocks]
    leaks = {r.block.name: third_party_notices(r.output) for r in ran}
    assert not any(leaks.values()), f"third-party notices on the console: {leaks}"
    return ran


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


def page_blocks(path: Path) -> list[Block]:
    """The blocks of a page this file runs, in page order."""
    return [b for b in blocks_of(path) if b.lang in SHELL_LANGS | PYTHON_LANGS
            and b.not_run is None and runnable(b)]


RUN_PAGES = [path for path in doc_files() if page_blocks(path)]
# predict's `--board k1` needs a k1 in the inventory; only that page gets one (with it in
# every page's inventory, a page's `doit` would bench the stand-in board too).
PAGE_ENV = {"predict.md": {"PIPELINE_BOARDS": "board/with_k1.toml"}}


def record_nights(artifacts: Path, nights: int) -> None:
    """The smoke build's own figures recorded as `nights` completed runs, the way the
    nightly records one (pipeline/nightly/history.py): what the history readers read. (A
    real nightly rebuilds everything in its own run directory, minutes; test_nightly.py
    runs it.)"""
    from pipeline.core.layout import Layout
    from pipeline.nightly import history

    builds = sorted(p.name for p in (artifacts / "models").iterdir() if p.is_dir())
    accuracy = history.read_accuracy(artifacts, builds)
    boards, latency = history.read_latency(artifacts, ["local"])
    assert accuracy and latency, f"the smoke build in {artifacts} has no figures to record"
    db = history.connect(Layout(artifacts).history_db())
    for night in range(1, nights + 1):
        started = f"2026-12-{night:02d}T02:00:00Z"
        run_id = history.start_run(db, started, "0" * 40, False, "smoke", str(artifacts))
        history.finish_run(db, run_id, "ok", f"2026-12-{night:02d}T02:05:00Z", 300.0,
                           accuracy, boards, latency)
    db.close()


def write_pictures(dataset_npz: Path, where: Path) -> None:
    """predict.md's `my_digit.png` and `photo.jpg`: two test digits, dark on light, the
    second larger and as a JPEG."""
    import numpy as np
    from PIL import Image

    with np.load(dataset_npz) as arrays:
        digits = arrays["x_test"][:2]
    Image.fromarray(255 - digits[0]).save(where / "my_digit.png")
    Image.fromarray(255 - digits[1]).resize((140, 140)).convert("RGB").save(
        where / "photo.jpg", quality=90)


@pytest.fixture(scope="module")
def docs_project(smoke_project, tmp_path_factory, mnist_dir):
    """A copy of the smoke build where the pages' blocks run: benchmarks/ beside it, two
    nights in its history, the pictures predict.md names, an inventory with the stand-in
    k1, `/data/mnist` a directory of the MNIST archives, and the stand-in `ssh` on PATH."""
    work = tmp_path_factory.mktemp("docs")
    project = work / "project"
    shutil.copytree(smoke_project, project, symlinks=True)
    (project / "benchmarks").symlink_to(ROOT / "benchmarks")
    record_nights(project / "artifacts", 2)
    write_pictures(project / "artifacts" / "data" / "mnist" / "mnist.npz", project)
    (project / "board" / "with_k1.toml").write_text(
        (project / "board" / "boards.toml").read_text()
        + f'\n[[boards]]\nname = "k1"\nhost = "k1"\npython = "{sys.executable}"\n'
        'remote_dir = "tflite-bench"\n')
    (work / "data").mkdir()
    (work / "data" / "mnist").symlink_to(mnist_dir)
    (work / "tmp").mkdir()
    places = {"/data": work / "data", "/tmp": work / "tmp"}
    env = clean_env(PIPELINE_PARAMS="params/smoke.toml", PIPELINE_OFFLINE="1",
                    **stand_in_board(work))
    return project, env, places


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_page_blocks_run(page: Path, docs_project):
    """Every block of the page not marked not-run runs, in order, against the smoke build."""
    project, env, places = docs_project
    if shutil.which("sqlite3") is None:
        pytest.fail("sqlite3 is not installed (a test prerequisite; .ci/run installs it)")
    run_page(page_blocks(page), project, {**env, **PAGE_ENV.get(page.name, {})}, places)


def marked_blocks(marker: re.Pattern) -> list[tuple[Block, str]]:
    """(block, what the marker names) for every block right after a `marker` comment."""
    found = []
    for path in doc_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for block in blocks_of(path):
            match = marker.search(lines[block.line - 2]) if block.line > 1 else None
            if match:
                found.append((block, match.group(1)))
    return found


def quoted_blocks() -> list[tuple[Block, str]]:
    """(block, the smoke build's file it quotes) for every block after a quoted-from marker."""
    return marked_blocks(QUOTED_FROM)


def test_quoted_output_is_what_the_smoke_build_writes(docs_project):
    """A row shown in the docs is a row of the file the smoke build writes (seeded and
    deterministic), never a hand copy that drifts from it."""
    project, _env, _places = docs_project
    quoted = quoted_blocks()
    assert {b.path.name for b, _ in quoted} >= {"README.md", "index.md"}
    for block, name in quoted:
        written = set((project / name).read_text(encoding="utf-8").splitlines())
        stale = [line for line in block.code.splitlines() if line not in written]
        assert not stale, f"{block.name} quotes lines {name} does not have: {stale}"


def output_blocks() -> list[tuple[Block, str]]:
    """(block, the command whose output it shows) for every block after an output-of marker."""
    return marked_blocks(OUTPUT_OF)


def test_shown_output_is_what_the_command_prints(docs_project):
    """An example output (predict.md's table) is what its command prints on the smoke build,
    columns and figures: it cannot go stale when a variant or a column is added."""
    project, env, places = docs_project
    shown = output_blocks()
    assert {b.path.name for b, _ in shown} >= {"predict.md"}
    for block, command in shown:
        done = subprocess.run(["bash", "-c", example_paths(command, places)], cwd=project,
                              env={**env, **PAGE_ENV.get(block.path.name, {})},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{block.name}: `{command}` failed: {done.stderr[-2000:]}"
        # Line ends compared without trailing blanks (tabulate pads them; editors strip them).
        printed = [line.rstrip() for line in done.stdout.rstrip("\n").splitlines()]
        assert printed == [line.rstrip() for line in block.code.rstrip("\n").splitlines()], (
            f"{block.name} shows other output than `{command}` prints:\n{done.stdout}")


def test_the_ink_limits_predict_md_quotes_are_mnists(docs_project):
    """predict.md's example note gives the least and most ink of MNIST's test digits: the
    mean pixel / 255 of each of the 10,000 images, computed here with numpy."""
    import numpy as np

    project, _env, _places = docs_project
    with np.load(project / "artifacts" / "data" / "mnist" / "mnist.npz") as arrays:
        test = arrays["x_test"].astype(np.float64)
    assert len(test) == 10_000
    ink = test.reshape(len(test), -1).sum(axis=1) / (784 * 255)
    limits = f"mnist test digits {100 * ink.min():.1f}-{100 * ink.max():.1f} %"
    assert limits in (ROOT / "docs" / "predict.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("block", [b for path in doc_files() for b in blocks_of(path)
                                   if b.lang == "toml"], ids=lambda block: block.name)
def test_toml_blocks_parse(block: Block):
    tomllib.loads(block.code)


def test_stand_in_ssh_catches_the_quoting_that_fails_on_a_board(tmp_path):
    """The provider check as board/README.md once had it: ssh joins the words, and the
    board's shell sees an unquoted `(`."""
    env = {**clean_env(), **stand_in_board(tmp_path)}
    broken = Block(ROOT / "x.md", 1, "sh", "ssh k1 python3 -c "
                   "'import onnxruntime; print(onnxruntime.get_available_providers())'", None)
    with pytest.raises(AssertionError, match="Syntax error|syntax error"):
        run_shell(broken, tmp_path, env, {})
    fixed = dataclasses.replace(broken, code="ssh -o BatchMode=yes k1 'python3 -c "
                                "\"import onnxruntime; print(1)\"' && ssh k1 pwd")
    assert run_shell(fixed, tmp_path, env, {}).output.strip() == str(tmp_path / "board-home")


def test_a_stale_option_fails_its_block(tmp_path):
    stale = Block(ROOT / "x.md", 1, "sh", "python -m pipeline.history --lastt 3", None)
    with pytest.raises(AssertionError, match="unrecognized arguments: --lastt"):
        run_shell(stale, ROOT, clean_env(), {})


def test_example_paths_are_replaced_once():
    """A real path under /tmp (where pytest works) is not itself taken for an example path."""
    places = {"/data": Path("/tmp/w/data"), "/tmp": Path("/tmp/w/tmp")}
    assert example_paths("x /tmp/mnist --mirror /data/mnist", places) == \
        "x /tmp/w/tmp/mnist --mirror /tmp/w/data/mnist"


def test_example_paths_and_notices_are_found():
    places = {"/data": Path("/w/data"), "/tmp": Path("/w/tmp")}
    assert example_paths("PIPELINE_MIRROR=/data/mnist doit\nx /tmp/mnist --m /data\n"
                         "/database /x/data", places) \
        == "PIPELINE_MIRROR=/w/data/mnist doit\nx /w/tmp/mnist --m /w/data\n/database /x/data"
    output = ("bench:local ok\nINFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
              "I0000 00:00:1733480000.1 123 cpu_feature_guard.cc:210] x\n"
              "2026-12-06 oneDNN custom operations are on. To turn them off ...\n")
    assert len(third_party_notices(output)) == 3


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


def test_development_md_shows_the_readme_test_command():
    """docs/development.md says its test command is the README's (which CI runs): it is."""
    readme = next(b for b in blocks_of(ROOT / "README.md")
                  if b.not_run is not None and "CI" in b.not_run)
    development = blocks_of(ROOT / "docs" / "development.md")[0]
    assert development.code.strip() == readme.code.strip()
