"""benchmarks/bench_build.py runs after the README's plain install, which has no pytest."""

import subprocess
import sys

from tests.conftest import REPO

# Run the script with pytest (and the test suite's conftest) made unimportable.
SCRIPT = REPO / "benchmarks" / "bench_build.py"
WITHOUT_PYTEST = ("import runpy, sys; sys.modules['pytest'] = None; "
                  f"sys.argv = [{str(SCRIPT)!r}, '--help']; "
                  f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")


def test_bench_build_needs_no_pytest():
    proc = subprocess.run([sys.executable, "-c", WITHOUT_PYTEST], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--only {noop,builds}" in proc.stdout
    assert "No module named" not in proc.stderr
