"""The models and data of bench/cluster/ddp_vs_effadam.py, the same for
the DDP and the EfficientAdam side: each model is built after
torch.manual_seed(seed), and each worker draws its batches from its own
shard with a generator seeded from (seed, rank), so both sides see the
same initial weights and the same batches.

  cnn   the Fashion-MNIST CNN of examples/fashion_mnist_cnn.py (207k
        parameters), batch 64, shard = examples whose index is rank mod N
  mlp   the wide MLP 784-2048-2048-10 (5.8M parameters), batch 64, the
        same shards
  lm    a small causal transformer on the char-LM text of
        examples/char_lm.py (8 layers, width 512, 25.3M parameters),
        2 windows of 32 characters per step: a communication-heavy model
        whose compute per step stays small
"""

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

_EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                         "..", "examples")
sys.path.insert(0, _EXAMPLES)
import char_lm  # noqa: E402
import fashion_mnist_cnn  # noqa: E402

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


class CharTransformer(nn.Module):
    """Pre-norm causal transformer over characters."""

    def __init__(self, vocab, width=512, layers=8, heads=8, context=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(context, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers,
                                            enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab)
        self.register_buffer("mask", torch.triu(
            torch.full((context, context), float("-inf")), diagonal=1))

    def forward(self, x):
        t = x.shape[1]
        h = self.embed(x) + self.position[:t]
        h = self.blocks(h, mask=self.mask[:t, :t])
        return self.out(self.norm(h))


class Task:
    """A model, its per-worker batches, its loss and (when it has one) a
    test accuracy."""

    def __init__(self, name):
        self.name = name
        if name in ("cnn", "mlp"):
            images, labels = fashion_mnist_cnn.load(FASHION_MNIST, "train")
            self.train_x, self.train_y = images, labels
            self.test_x, self.test_y = fashion_mnist_cnn.load(FASHION_MNIST,
                                                              "t10k")
            self.batch_size = 64
        elif name == "lm":
            ids, alphabet = char_lm.load_corpus(char_lm.CORPUS)
            self.ids = ids[:len(ids) * 95 // 100]
            self.vocab = len(alphabet)
            self.batch_size, self.context = 2, 32
        else:
            raise ValueError("model %r: expected cnn, mlp or lm" % name)

    def make_model(self):
        if self.name == "cnn":
            return fashion_mnist_cnn.Cnn(16, 32, 128, 0.0)
        if self.name == "mlp":
            return nn.Sequential(nn.Flatten(), nn.Linear(784, 2048), nn.ReLU(),
                                 nn.Linear(2048, 2048), nn.ReLU(),
                                 nn.Linear(2048, 10))
        return CharTransformer(self.vocab, context=self.context)

    def make_sampler(self, rank, world, seed):
        generator = torch.Generator().manual_seed(seed * 1000 + rank)
        if self.name == "lm":
            part = len(self.ids) // world
            shard = self.ids[rank * part:(rank + 1) * part]
            span = self.context + 1

            def sample_windows():
                starts = torch.randint(0, len(shard) - span,
                                       (self.batch_size,), generator=generator)
                return torch.stack([shard[s:s + span] for s in starts])
            return sample_windows

        shard = torch.arange(rank, len(self.train_y), world)
        state = {"order": None, "next": len(shard)}

        def sample():
            if state["next"] + self.batch_size > len(shard):
                state["order"] = shard[torch.randperm(len(shard),
                                                      generator=generator)]
                state["next"] = 0
            i = state["order"][state["next"]:state["next"] + self.batch_size]
            state["next"] += self.batch_size
            return self.train_x[i], self.train_y[i]
        return sample

    def loss(self, model, batch):
        if self.name == "lm":
            logits = model(batch[:, :-1])
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   batch[:, 1:].reshape(-1))
        x, y = batch
        return F.cross_entropy(model(x), y)

    @property
    def has_accuracy(self):
        return self.name != "lm"

    def test_accuracy(self, model):
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(self.test_y), 1000):
                logits = model(self.test_x[i:i + 1000])
                correct += (logits.argmax(1) ==
                            self.test_y[i:i + 1000]).sum().item()
        model.train()
        return correct / len(self.test_y)
