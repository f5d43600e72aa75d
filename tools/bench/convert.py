"""Conversion throughput and memory against a plain read of the same files.

    python tools/bench/convert.py [--gb 2.5] [--workdir /tmp/mfds_convert_bench] [--rounds 2]

Writes a release-layout DeepSeek-V3-shaped checkpoint of about `--gb` GB (bf16, one shard per
layer), then alternates, in one invocation: a plain sequential read of every shard (8 MiB
chunks), and `hf-to-ms` in a fresh process (peak RSS from getrusage). The page cache is dropped
before each (when permitted), so both read from disk; the conversion also writes every byte
and fsyncs it (a durable output is part of the job). Prints conversion
throughput as a ratio of read throughput (target >= 0.5) and peak RSS as a ratio of the largest
layer (target <= 2, plus the interpreter's own footprint, which is printed too).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tools.bench.machine import describe_cpu  # noqa: E402


def make_checkpoint(path: str, gb: float) -> None:
    from mindformers_ds.config import model_config_from_dict
    from mindformers_ds.checkpoint.synthetic import write_release
    layers = max(2, round(gb / 0.42))   # ~0.42 GB per MoE layer below
    cfg = model_config_from_dict(dict(
        model_type="deepseek_v3", vocab_size=32000, hidden_size=2048, intermediate_size=5632,
        moe_intermediate_size=1024, num_hidden_layers=layers, num_attention_heads=16, q_lora_rank=512,
        kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=32,
        n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2, first_k_dense_replace=1,
        num_nextn_predict_layers=1, max_position_embeddings=4096))
    write_release(path, cfg, fp8=False, dtype="BF16", layers_per_shard=1)


def shards(path: str):
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))


def drop_caches() -> bool:
    """Cold reads for both sides of the comparison (needs root; otherwise both are warm)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def plain_read(path: str) -> float:
    t0 = time.perf_counter()
    for f in shards(path):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(8 << 20):
                pass
    return time.perf_counter() - t0


def durable_copy(src: str, dst: str) -> float:
    """Read every shard and write it back with fsync: the ceiling for any durable conversion."""
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    t0 = time.perf_counter()
    for f in shards(src):
        out = os.path.join(dst, os.path.basename(f))
        with open(f, "rb", buffering=0) as fi, open(out, "wb", buffering=0) as fo:
            while True:
                chunk = fi.read(8 << 20)
                if not chunk:
                    break
                fo.write(chunk)
            os.fsync(fo.fileno())
    secs = time.perf_counter() - t0
    shutil.rmtree(dst, ignore_errors=True)
    return secs


def convert(src: str, dst: str, workers: int = 1) -> tuple:
    shutil.rmtree(dst, ignore_errors=True)
    # VmHWM, not ru_maxrss: the latter survives fork+exec and would report this parent's peak
    code = ("import sys, time; from mindformers_ds.checkpoint import convert; t=time.perf_counter(); "
            "convert.hf_to_ms(sys.argv[1], sys.argv[2], bar=False, workers=int(sys.argv[3])); "
            "print(time.perf_counter()-t, [int(l.split()[1]) * 1024 for l in open('/proc/self/status') "
            "if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code, src, dst, str(workers)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    secs, rss = out.stdout.split()[-2:]
    return float(secs), int(rss)


def baseline_rss() -> int:
    code = ("from mindformers_ds.checkpoint import convert; "
            "print([int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    return int(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.split()[-1])


def largest_layer(path: str) -> int:
    from mindformers_ds.checkpoint.reader import CheckpointReader
    r = CheckpointReader(path)
    sizes = {}
    for n in r.names():
        m = re.match(r"model\.layers\.(\d+)\.", n)
        sizes[m.group(1) if m else n] = sizes.get(m.group(1) if m else n, 0) + r.nbytes(n)
    return max(sizes.values())


def main() -> None:
    print(describe_cpu(), flush=True)   # every figure names its machine
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.5)
    ap.add_argument("--workdir", default="/tmp/mfds_convert_bench")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    src, dst = os.path.join(a.workdir, "hf"), os.path.join(a.workdir, "ms")
    if not os.path.isfile(os.path.join(src, "model.safetensors.index.json")):
        t0 = time.perf_counter()
        make_checkpoint(src, a.gb)
        print(f"wrote the test checkpoint in {time.perf_counter() - t0:.0f} s")
    total = sum(os.path.getsize(f) for f in shards(src))
    layer = largest_layer(src)
    print(f"checkpoint: {total / 1e9:.2f} GB in {len(shards(src))} shards; largest layer {layer / 1e6:.0f} MB")
    reads, copies, convs, convs2, rss = [], [], [], [], []
    for r in range(a.rounds):   # alternate, so all see the same machine state
        drop_caches()
        reads.append(plain_read(src))
        drop_caches()
        copies.append(durable_copy(src, dst))
        drop_caches()
        secs, peak = convert(src, dst)
        convs.append(secs)
        rss.append(peak)
        drop_caches()
        convs2.append(convert(src, dst, workers=2)[0])
        mbs = lambda t: f"{total / t / 1e6:.0f} MB/s"
        print(f"round {r + 1}: read {mbs(reads[-1])}, durable copy {mbs(copies[-1])}, convert {mbs(convs[-1])} "
              f"(2 workers {mbs(convs2[-1])}), peak RSS {peak / 1e6:.0f} MB")
    base = baseline_rss()
    med = statistics.median
    read_tp, copy_tp = total / med(reads), total / med(copies)
    conv_tp, conv2_tp = total / med(convs), total / med(convs2)
    peak = max(rss)
    print(f"\nconversion throughput / plain read: {conv_tp / read_tp:.2f} (2 workers {conv2_tp / read_tp:.2f}); "
          f"target >= 0.5")
    print(f"conversion throughput / durable copy of the same bytes: {conv_tp / copy_tp:.2f} "
          f"(2 workers {conv2_tp / copy_tp:.2f}); the copy is the ceiling for any conversion that fsyncs its output")
    print(f"peak RSS / largest layer: {peak / layer:.2f}  (interpreter + numpy alone: {base / 1e6:.0f} MB; "
          f"(peak - that) / largest layer: {(peak - base) / layer:.2f}, target <= 2)")
    if not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
