"""Run logging: a log file in the run directory, console output that does not break tqdm bars,
and an append-only `metrics.jsonl` (one JSON object per line, flushed per record)."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, Optional

from tqdm import tqdm


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record))
        except Exception:  # pragma: no cover - never let logging kill a run
            self.handleError(record)


def setup_logging(log_file: Optional[str], level: str = "INFO", console: bool = True) -> logging.Logger:
    root = logging.getLogger("mindformers_ds")
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    if console:
        ch = _TqdmHandler()
        ch.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(ch)
    root.propagate = False
    return root


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return _clean(v.item())
    if hasattr(v, "tolist"):
        return _clean(v.tolist())
    return v


class MetricsWriter:
    def __init__(self, path: str, keep_until_step: Optional[int] = None):
        """Open `path` for appending; when resuming, records after `keep_until_step` (written by
        the interrupted run after its last checkpoint) are dropped first."""
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if keep_until_step is not None and os.path.isfile(path):
            kept = []
            with open(path, "r", encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line from a killed run
                    if rec.get("step", 0) <= keep_until_step:
                        kept.append(line if line.endswith("\n") else line + "\n")
            from .io import atomic_write_text
            atomic_write_text(path, "".join(kept))
        elif keep_until_step is None and os.path.isfile(path):
            os.unlink(path)
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: Dict[str, Any]) -> None:
        self._f.write(json.dumps(_clean(record)) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str):
    out = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out
