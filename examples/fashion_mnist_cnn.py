#!/usr/bin/env python3
"""A CNN on Fashion-MNIST, trained by one effadam worker in PyTorch.

Two conv + max-pool layers (16 and 32 channels, 3x3), then dense
1568-128-10; 207k parameters. Each worker trains on the examples whose index
is its rank modulo the number of workers, each image mirrored left-right
with probability 1/2; rank 0 evaluates on the 10k test images.
Data: the Debian package dataset-fashion-mnist, read by the C++ IDX reader.

A local cluster of 4 such workers and effadam-server, 1-bit both ways with
error feedback (docs/python.md has the measured results):

    PYTHONPATH=build/python /usr/bin/python3 -m effadam.run --nproc=4 \\
        --rounds=6000 --worker_codec=sign --server_codec=sign -- \\
        examples/fashion_mnist_cnn.py

(--lr_schedule=warmup_cosine --warmup_rounds=300 --rounds=6000 for a
warm-up and cosine decay, a torch LambdaLR.) The Dockerfile's pytorch image
runs this script.
"""

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import effadam  # noqa: E402
import example_worker  # noqa: E402


class Cnn(nn.Module):
    def __init__(self, c1, c2, hidden, dropout):
        super().__init__()
        self.dropout = dropout
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * 7 * 7, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(F.dropout(x, self.dropout, self.training))


def load(data_dir, split):
    """(images [n, 1, 28, 28] float32 in [0, 1], labels int64) as tensors."""
    images, labels = effadam.load_idx_dataset(
        os.path.join(data_dir, "%s-images-idx3-ubyte.gz" % split),
        os.path.join(data_dir, "%s-labels-idx1-ubyte.gz" % split))
    return (torch.from_numpy(images).view(-1, 1, 28, 28),
            torch.from_numpy(labels).long())


def main():
    p = example_worker.parser(__doc__.splitlines()[0], lr=1e-3,
                              batch_size=64, eval_every=500)
    p.add_argument("--channels", default="16,32",
                   help="output channels of the two conv layers")
    p.add_argument("--hidden", type=int, default=128,
                   help="width of the dense layer")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout after the dense layer, while training")
    p.add_argument("--flip", type=int, default=1,
                   help="1: mirror each training image left-right with "
                        "probability 1/2 (clothes stay clothes)")
    p.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist",
                   help="directory with the Fashion-MNIST IDX .gz files")
    args = p.parse_args()
    try:
        train_x, train_y = load(args.data_dir, "train")
        test_x, test_y = load(args.data_dir, "t10k")
    except effadam.StatusError as e:
        print("fashion_mnist_cnn: %s (install dataset-fashion-mnist or pass "
              "--data_dir)" % e, file=sys.stderr)
        return 1

    def make_sampler(rank, num_workers, generator):
        shard = torch.arange(rank, len(train_y), num_workers)
        state = {"order": shard[torch.randperm(len(shard), generator=generator)],
                 "next": 0}

        def sample():
            if state["next"] + args.batch_size > len(state["order"]):
                state["order"] = shard[torch.randperm(len(shard),
                                                      generator=generator)]
                state["next"] = 0
            i = state["order"][state["next"]:state["next"] + args.batch_size]
            state["next"] += args.batch_size
            x = train_x[i]
            if args.flip:
                mirror = torch.rand(len(i), generator=generator) < 0.5
                x = torch.where(mirror[:, None, None, None], x.flip(3), x)
            return x, train_y[i]
        return sample

    def loss_fn(model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(model):
        correct = 0
        for i in range(0, len(test_y), 1000):
            logits = model(test_x[i:i + 1000])
            correct += (logits.argmax(1) == test_y[i:i + 1000]).sum().item()
        return {"test_accuracy": correct / len(test_y)}

    c1, c2 = (int(c) for c in args.channels.split(","))
    return example_worker.train(
        args, lambda: Cnn(c1, c2, args.hidden, args.dropout), make_sampler,
        loss_fn, evaluate)


if __name__ == "__main__":
    sys.exit(main())
