"""Ctrl-C (and SIGTERM) as KeyboardInterrupt around the training loop."""
from __future__ import annotations

import contextlib
import signal
import threading


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible():
    """Ctrl-C as KeyboardInterrupt during the loop. While a graph runs, MindSpore's runtime
    handles SIGINT itself by ending the process with SIGTERM (measured: exit status -15, nothing
    said), so SIGTERM is turned into the same interruption here; both handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
