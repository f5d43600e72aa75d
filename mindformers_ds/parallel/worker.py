"""The script msrun starts in each worker: runs the `mfds` command line given after it, and
leaves `rank_R.pid` / `rank_R.done` (exit status) in $MFDS_STATUS_DIR for the launcher."""
import os
import sys


def main() -> int:
    status = os.environ.get("MFDS_STATUS_DIR")
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        status = None  # msrun's scheduler runs this script too; it has no rank of its own
    rank = os.environ.get("RANK_ID", "0")
    if status:
        with open(os.path.join(status, f"rank_{rank}.pid"), "w") as f:
            f.write(str(os.getpid()))
    code = 1
    try:
        from mindformers_ds.cli import main as cli_main
        code = cli_main(sys.argv[1:])
    finally:
        if status:
            with open(os.path.join(status, f"rank_{rank}.done"), "w") as f:
                f.write(str(code))
    return code


if __name__ == "__main__":
    sys.exit(main())
