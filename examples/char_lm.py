#!/usr/bin/env python3
"""A character-level language model on the Jargon File, trained by one
effadam worker in PyTorch.

The corpus is the Jargon File 4.4.7 as plain text (1.6M characters of English
prose, public domain), from the Debian package jargon-text
(/usr/share/doc/jargon-text/jargon.txt.gz). The last 5% is held out; each
worker samples windows from its own contiguous part of the rest.

The model predicts each character from the 32 before it: an embedding,
five causal convolutions (kernel 2, dilations 1, 2, 4, 8, 16, 128 channels)
and a per-position softmax over the characters; 165k parameters. Rank 0
reports bits per character and next-character accuracy on the held-out
text.

    PYTHONPATH=build/python /usr/bin/python3 -m effadam.run --nproc=4 \\
        --rounds=1500 --worker_codec=sign --server_codec=sign -- \\
        examples/char_lm.py
"""

import gzip
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import example_worker  # noqa: E402

CORPUS = "/usr/share/doc/jargon-text/jargon.txt.gz"
DILATIONS = (1, 2, 4, 8, 16)
CONTEXT = sum(DILATIONS) + 1  # characters each prediction sees


class CausalConvLM(nn.Module):
    def __init__(self, vocab, embed=32, channels=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.convs = nn.ModuleList()
        width = embed
        for d in DILATIONS:
            self.convs.append(nn.Conv1d(width, channels, 2, dilation=d))
            width = channels
        self.out = nn.Conv1d(channels, vocab, 1)

    def forward(self, x):
        """x: [batch, time] character ids; logits [batch, vocab, time], the
        one at t predicting x[t + 1] from x[..t]."""
        h = self.embed(x).transpose(1, 2)
        for d, conv in zip(DILATIONS, self.convs):
            h = F.relu(conv(F.pad(h, (d, 0))))  # pad left only: causal
        return self.out(h)


def load_corpus(path):
    """The text as a tensor of character ids, and the alphabet."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        text = f.read()
    alphabet = sorted(set(text))
    index = {c: i for i, c in enumerate(alphabet)}
    return torch.tensor([index[c] for c in text], dtype=torch.long), alphabet


def main():
    p = example_worker.parser(__doc__.splitlines()[0], lr=2e-3,
                              batch_size=32, eval_every=250)
    p.add_argument("--corpus", default=CORPUS,
                   help="gzip'ed UTF-8 text (Debian package jargon-text)")
    p.add_argument("--seq_len", type=int, default=64,
                   help="characters per training window")
    p.add_argument("--channels", type=int, default=128,
                   help="channels of the convolutions")
    args = p.parse_args()
    try:
        ids, alphabet = load_corpus(args.corpus)
    except OSError as e:
        print("char_lm: %s (install jargon-text or pass --corpus)" % e,
              file=sys.stderr)
        return 1
    held_out = len(ids) * 95 // 100
    train_ids, test_ids = ids[:held_out], ids[held_out:]

    def make_sampler(rank, num_workers, generator):
        part = len(train_ids) // num_workers
        shard = train_ids[rank * part:(rank + 1) * part]
        span = args.seq_len + 1

        def sample():
            starts = torch.randint(0, len(shard) - span, (args.batch_size,),
                                   generator=generator)
            return torch.stack([shard[s:s + span] for s in starts])
        return sample

    def loss_fn(model, windows):
        return F.cross_entropy(model(windows[:, :-1]), windows[:, 1:])

    def evaluate(model):
        # Chunks of the held-out text, each scored after a full context of
        # the characters before it.
        total, correct, count = 0.0, 0, 0
        chunk = 4096
        for begin in range(1, len(test_ids), chunk):
            lo = max(begin - CONTEXT, 0)
            x = test_ids[lo:begin + chunk - 1].unsqueeze(0)
            y = test_ids[lo + 1:begin + chunk].unsqueeze(0)
            logits = model(x[:, :y.shape[1]])[:, :, begin - 1 - lo:]
            y = y[:, begin - 1 - lo:]
            total += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += y.numel()
        return {"test_bits_per_char": total / count / math.log(2),
                "test_accuracy": correct / count}

    return example_worker.train(
        args, lambda: CausalConvLM(len(alphabet), channels=args.channels),
        make_sampler, loss_fn, evaluate)


if __name__ == "__main__":
    sys.exit(main())
