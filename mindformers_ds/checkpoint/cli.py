"""`mfds convert ...`: the parser and the dispatch (`python -m mindformers_ds.checkpoint.convert` too)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def add_convert_parser(sub, formatter=argparse.ArgumentDefaultsHelpFormatter) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", help="convert / split / merge / verify checkpoints", formatter_class=formatter,
                       description="HuggingFace <-> MindSpore checkpoint conversion")
    csub = p.add_subparsers(dest="convert_cmd", required=True, metavar="{hf-to-ms,ms-to-hf,verify,split,merge}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                        help="output float dtype (default: keep; FP8/FP4 sources become bf16)")
    common.add_argument("--max-shard-size", default="5GB", help="largest output shard (e.g. 5GB, 500MB)")
    common.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    overwrite = argparse.ArgumentParser(add_help=False)
    overwrite.add_argument("--overwrite", action="store_true",
                           help="replace a non-empty destination (written beside it, then swapped in)")
    h = csub.add_parser("hf-to-ms", parents=[common, overwrite], formatter_class=formatter,
                        help="HF directory -> MindSpore checkpoint")
    h.add_argument("src", help="HF directory (config.json + safetensors or .bin; FP8/FP4 releases included)")
    h.add_argument("dst", help="output directory (absent or empty unless --overwrite)")
    h.add_argument("--format", choices=["safetensors", "ckpt"], default="safetensors", help="output file format")
    m = csub.add_parser("ms-to-hf", parents=[common, overwrite], formatter_class=formatter,
                        help="MindSpore checkpoint -> HF directory")
    m.add_argument("src", help="a checkpoint of this stack (converted or a training step directory)")
    m.add_argument("dst", help="output directory (absent or empty unless --overwrite)")
    m.add_argument("--format", choices=["safetensors", "bin"], default="safetensors", help="output file format")
    m.add_argument("--fp8", action="store_true", help="re-quantise linears to FP8 e4m3 128x128 blocks")
    v = csub.add_parser("verify", formatter_class=formatter, help="compare two checkpoints; exit 1 on mismatch")
    v.add_argument("a", help="first checkpoint directory")
    v.add_argument("b", help="second checkpoint directory (the reference for relative differences)")
    v.add_argument("--atol", type=float, default=0.0, help="absolute tolerance")
    v.add_argument("--rtol", type=float, default=0.0, help="relative tolerance")
    s = csub.add_parser("split", parents=[overwrite], formatter_class=formatter,
                        help="full checkpoint -> per-rank shards of a parallel layout")
    s.add_argument("src", help="a full (or differently sharded) checkpoint")
    s.add_argument("dst", help="output directory for rank_N/ shards")
    s.add_argument("--config", required=True, help="run YAML whose parallel section gives the layout")
    s.add_argument("--set", action="append", default=[], metavar="A.B=V", help="override a config field")
    g = csub.add_parser("merge", parents=[overwrite], formatter_class=formatter,
                        help="per-rank shards -> full checkpoint")
    g.add_argument("src", help="a sharded checkpoint (holding layout.json)")
    g.add_argument("dst", help="output directory")
    p.set_defaults(fn=run_convert)
    return p


def _conversion_line(cmd: str, dst: str, r: dict) -> str:
    return (f"{cmd}: wrote {r['tensors']} tensors ({r['bytes'] / 1e6:,.1f} MB) in {r['shards']} "
            f"file{'s' if r['shards'] != 1 else ''} to {dst}")


def run_convert(a) -> int:
    from . import conversion as convert
    if a.convert_cmd == "hf-to-ms":
        r = convert.hf_to_ms(a.src, a.dst, a.dtype, a.format, a.max_shard_size, a.workers, not a.no_progress,
                             a.overwrite)
    elif a.convert_cmd == "ms-to-hf":
        r = convert.ms_to_hf(a.src, a.dst, a.dtype, a.format, a.fp8, a.max_shard_size, a.workers, not a.no_progress,
                             a.overwrite)
    elif a.convert_cmd == "verify":
        from .verify import verify
        ok, lines = verify(a.a, a.b, a.atol, a.rtol)
        print("\n".join(lines))
        return 0 if ok else 1
    elif a.convert_cmd == "split":
        from .. import config
        from ..parallel.executors import executor_for
        cfg = config.load(a.config, a.set)
        print(f"split: {executor_for(cfg.parallel).split_checkpoint(a.src, a.dst, cfg, a.overwrite)}")
        return 0
    else:
        from ..parallel.shards import merge_checkpoint
        # a merge needs no executor or layout: the shards' layout.json says how to reassemble them
        print(f"merge: {merge_checkpoint(a.src, a.dst, a.overwrite)}")
        return 0
    for note in r.get("notes", []):
        print(f"note: {note}")
    print(_conversion_line(a.convert_cmd, a.dst, r))
    return 0
