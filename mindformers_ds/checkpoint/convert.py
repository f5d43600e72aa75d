"""`python -m mindformers_ds.checkpoint.convert ...`: `mfds convert` as a module of its own, and the
converter's public functions (the engine is checkpoint/conversion.py; keeping the entry point
apart means neither the CLI nor the engine imports the other's module)."""
from __future__ import annotations

from .conversion import hf_to_ms, ms_to_hf, plan_hf_to_ms, plan_ms_to_hf, read_config  # noqa: F401

if __name__ == "__main__":
    import sys
    from ..cli import main
    sys.exit(main(["convert"] + sys.argv[1:]))
