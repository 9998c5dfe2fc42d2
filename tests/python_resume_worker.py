#!/usr/bin/env python3
"""A PyTorch worker for tests/python_optim_test.py's checkpoint case: an MLP
whose mini-batch is a function of the round, so that an interrupted run and
an uninterrupted one see the same data. With --save_at it writes
torch.save({'model', 'opt', 'sched'}) after that round and, with
--kill_after_save, dies by SIGKILL right there; with --resume it loads the
file first. Prints 'params_checksum HEX' at the end.
"""

import argparse
import os
import signal
import sys

import torch
import torch.nn.functional as F

import effadam
from effadam.optim import EfficientAdam


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--save_at", type=int, default=0)
    p.add_argument("--path", default="")
    p.add_argument("--kill_after_save", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--load_state", type=int, default=1,
                   help="0: rejoin without loading the optimizer's state")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 3))
    opt = EfficientAdam(model, 1e-2, weight_decay=1e-3, server=a.server,
                        rank=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
    if a.resume:
        saved = torch.load(a.path)
        if a.load_state:
            opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
    while opt.round <= a.rounds:
        g = torch.Generator().manual_seed(opt.round)
        x = torch.randn(32, 10, generator=g)
        y = torch.randint(0, 3, (32,), generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        sched.step()
        if a.save_at and opt.round - 1 == a.save_at and not a.resume:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict()}, a.path)
            if a.kill_after_save:
                os.kill(os.getpid(), signal.SIGKILL)
    opt.finish()
    print("rank %d done after round %d, params_checksum %s"
          % (opt.rank, opt.round - 1,
             effadam.params_checksum(opt.client.params)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
