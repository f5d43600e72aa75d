"""SFT data: loss masks, packing, deterministic sharded loading, the MindRecord cache and bad input."""
from __future__ import annotations

import json
import os

import numpy as np

from mindformers_ds.models.deepseek import results as R
import pytest
import mindspore as ms

from conftest import ROOT
from mindformers_ds.data.datasets import DataError, load_samples
from mindformers_ds.data.loader import BatchLoader
from mindformers_ds.data.packing import IGNORE_INDEX, build_rows, fit_length, target_count
from mindformers_ds.data.tokenizer import Tokenizer
from test_moe_mtp import _nll, tiny

TOK = os.path.join(ROOT, "tokenizers/demo/tokenizer.json")
RECORDS = [{"instruction": "Copy the sequence.", "input": "a7kz0", "output": "a7kz0"},
           {"instruction": "Sort the digits in ascending order.", "input": "92513", "output": "12359"},
           {"messages": [{"role": "user", "content": "Reverse the sequence.\n\nabc"},
                         {"role": "assistant", "content": "cba"},
                         {"role": "user", "content": "Add the two numbers.\n\n12+3"},
                         {"role": "assistant", "content": "15"}]}]


def write_jsonl(path, records, raw_lines=()):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(TOK)


def test_masks_cover_only_answers(tok, tmp_path):
    samples = load_samples(write_jsonl(tmp_path / "d.jsonl", RECORDS), tok)
    answers = [tok.decode([i for i, m in zip(s.ids, s.mask) if m], skip_special_tokens=False) for s in samples]
    eos = "<｜end▁of▁sentence｜>"
    assert answers == ["a7kz0" + eos, "12359" + eos, "cba" + eos + "15" + eos]   # both turns of the chat


def test_sft_loss_is_the_mean_over_answer_tokens(tok, tmp_path):
    model = tiny(num_nextn_predict_layers=0, aux_loss_alpha=0.0, vocab_size=320)
    rows = build_rows(load_samples(write_jsonl(tmp_path / "d.jsonl", RECORDS), tok), 40, tok.pad_id, False)
    logits = model(ms.Tensor(rows.input_ids)).asnumpy()
    # by hand: position i predicts token i+1 wherever token i+1 is part of an answer
    targets = np.full(rows.input_ids.shape, IGNORE_INDEX)
    for r in range(len(rows)):
        for i in range(rows.input_ids.shape[1] - 1):
            if rows.labels[r, i + 1] != IGNORE_INDEX:
                targets[r, i] = rows.input_ids[r, i + 1]
    want = _nll(logits, targets)
    got = float(model(ms.Tensor(rows.input_ids), ms.Tensor(rows.labels)).asnumpy())
    assert abs(got - want) < 1e-5 * want
    assert (targets != IGNORE_INDEX).sum() == target_count(rows.labels, rows.segment_ids, 1) == 6 + 6 + 4 + 3


def test_packing_gives_the_same_per_sample_loss(tok, tmp_path):
    model = tiny(num_nextn_predict_layers=1, aux_loss_alpha=0.0, vocab_size=320)
    samples = load_samples(write_jsonl(tmp_path / "d.jsonl", RECORDS), tok)
    packed = build_rows(samples, 96, tok.pad_id, True)
    assert len(packed) == 1 and packed.segment_ids.max() == 3
    assert list(packed.position_ids[0, :len(samples[0].ids)]) == list(range(len(samples[0].ids)))
    assert packed.position_ids[0, len(samples[0].ids)] == 0           # restarts for the second sample

    class Sums(ms.nn.Cell):
        def __init__(self, m):
            super().__init__(auto_prefix=False)
            self.m = m

        def construct(self, ids, labels, pos, seg):
            out = self.m.forward_train(ids, labels, pos, seg)
            return out[R.LM_SUM], out[R.LM_COUNT], out[R.MTP_SUM], out[R.MTP_COUNT]

    sums = Sums(model)
    t = lambda x: ms.Tensor(x)
    p = [float(x.asnumpy()) for x in sums(t(packed.input_ids), t(packed.labels), t(packed.position_ids),
                                         t(packed.segment_ids))]
    singles = np.zeros(4)
    for s in samples:
        row = build_rows([s], len(s.ids), tok.pad_id, False)
        singles += [float(x.asnumpy()) for x in sums(t(row.input_ids), t(row.labels), t(row.position_ids),
                                                    t(row.segment_ids))]
    np.testing.assert_allclose(p, singles, rtol=1e-5)   # main and MTP nll sums and target counts


