"""Train the small byte-level BPE tokenizer the CPU demo uses, from the demo data.

    python tools/train_demo_tokenizer.py --data data/demo/train.jsonl --out tokenizers/demo --vocab 512

DeepSeek's special tokens are added first (BOS 0, EOS 1, then the chat markers), so the
chat template code is the same as for DeepSeek's real tokenizer. Digits are split one per
token, as DeepSeek's pre-tokenizer keeps numbers short. A pair must occur `--min-frequency`
times to be merged: the instruction words (in every sample) are, pairs of the random task
symbols (a few dozen times each) are not, so each symbol stays one token.
"""
import argparse
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mindformers_ds.data.tokenizer import ASSISTANT, BOS, EOS, PAD, USER  # noqa: E402
from mindformers_ds.utils.io import atomic_write_text  # noqa: E402


def corpus(path):
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            yield r.get("instruction", "") + "\n\n" + r.get("input", "")
            yield r.get("output", "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/demo/train.jsonl")
    ap.add_argument("--out", default="tokenizers/demo")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--min-frequency", type=int, default=300)
    a = ap.parse_args()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=a.vocab, min_frequency=a.min_frequency,
                                  special_tokens=[BOS, EOS, USER, ASSISTANT, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(a.data), trainer)
    os.makedirs(a.out, exist_ok=True)
    atomic_write_text(os.path.join(a.out, "tokenizer.json"), tok.to_str(pretty=True))
    print(f"wrote {os.path.join(a.out, 'tokenizer.json')} ({tok.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
