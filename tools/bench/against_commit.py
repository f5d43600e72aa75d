"""A training step of this tree against the same step at another commit, in one invocation.

    python tools/bench/against_commit.py --commit REV [--rounds 2] -- --config X.yaml [--set k=v ...]

Checks REV out into a temporary git worktree and runs `python -m mindformers_ds.observe.measure`
(a fresh process each time: tokens/s, first step, peak RSS) alternately from this tree and from
REV, `--rounds` times each, so the machine's drift hits both; prints each run and the ratios of
the medians (this tree / REV). A structural change that should change nothing shows ~1.00.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tools.bench.machine import describe_cpu  # noqa: E402
KEYS = ("tokens_per_sec", "first_step_s", "peak_rss_mb")


def run(tree: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, "-m", "mindformers_ds.observe.measure", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    print(describe_cpu(), flush=True)   # every figure names its machine
    ap = argparse.ArgumentParser()
    ap.add_argument("--commit", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("measure_args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = [x for x in a.measure_args if x != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "-q", "--detach", base, a.commit], check=True)
        try:
            results = {"this tree": [], a.commit: []}
            for _ in range(a.rounds):
                for name, tree in (("this tree", ROOT), (a.commit, base)):
                    r = run(tree, args)
                    results[name].append(r)
                    print(name, {k: r.get(k) for k in KEYS}, flush=True)
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base], check=False)
    for k in KEYS:
        mine = statistics.median(r[k] for r in results["this tree"])
        theirs = statistics.median(r[k] for r in results[a.commit])
        print(f"{k}: this tree {mine:.4g} / {a.commit} {theirs:.4g} = {mine / theirs:.3f}")


if __name__ == "__main__":
    main()
