"""How dodo.py runs a stage (every task's action is `guarded(stage_function, *args)`).

A PipelineError fails the task with its message instead of a traceback, a full disk outside
pipeline.core.files' writers fails it in one line, and Ctrl-C ends the build with one line
and the shell's status for SIGINT. A module of its own, imported when a task runs: loading
dodo.py (every `doit`, a no-op too) does not compile it.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from typing import Any, Callable

from doit.exceptions import TaskFailed

from pipeline import PipelineError
from pipeline.core.console import quiet_absl


def guarded(fn: Callable[..., Any], *args: Any) -> TaskFailed | None:
    """Run a stage; a PipelineError fails the task with its message instead of a traceback,
    and Ctrl-C ends the build with one line (every stage writes through a temporary name, so
    an interrupted write leaves nothing behind) and the shell's status for SIGINT."""
    interrupted: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    # Our own handler remembers the Ctrl-C: a library that catches KeyboardInterrupt and
    # raises something else (TensorFlow's tracing can) must not turn it into a traceback.
    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    # Inside an action sys.stderr is doit's capture object; absl must bind the real one.
    quiet_absl(sys.__stderr__)
    try:
        fn(*args)
    except PipelineError as exc:
        if not interrupted:
            return TaskFailed(str(exc))
    except OSError as exc:
        # A full disk outside pipeline.core.files' writers (TensorBoard logs, a library's own
        # temporary file): one line, not a traceback.
        if interrupted or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        return TaskFailed(f"no space left on the device writing {exc.filename or 'a file'}: "
                          "free some space and rerun")
    except BaseException:
        if not interrupted:
            raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        print("interrupted; nothing partial was kept", file=sys.stderr)
        raise SystemExit(130)
    return None


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
