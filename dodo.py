"""The TFLite pipeline's build graph: download, preprocess, train, convert, evaluate, analysis,
layers, card, bench (declared in pipeline/graph/tasks.py).

Run `doit` for the whole build, `doit list` for the tasks. Environment:
PIPELINE_PARAMS (params file, default params.toml), PIPELINE_SET (a one-off override,
"train.epochs=1;convert.onnx=false", see pipeline/core/params.py), PIPELINE_ARTIFACTS
(artifact tree and doit's database, default artifacts/), PIPELINE_MIRROR (dataset mirror
tried first; a directory with <dataset>/ subfolders serves each dataset from its own),
PIPELINE_MIRROR_<DATASET> (one dataset's mirror, e.g. PIPELINE_MIRROR_FASHION_MNIST),
PIPELINE_OFFLINE=1 (never try the public mirrors), PIPELINE_BOARDS (board inventory, default
board/boards.toml), PIPELINE_VERBOSE=1 (show TensorFlow/Keras/absl logs, hidden by default),
PIPELINE_EVENTS (a file that also gets each task event as a JSON line,
pipeline/core/events.py).

Every `doit` call loads this file; when nothing the tasks were declared from has changed,
they come from the graph cached as data (pipeline/graph/cache.py) without declaring them.
"""

import os

from pipeline.graph.cache import load_graph

globals().update(load_graph(os.environ))  # DOIT_CONFIG and the task_* creators, in order
# PIPELINE_EVENTS=<file>: each task event also goes to the file as a JSON line (the nightly
# follows doit through it, not through the console text; pipeline/core/events.py). The name
# is pipeline.core.events.EVENTS_ENV (tests/test_dodo.py checks), spelled here so that a
# plain `doit` does not compile that module.
if os.environ.get("PIPELINE_EVENTS"):
    from pathlib import Path

    from pipeline.core.events import EVENTS_ENV, reporter_writing

    # DOIT_CONFIG is bound by load_graph's namespace above.
    DOIT_CONFIG = {**DOIT_CONFIG,  # noqa: F821
                   "reporter": reporter_writing(Path(os.environ[EVENTS_ENV]))}
