"""`mfds convert ...` (also `python -m mindformers_ds.checkpoint.convert ...`)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def add_convert_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", help="convert / split / merge / verify checkpoints",
                       description="HuggingFace <-> MindSpore checkpoint conversion")
    csub = p.add_subparsers(dest="convert_cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                        help="output float dtype (default: keep; FP8 sources become bf16)")
    common.add_argument("--max-shard-size", default="5GB")
    common.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    common.add_argument("--no-progress", action="store_true")
    h = csub.add_parser("hf-to-ms", parents=[common], help="HF directory -> MindSpore checkpoint")
    h.add_argument("src")
    h.add_argument("dst")
    h.add_argument("--format", choices=["safetensors", "ckpt"], default="safetensors")
    m = csub.add_parser("ms-to-hf", parents=[common], help="MindSpore checkpoint -> HF directory")
    m.add_argument("src")
    m.add_argument("dst")
    m.add_argument("--format", choices=["safetensors", "bin"], default="safetensors")
    m.add_argument("--fp8", action="store_true", help="re-quantise linears to FP8 e4m3 128x128 blocks")
    v = csub.add_parser("verify", help="compare two checkpoints; exit 1 on mismatch")
    v.add_argument("a")
    v.add_argument("b")
    v.add_argument("--atol", type=float, default=0.0)
    v.add_argument("--rtol", type=float, default=0.0)
    s = csub.add_parser("split", help="full checkpoint -> per-rank shards of a parallel layout")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--config", required=True, help="run YAML whose parallel section gives the layout")
    s.add_argument("--set", action="append", default=[], metavar="A.B=V")
    g = csub.add_parser("merge", help="per-rank shards -> full checkpoint")
    g.add_argument("src")
    g.add_argument("dst")
    p.set_defaults(fn=run_convert)
    return p


def run_convert(a) -> int:
    from . import convert
    if a.convert_cmd == "hf-to-ms":
        r = convert.hf_to_ms(a.src, a.dst, a.dtype, a.format, a.max_shard_size, a.workers, not a.no_progress)
    elif a.convert_cmd == "ms-to-hf":
        r = convert.ms_to_hf(a.src, a.dst, a.dtype, a.format, a.fp8, a.max_shard_size, a.workers, not a.no_progress)
    elif a.convert_cmd == "verify":
        from .verify import verify
        ok, lines = verify(a.a, a.b, a.atol, a.rtol)
        print("\n".join(lines))
        return 0 if ok else 1
    elif a.convert_cmd == "split":
        from .. import config
        from ..parallel.shards import split_checkpoint
        cfg = config.load(a.config, a.set)
        r = split_checkpoint(a.src, a.dst, cfg)
    else:
        from ..parallel.shards import merge_checkpoint
        r = merge_checkpoint(a.src, a.dst)
    print(f"{a.convert_cmd}: {r}")
    return 0


def convert_main(argv: Optional[List[str]] = None) -> int:
    from ..cli import main
    return main(["convert"] + list(argv if argv is not None else sys.argv[1:]))
