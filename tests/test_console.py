"""Third-party output is hidden by default and shown with PIPELINE_VERBOSE=1; a failure inside
a hidden block still shows what was hidden. Run in subprocesses: the module sets process state
(environment, warning filters, file descriptors)."""

import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import os, sys, warnings
from pipeline.core.console import native_output_hidden, quiet_third_party, verbose_requested
quiet_third_party(verbose_requested(os.environ))
print("pipeline line", flush=True)
with native_output_hidden():
    os.write(2, b"native chatter on fd 2\\n")
    os.write(1, b"native chatter on fd 1\\n")
    print("python chatter")
    warnings.warn("Statistics for quantized inputs were expected, but not specified", UserWarning)
print("tf log level", os.environ.get("TF_CPP_MIN_LOG_LEVEL"), flush=True)
if sys.argv[1:] == ["fail"]:
    with native_output_hidden():
        os.write(2, b"converter: the reason it failed\\n")
        raise SystemExit("error: conversion failed")
if sys.argv[1:] == ["ctrl-c"]:
    try:
        with native_output_hidden():
            os.write(2, b"oneDNN custom operations are on\\n")
            print("absl: WARNING: All log messages before absl::InitializeLog()")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        print("interrupted; nothing partial was kept", file=sys.stderr)
"""


def run(*args, verbose=None):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    if verbose is not None:
        env["PIPELINE_VERBOSE"] = verbose
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_default_hides_native_and_python_chatter():
    proc = run()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "pipeline line\ntf log level 3\n"
    assert proc.stderr == ""


def test_verbose_shows_everything():
    proc = run(verbose="1")
    assert "native chatter on fd 1" in proc.stdout and "python chatter" in proc.stdout
    assert "native chatter on fd 2" in proc.stderr and "Statistics for quantized" in proc.stderr
    assert "tf log level None" in proc.stdout


def test_a_failure_shows_what_was_hidden():
    proc = run("fail")
    assert proc.returncode == 1
    assert proc.stderr == "converter: the reason it failed\nerror: conversion failed\n"


def test_ctrl_c_keeps_the_hidden_notices_hidden():
    proc = run("ctrl-c")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "interrupted; nothing partial was kept\n"
    assert proc.stdout == "pipeline line\ntf log level 3\n"
