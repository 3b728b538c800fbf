"""benchmarks/bench_predict.py: its console carries the benchmark's lines only, and its page
what it printed."""

import os
import subprocess
import sys

from tests.conftest import REPO, third_party_notices


def test_no_third_party_notice_on_the_benchmarks_console_and_the_page_is_what_it_printed(
        smoke_project, tmp_path):
    """LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." was printed from C++
    when the benchmark opened its first model (it did not quiet third-party output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    proc = subprocess.run([sys.executable, "benchmarks/bench_predict.py", "--artifacts",
                           str(smoke_project / "artifacts"), "--digits", "2",
                           "--timed-images", "2", "--cli-repeats", "0",
                           "--out", str(tmp_path / "page.md")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert third_party_notices(proc.stdout + proc.stderr) == []
    # The run went through every family and timed the images (the notice came with those).
    assert "all issue families" in proc.stdout
    assert "per image, one process (2 images" in proc.stdout
    # The page (docs/measured/predict_photos.md by default) holds exactly what was printed.
    page = (tmp_path / "page.md").read_text()
    printed = proc.stdout.split(f"{tmp_path / 'page.md'}: written")[0]
    assert f"```text\n{printed}```\n" in page
    assert "--digits 2 --seed 15 --timed-images 2 --cli-repeats 0" in page
    assert "(1 epoch(s) on 3000 training images)" in page  # the smoke preset's
