"""HuggingFace <-> MindSpore checkpoint conversion, streamed tensor by tensor.

    mfds convert hf-to-ms SRC DST [--dtype bf16|fp16|fp32] [--format safetensors|ckpt]
    mfds convert ms-to-hf SRC DST [--dtype ...] [--format safetensors|bin] [--fp8]
    mfds convert verify A B [--atol X --rtol Y]
    mfds convert split / merge   (distributed shards; see parallel/shards.py)
(also `python -m mindformers_ds.checkpoint.convert ...`: convert.py is that entry point; the
engine is here, so the CLI modules and this one never import each other)

A conversion is planned from the headers alone: every output tensor is (name, dtype, shape)
plus the list of *pieces* that produce its bytes, e.g. a stacked `experts.gate_up_proj` is
[gate_0, up_0, gate_1, up_1, ...], each read (and FP8-dequantised, cast) only when written.
So memory holds one source tensor at a time, never a layer's stacked experts or a shard.
The output goes to a work directory beside DST that replaces DST when complete
(checkpoint/destination.py: a non-empty DST needs --overwrite); shards are written to temp
files and renamed, the index last (checkpoint/shard_writer.py); a shard already in the work
directory with the planned header is kept, so an interrupted conversion resumes where it
stopped. Tensors whose dtype does not change are copied byte for byte: hf -> ms -> hf is
bit-exact. A transformers-saved model (no MTP weights, config saying one MTP layer) converts to
a model without MTP, with one line saying so.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from typing import Dict, List, Optional, Tuple

from ..models.deepseek.config import DeepseekConfig
from ..models.deepseek.shapes import parameter_specs
from ..utils.io import atomic_write_json, read_json
from .destination import begin, check_destination, commit
from .mapping import has_mtp_weights, ordered_names
from .names import SCALE_SUFFIX, STACKED_RE, expert_key, is_mtp_passthrough, is_release_mtp
from .plan import OutTensor, Piece
from .reader import ST_INDEX, CheckpointReader
from .safetensors_io import CheckpointError
from .shard_writer import copy_side_files, parse_size, write_plan

log = logging.getLogger(__name__)
DTYPE_TAGS = {"bf16": "BF16", "fp16": "F16", "fp32": "F32", None: None}
FLOAT_TAGS = ("F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F64")
SOURCE_INDEX = "source_index.json"   # the HF index an MS checkpoint came from (restores shard names)
# linears DeepSeek's FP8 releases quantise (embeddings, head, norms, router, eh_proj are not)
FP8_LINEAR = re.compile(r"\.(self_attn\.(q_a_proj|q_b_proj|q_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)|"
                        r"mlp\.(shared_experts\.|experts\.\d+\.)?(gate_proj|up_proj|down_proj))\.weight$")


# ---------------------------------------------------------------------------------------
# Plans: what to write, and how to produce each piece
# ---------------------------------------------------------------------------------------
def _out_tag(src_tag: str, name: str, want: Optional[str]) -> str:
    """Output dtype: the source's unless `want` is given (FP8 dequantises to bf16 by default).
    Casting never lowers the router correction bias below float32, as every release keeps it."""
    if name.endswith("e_score_correction_bias") and (want or src_tag.startswith("F8_")):
        return "F32"
    if src_tag not in FLOAT_TAGS:
        return src_tag
    if src_tag.startswith("F8_"):
        return want or "BF16"
    return want or src_tag


def _check_shape(expected: Dict[str, Tuple[int, ...]], where: str, name: str, shape) -> None:
    want = expected.get(name)
    if want is not None and tuple(shape) != tuple(want):
        raise CheckpointError(f"{where}: tensor {name!r} has shape {list(shape)} but config.json implies {list(want)}")


def read_config(path: str) -> Tuple[DeepseekConfig, Dict]:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{path}: no config.json next to the weights")
    raw = read_json(cfg_path, CheckpointError)
    cfg = DeepseekConfig.from_hf_dict(raw, cfg_path)
    problems = cfg.problems()
    if problems:
        raise CheckpointError(f"{cfg_path}: " + problems[0][1].replace("{p}", ""))
    return cfg, raw


def plan_hf_to_ms(reader: CheckpointReader, cfg: DeepseekConfig, dtype: Optional[str]) -> List[OutTensor]:
    expected = {n: s for n, s, _ in parameter_specs(cfg)}
    e, inter, h = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
    n_layers = cfg.num_hidden_layers + cfg.mtp_depth
    plan: List[OutTensor] = []
    done_prefix = set()
    for name in ordered_names(reader.names()):
        where = reader.weight_map[name]
        tag, shape = reader.info(name)
        if is_release_mtp(name):  # V4's MTP block: not in the model, kept byte for byte
            plan.append(OutTensor(name, tag, tuple(shape), [Piece(name)]))
            continue
        if tag.startswith("F8_") and name + SCALE_SUFFIX not in reader:
            raise CheckpointError(f"{where}: FP8 tensor {name!r} has no {name + SCALE_SUFFIX!r}")
        if tag in ("I8", "U8") and name + SCALE_SUFFIX in reader:
            tag = "F8_E4M3"  # FP4 (e2m1) weights dequantise like FP8 ones: to bf16 unless --dtype says otherwise
            shape = tuple(shape[:-1]) + (2 * shape[-1],)  # two values per byte
        k = expert_key(name)
        if k is None:
            if name not in expected and not is_mtp_passthrough(name, cfg.num_hidden_layers):
                raise CheckpointError(f"{where}: tensor {name!r} is not part of a {cfg.model_type} model with this "
                                      f"config.json (layers: {n_layers}; another architecture?)")
            _check_shape(expected, where, name, shape)
            if is_mtp_passthrough(name, cfg.num_hidden_layers):
                _check_shape({name: (cfg.vocab_size, h)}, where, name, shape)
            plan.append(OutTensor(name, _out_tag(tag, name, dtype), tuple(shape), [Piece(name)]))
            continue
        prefix, idx, proj = k
        if idx >= e:
            raise CheckpointError(f"{where}: tensor {name!r} is expert {idx} but config.json has n_routed_experts={e}")
        _check_shape({name: (h, inter) if proj == "down_proj" else (inter, h)}, where, name, shape)
        if prefix in done_prefix:
            continue
        done_prefix.add(prefix)
        pieces_gu, pieces_d = [], []
        for x in range(e):
            for proj_name, bucket in (("gate_proj", pieces_gu), ("up_proj", pieces_gu), ("down_proj", pieces_d)):
                src = f"{prefix}.{x}.{proj_name}.weight"
                if src not in reader:
                    raise CheckpointError(f"{reader.path}: tensor {src!r} is missing (expected {e} experts under {prefix})")
                bucket.append(Piece(src))
        out_tag = _out_tag(tag, name, dtype)
        plan.append(OutTensor(f"{prefix}.gate_up_proj", out_tag, (e, 2 * inter, h), pieces_gu))
        plan.append(OutTensor(f"{prefix}.down_proj", out_tag, (e, h, inter), pieces_d))
    missing = [n for n in expected if n not in {t.name for t in plan}]
    if missing:
        raise CheckpointError(f"{reader.path}: checkpoint lacks tensor {missing[0]!r} ({len(missing)} missing in all)")
    return plan


def plan_ms_to_hf(reader: CheckpointReader, dtype: Optional[str], fp8: bool, v4: bool = False) -> List[OutTensor]:
    """`v4`: names as transformers writes V4 (release names under `model.`), so it loads them back."""
    if v4 and fp8:
        raise CheckpointError(f"{reader.path}: --fp8 re-quantises V3 releases; V4's FP8 + FP4 release format is "
                              f"not written (convert to bf16 instead)")
    plan = _plan_ms_to_hf(reader, dtype, fp8)
    if v4:
        from .v4_names import release_v4_name
        for t in plan:
            t.name = release_v4_name(t.name)
    return plan


def _plan_ms_to_hf(reader: CheckpointReader, dtype: Optional[str], fp8: bool) -> List[OutTensor]:
    plan: List[OutTensor] = []
    for name in reader.names():
        tag, shape = reader.info(name)
        if is_release_mtp(name):
            plan.append(OutTensor(name, tag, tuple(shape), [Piece(name)]))
            continue
        m = STACKED_RE.match(name)
        if not m:
            plan += _maybe_fp8(OutTensor(name, _out_tag(tag, name, dtype), tuple(shape), [Piece(name)]), fp8)
            continue
        out_tag = _out_tag(tag, name, dtype)
        for x in range(shape[0]):
            if m["kind"] == "gate_up_proj":
                inter = shape[1] // 2
                for proj, r0 in (("gate_proj", 0), ("up_proj", inter)):
                    plan += _maybe_fp8(OutTensor(f"{m['prefix']}.{x}.{proj}.weight", out_tag, (inter, shape[2]),
                                                 [Piece(name, x, r0, r0 + inter)]), fp8)
            else:
                plan += _maybe_fp8(OutTensor(f"{m['prefix']}.{x}.down_proj.weight", out_tag, tuple(shape[1:]),
                                             [Piece(name, x)]), fp8)
    return plan


def _maybe_fp8(t: OutTensor, fp8: bool) -> List[OutTensor]:
    if not fp8 or len(t.shape) != 2 or not FP8_LINEAR.search(t.name):
        return [t]
    src = t.pieces[0]
    scale_shape = (-(-t.shape[0] // 128), -(-t.shape[1] // 128))
    return [OutTensor(t.name, "F8_E4M3", t.shape, [Piece(src.src, src.index, src.r0, src.r1, "codes")]),
            OutTensor(t.name + SCALE_SUFFIX, "F32", scale_shape, [Piece(src.src, src.index, src.r0, src.r1, "scale")])]


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------
def _write_config(src: str, dst: str, raw: Dict, dtype: Optional[str], quantized: Optional[bool],
                  changes: Optional[Dict] = None) -> None:
    """config.json for the output: copied byte for byte unless the dtype, the FP8 status or
    `changes` (fields to set) change it."""
    out = dict(raw, **(changes or {}))
    if dtype:
        out["torch_dtype"] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
    if quantized is True:
        out["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                      "weight_block_size": [128, 128]}
    elif quantized is False:
        out.pop("quantization_config", None)
    if out == raw:
        shutil.copyfile(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))
    else:
        atomic_write_json(os.path.join(dst, "config.json"), out)


def _without_missing_mtp(src: str, reader: CheckpointReader, cfg: DeepseekConfig) -> Tuple[DeepseekConfig, List[str]]:
    """transformers' `DeepseekV3Config` defaults to num_nextn_predict_layers=1 but its
    `save_pretrained` writes no MTP weights: such a checkpoint converts to a model without MTP
    (config.json says 0). A checkpoint with only part of the MTP block is still refused."""
    if cfg.mtp_depth == 0 or has_mtp_weights(reader.names(), cfg.num_hidden_layers):
        return cfg, []
    note = (f"{src}: no MTP weights although config.json says num_nextn_predict_layers={cfg.num_nextn_predict_layers} "
            f"(transformers' save_pretrained writes none); converted without MTP (num_nextn_predict_layers=0)")
    return dataclasses.replace(cfg, num_nextn_predict_layers=0), [note]


def hf_to_ms(src: str, dst: str, dtype: Optional[str] = None, fmt: str = "safetensors", max_shard: str = "5GB",
             workers: int = 1, bar: bool = True, overwrite: bool = False) -> Dict:
    """`dst` must be empty or absent unless `overwrite` (then it is replaced in one swap)."""
    check_destination(dst, overwrite)
    cfg, raw = read_config(src)
    reader = CheckpointReader(src)
    try:
        cfg, notes = _without_missing_mtp(src, reader, cfg)
        plan = plan_hf_to_ms(reader, cfg, DTYPE_TAGS[dtype])
        fp8_source = any(reader.info(n)[0].startswith("F8_") for n in reader.names())
        src_index = os.path.isfile(os.path.join(src, ST_INDEX)) or None
    finally:
        reader.close()
    work = begin(dst, overwrite)
    changes = {"num_nextn_predict_layers": 0} if notes else None

    def finish():
        copy_side_files(src, work, exclude=("config.json",))
        if src_index is not None:  # remember the HF sharding so ms-to-hf can restore the same index
            shutil.copyfile(os.path.join(src, ST_INDEX), os.path.join(work, SOURCE_INDEX))
        _write_config(src, work, raw, dtype, False if fp8_source else None, changes)
    result = write_plan(src, work, plan, fmt, parse_size(max_shard), workers,
                        {"format": "mindspore", "layout": "mindspore"}, bar=bar, finish=finish)
    commit(work, dst)
    return dict(result, notes=notes)


def ms_to_hf(src: str, dst: str, dtype: Optional[str] = None, fmt: str = "safetensors", fp8: bool = False,
             max_shard: str = "5GB", workers: int = 1, bar: bool = True, overwrite: bool = False) -> Dict:
    """`dst` must be empty or absent unless `overwrite` (then it is replaced in one swap)."""
    check_destination(dst, overwrite)
    cfg, raw = read_config(src)
    reader = CheckpointReader(src)
    try:
        plan = plan_ms_to_hf(reader, DTYPE_TAGS[dtype], fp8, cfg.is_v4)
    finally:
        reader.close()
    source_index = None
    si = os.path.join(src, SOURCE_INDEX)
    if os.path.isfile(si) and fmt == "safetensors":
        with open(si, "r", encoding="utf-8") as f:
            source_index = json.load(f).get("weight_map")
    work = begin(dst, overwrite)

    def finish():
        copy_side_files(src, work, exclude=("config.json",))
        _write_config(src, work, raw, dtype, True if fp8 else None)
    result = write_plan(src, work, plan, fmt, parse_size(max_shard), workers, {"format": "pt"}, source_index, bar,
                        finish)
    commit(work, dst)
    return dict(result, notes=[])
