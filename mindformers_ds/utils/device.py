"""The device this process runs on: `MFDS_DEVICE` (set by a launcher or the user), else CPU."""
from __future__ import annotations

import os


def device_target() -> str:
    return os.environ.get("MFDS_DEVICE") or "CPU"
