"""JSONL datasets -> tokenised samples (ids + loss mask).

One JSON object per line, in one of three forms (or mixed, with `format: auto`):
  alpaca: {"instruction": ..., "input": ..., "output": ...}   loss on `output` only
  chat:   {"messages": [{"role": ..., "content": ...}, ...]}  loss on assistant turns only
  text:   {"text": ...}                                        loss on every token (pretraining)
Errors name the file and line: `data/train.jsonl:17: not valid JSON (Expecting ',' ...)`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

from ..errors import DataError
from .tokenizer import Tokenizer




@dataclass
class Sample:
    ids: List[int]
    mask: List[int]        # 1 where the token is a training target
    source: str            # "file:line", for error messages and logs


def read_jsonl(path: str) -> Iterator[Tuple[int, Dict]]:
    try:
        f = open(path, "r", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def to_messages(obj: Dict, fmt: str, where: str) -> List[Dict[str, str]]:
    """The chat form of an alpaca or chat record."""
    if fmt == "alpaca" or (fmt == "auto" and "instruction" in obj):
        for key in ("instruction", "output"):
            if not isinstance(obj.get(key), str):
                raise DataError(f"{where}: alpaca record needs a string {key!r}")
        prompt = obj["instruction"]
        if obj.get("input"):
            prompt = f"{prompt}\n\n{obj['input']}"
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": obj["output"]}]
        if obj.get("system"):
            msgs.insert(0, {"role": "system", "content": obj["system"]})
        return msgs
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: chat record needs a non-empty 'messages' list")
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: each message needs role system|user|assistant and a string content")
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f"{where}: chat record has no assistant turn to learn from")
    return msgs


def record_format(obj: Dict, fmt: str, where: str) -> str:
    if fmt != "auto":
        return fmt
    if "messages" in obj:
        return "chat"
    if "instruction" in obj:
        return "alpaca"
    if "text" in obj:
        return "text"
    raise DataError(f"{where}: cannot tell the format; expected 'messages', 'instruction' or 'text'")


def encode_record(tok: Tokenizer, obj: Dict, fmt: str, where: str) -> Sample:
    kind = record_format(obj, fmt, where)
    if kind == "text":
        if not isinstance(obj.get("text"), str):
            raise DataError(f"{where}: text record needs a string 'text'")
        ids = [tok.bos_id] + tok.encode(obj["text"]) + [tok.eos_id]
        return Sample(ids, [0] + [1] * (len(ids) - 1), where)
    ids, mask = tok.encode_chat(to_messages(obj, kind, where))
    return Sample(ids, mask, where)


def load_samples(path: str, tok: Tokenizer, fmt: str = "auto", max_samples=None) -> List[Sample]:
    out: List[Sample] = []
    for lineno, obj in read_jsonl(path):
        out.append(encode_record(tok, obj, fmt, f"{path}:{lineno}"))
        if max_samples is not None and len(out) >= max_samples:
            break
    if not out:
        raise DataError(f"{path}: dataset is empty (no JSON records)")
    return out