def test_loader_is_deterministic_and_shards_by_rank(tok, tmp_path):
    rows = build_rows(load_samples(os.path.join(ROOT, "data/demo/eval.jsonl"), tok), 48, tok.pad_id, False)
    a = BatchLoader(rows, 4, grad_accum=2, dp=1, seed=7)
    b = BatchLoader(rows, 4, grad_accum=2, dp=1, seed=7)
    c = BatchLoader(rows, 4, grad_accum=2, dp=1, seed=8)
    assert all((a.global_indices(s) == b.global_indices(s)).all() for s in range(60))  # crosses epochs
    assert not (a.global_indices(0) == c.global_indices(0)).all()
    epoch0 = np.concatenate([a.global_indices(s) for s in range(len(rows) // 8)])
    assert sorted(epoch0) == list(range(len(epoch0)))   # a permutation within the epoch
    # two data-parallel ranks with accumulation 1 see the same global batch as one rank with accumulation 2
    r0, r1 = (BatchLoader(rows, 4, grad_accum=1, dp=2, dp_rank=r, seed=7) for r in (0, 1))
    for step in range(5):
        one = a.batch(step)
        ranks = np.concatenate([r0.batch(step).micro_batches[0]["input_ids"], r1.batch(step).micro_batches[0]["input_ids"]])
        joined = np.concatenate([m["input_ids"] for m in one.micro_batches])
        assert (ranks == joined).all() and one.lm_tokens == r0.batch(step).lm_tokens


def test_mindrecord_cache_round_trip(tok, tmp_path):
    from mindformers_ds import config
    from mindformers_ds.data import mindrecord
    cfg = config.load(os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml"),
                      [f"data.cache_dir={tmp_path / 'cache'}", "data.max_samples=50"])
    report = mindrecord.prepare(cfg)
    assert "train: 50 samples" in report
    cached = mindrecord.load_or_none(cfg.data, "train")
    fresh = build_rows(load_samples(cfg.data.train_file, tok, "auto", 50), 64, tok.pad_id, True)
    for k in ("input_ids", "labels", "position_ids", "segment_ids"):
        np.testing.assert_array_equal(getattr(cached, k), getattr(fresh, k))
    other = config.load(os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml"),
                        [f"data.cache_dir={tmp_path / 'cache'}", "data.max_samples=50", "data.seq_length=96"])
    assert mindrecord.load_or_none(other.data, "train") is None     # a different fingerprint: not reused


def test_malformed_line_names_file_and_line(tok, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", RECORDS[:2], ['{"instruction": "x", "output": '])
    with pytest.raises(DataError, match=rf"^{path}:3: not valid JSON"):
        load_samples(path, tok)
    path = write_jsonl(tmp_path / "bad2.jsonl", [{"instruction": "x"}])
    with pytest.raises(DataError, match=rf"^{path}:1: alpaca record needs a string 'output'"):
        load_samples(path, tok)
    path = write_jsonl(tmp_path / "bad3.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match="no assistant turn"):
        load_samples(path, tok)


def test_empty_dataset(tok, tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [], ["", "   "])
    with pytest.raises(DataError, match=rf"^{path}: dataset is empty"):
        load_samples(path, tok)


def test_overlong_samples_truncated_or_dropped(tok, tmp_path):
    samples = load_samples(write_jsonl(tmp_path / "d.jsonl", RECORDS), tok)
    n = [len(s.ids) for s in samples]
    limit = sorted(n)[1]
    kept, truncated, dropped = fit_length(samples, limit, "truncate")
    assert (len(kept), truncated, dropped) == (3, 1, 0) and max(len(s.ids) for s in kept) == limit
    kept, truncated, dropped = fit_length(samples, limit, "drop")
    assert (len(kept), truncated, dropped) == (2, 0, 1)


def test_checkpoint_of_another_architecture_is_refused(hf_v2_dir):
    from mindformers_ds.checkpoint.pretrained import load_weights
    from mindformers_ds.checkpoint.safetensors_io import CheckpointError
    v3 = tiny()
    with pytest.raises(CheckpointError, match="another architecture") as e:
        load_weights(v3, hf_v2_dir)
    assert "\n" not in str(e.value) and hf_v2_dir in str(e.value)
