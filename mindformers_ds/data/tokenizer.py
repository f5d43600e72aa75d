"""A tokenizer from a HuggingFace `tokenizer.json` (the `tokenizers` library), with the chat
template of `tokenizer_config.json` when present and a built-in DeepSeek-style one otherwise.

`encode_chat(messages)` returns token ids and a loss mask that is 1 exactly on the tokens of
assistant replies (their closing EOS included): every system/user turn and every
`<｜Assistant｜>` prompt marker is masked, in every turn of a multi-turn chat.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from tokenizers import Tokenizer as _HFTokenizer

from ..errors import TokenizerError

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
PAD = "<｜▁pad▁｜>"




def _token_content(v) -> Optional[str]:
    if isinstance(v, dict):
        return v.get("content")
    return v


class Tokenizer:
    def __init__(self, path: str, chat_template: Optional[str] = None):
        tok_file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(tok_file):
            raise TokenizerError(f"{tok_file}: tokenizer file not found")
        try:
            self._tok = _HFTokenizer.from_file(tok_file)
        except Exception as e:  # the tokenizers library raises a bare Exception on bad JSON
            raise TokenizerError(f"{tok_file}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
        self.path = tok_file
        cfg_file = os.path.join(os.path.dirname(tok_file), "tokenizer_config.json")
        cfg: Dict = {}
        if os.path.isfile(cfg_file):
            with open(cfg_file, "r", encoding="utf-8") as f:
                cfg = json.load(f)
        self.bos_token = _token_content(cfg.get("bos_token")) or BOS
        self.eos_token = _token_content(cfg.get("eos_token")) or EOS
        self.pad_token = _token_content(cfg.get("pad_token")) or (PAD if self._tok.token_to_id(PAD) is not None
                                                                  else self.eos_token)
        self.chat_template = chat_template or cfg.get("chat_template")
        for name in ("bos_token", "eos_token"):
            if self._tok.token_to_id(getattr(self, name)) is None:
                raise TokenizerError(f"{tok_file}: special token {getattr(self, name)!r} ({name}) is not in the vocabulary")
        self.bos_id = self._tok.token_to_id(self.bos_token)
        self.eos_id = self._tok.token_to_id(self.eos_token)
        self.pad_id = self._tok.token_to_id(self.pad_token)
        if self.pad_id is None:
            self.pad_id = self.eos_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> List[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat --------------------------------------------------------------------------
    def render(self, messages: List[Dict[str, str]], add_generation_prompt: bool = False) -> str:
        if self.chat_template:
            return _render_jinja(self.chat_template, messages, add_generation_prompt, self.bos_token, self.eos_token)
        return _render_builtin(messages, add_generation_prompt, self.bos_token, self.eos_token)

    def encode_chat(self, messages: List[Dict[str, str]]) -> Tuple[List[int], List[int]]:
        """Token ids of the rendered chat and a 0/1 loss mask over assistant replies.

        The rendering is split at each assistant reply: the text before it (prompt) and the
        reply itself are tokenised separately, so the mask lands on exact token boundaries.
        """
        ids: List[int] = []
        mask: List[int] = []
        done = ""
        for i, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True)
            full = self.render(messages[:i + 1])
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise TokenizerError("chat template does not render turns as prefixes of each other; "
                                     "cannot place the loss mask")
            p_ids = self.encode(prompt[len(done):])
            r_ids = self.encode(full[len(prompt):])
            ids += p_ids + r_ids
            mask += [0] * len(p_ids) + [1] * len(r_ids)
            done = full
        rest = self.render(messages)[len(done):]
        if rest:
            r = self.encode(rest)
            ids += r
            mask += [0] * len(r)
        return ids, mask

    def encode_prompt(self, messages: List[Dict[str, str]]) -> List[int]:
        """Ids for generation: the chat so far plus the assistant prompt marker."""
        return self.encode(self.render(messages, add_generation_prompt=True))


def _render_builtin(messages, add_generation_prompt: bool, bos: str, eos: str) -> str:
    """DeepSeek-V3's chat layout without tools: BOS, system text, then
    `<｜User｜>question` / `<｜Assistant｜>answer<｜end▁of▁sentence｜>` turns."""
    system = "\n\n".join(m["content"] for m in messages if m.get("role") == "system")
    out = [bos, system]
    for m in messages:
        role = m.get("role")
        if role == "user":
            out.append(USER + m["content"])
        elif role == "assistant":
            out.append(ASSISTANT + m["content"] + eos)
    if add_generation_prompt:
        out.append(ASSISTANT)
    return "".join(out)


def _render_jinja(template: str, messages, add_generation_prompt: bool, bos: str, eos: str) -> str:
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # pragma: no cover - jinja2 is a runtime dependency
        raise TokenizerError("chat templates need jinja2 (pip install jinja2)") from e

    def raise_exception(msg):
        raise TokenizerError(f"chat template error: {msg}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos, eos_token=eos)
