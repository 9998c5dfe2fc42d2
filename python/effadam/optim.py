"""effadam.optim.EfficientAdam: a PyTorch optimizer that trains through an
effadam parameter server.

Use it in place of torch.optim.Adam:

    opt = EfficientAdam(model.named_parameters(), server="127.0.0.1:50051",
                        lr=1e-3, worker_codec="sign", server_codec="sign")
    for x, y in my_shard(opt.rank, opt.num_workers):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        if opt.server_finished:
            break
    opt.finish()

All the math is the C++ worker library's (effadam.WorkerClient): this class
flattens the gradients into one float32 vector in the order of the layout,
hands it to the library, which runs Adam, keeps m, v and the error memory,
encodes the update and applies the server's delta to its replica of x, and
then copies that replica back into the parameters.
"""

import math

import numpy as np
import torch

from . import _effadam


def _named_trainable(params):
    """(name, tensor) of every parameter that requires grad, in order,
    each tensor once."""
    if isinstance(params, torch.nn.Module):
        items = list(params.named_parameters())
    else:
        items = list(params)
        if any(isinstance(p, dict) for p in items):
            raise ValueError(
                "EfficientAdam takes no parameter groups: the server runs one "
                "Adam configuration for the whole model")
        if all(isinstance(p, torch.Tensor) for p in items):
            # Without names the layout can only name positions.
            items = [("param%d" % i, p) for i, p in enumerate(items)]
        elif not all(isinstance(p, tuple) and len(p) == 2 and
                     isinstance(p[0], str) and isinstance(p[1], torch.Tensor)
                     for p in items):
            raise TypeError(
                "params must be an nn.Module, model.named_parameters() or an "
                "iterable of tensors")
    seen = set()
    named = []
    for name, p in items:
        if id(p) in seen or not p.requires_grad:
            continue  # tied weights travel once; frozen ones stay local
        seen.add(id(p))
        if p.dtype != torch.float32:
            raise ValueError(
                "parameter %r is %s; effadam trains float32 parameters "
                "(x travels as float32)" % (name, p.dtype))
        named.append((name, p))
    if not named:
        raise ValueError("no parameter requires grad: nothing to train")
    return named


def _given(**kwargs):
    """The keyword arguments that are not None: the others keep the C++
    library's defaults."""
    return {k: v for k, v in kwargs.items() if v is not None}


class EfficientAdam(torch.optim.Optimizer):
    """Adam through an effadam parameter server (Efficient-Adam).

    params: an nn.Module, model.named_parameters() (the layout names each
      tensor as the model does) or an iterable of tensors (named param0,
      param1, ...). Parameters that do not require grad are left alone and
      are not part of the layout; every parameter must be float32; a
      0-dimensional parameter travels as shape (1,).
    server: host:port of effadam-server; for a model sharded over several
      servers their addresses, comma-separated, or a '{shard}' pattern with
      num_shards (docs/sharding.md).
    lr, betas, eps, weight_decay (decoupled, as AdamW), bias_correction,
      lr_schedule ('constant' or 'inverse_sqrt'), beta2_schedule
      ('constant' or 'theta'), theta: effadam.AdamOptions.
    worker_codec, server_codec, block_size, min_compress_elements,
      error_feedback: effadam.CompressionConfig; must equal the server's.
    num_shards, rank, seed, connect_timeout, finish_timeout,
      reconnect_timeout, security, keepalive_time, keepalive_timeout:
      effadam.WorkerClient.
    metrics_listen: host:port where this worker serves effadam-worker's
      Prometheus metrics (docs/metrics.md) from the moment it joins; see
      record_evaluation() for the test gauges.
    Any of them left None keeps the library's default (the flags' defaults
    of effadam-worker).

    The constructor joins the server, uploads the model's current values if
    this is the first worker, and writes the server's x into the
    parameters: afterwards every worker's model holds the same values, and
    rank and num_workers say which data shard is this worker's.

    step() needs every parameter's gradient at the current x; a parameter
    whose .grad is None counts as a zero gradient (Adam's momentum still
    moves it, unlike torch.optim.Adam, which skips it). Each step is one
    synchronous round: it returns when every live worker's update of the
    round has been averaged.
    """

    def __init__(self, params, server=None, *, num_shards=None, lr=None, betas=None, eps=None,
                 weight_decay=None, bias_correction=None, lr_schedule=None,
                 beta2_schedule=None, theta=None, worker_codec=None,
                 server_codec=None, block_size=None,
                 min_compress_elements=None, error_feedback=None, rank=None,
                 seed=None, connect_timeout=None, finish_timeout=None,
                 reconnect_timeout=None, security=None, keepalive_time=None,
                 keepalive_timeout=None, metrics_listen=None):
        self._client = None
        named = _named_trainable(params)
        beta1, beta2 = betas if betas is not None else (None, None)
        adam = _effadam.AdamOptions(**_given(
            lr=lr, beta1=beta1, beta2=beta2, eps=eps,
            weight_decay=weight_decay, bias_correction=bias_correction,
            lr_schedule=lr_schedule, beta2_schedule=beta2_schedule,
            theta=theta))
        compression = _effadam.CompressionConfig(**_given(
            worker_codec=worker_codec, server_codec=server_codec,
            block_size=block_size,
            min_compress_elements=min_compress_elements,
            error_feedback=error_feedback))
        # What torch's param_groups show; step() refuses changes to them
        # (an LR scheduler's), since the library's settings are fixed.
        defaults = dict(lr=adam.lr, betas=(adam.beta1, adam.beta2),
                        eps=adam.eps, weight_decay=adam.weight_decay)
        super().__init__([p for _, p in named], defaults)
        self._settings = dict(defaults)

        self.names = [name for name, _ in named]
        self.layout = _effadam.TensorLayout(
            [(name, tuple(p.shape) or (1,)) for name, p in named])
        self._slices = []
        offset = 0
        for _, p in named:
            self._slices.append((p, offset, p.numel()))
            offset += p.numel()
        # Flat float32 buffers that numpy (for the library) and torch (for
        # the copies in and out) share.
        self._grad = np.zeros(offset, dtype=np.float32)
        self._grad_t = torch.from_numpy(self._grad)
        self._x = np.empty(offset, dtype=np.float32)
        self._x_t = torch.from_numpy(self._x)
        self.server_finished = False

        client = _effadam.WorkerClient(**_given(
            server=server, num_shards=num_shards, rank=rank,
            compression=compression, adam=adam,
            seed=seed, connect_timeout=connect_timeout,
            finish_timeout=finish_timeout,
            reconnect_timeout=reconnect_timeout, security=security,
            keepalive_time=keepalive_time,
            keepalive_timeout=keepalive_timeout,
            metrics_listen=metrics_listen))
        client.join(self.layout)
        with torch.no_grad():
            for p, off, n in self._slices:
                self._x_t[off:off + n].copy_(p.detach().reshape(-1))
        client.start(self._x)
        self._client = client
        self._write_back()

    # -- what a training script reads ---------------------------------------

    @property
    def client(self):
        """The effadam.WorkerClient underneath (traffic, wire_bytes, ...)."""
        return self._client

    @property
    def rank(self):
        return self._client.rank

    @property
    def num_workers(self):
        return self._client.num_workers

    @property
    def round(self):
        """The round the next step() takes part in."""
        return self._client.round

    @property
    def traffic(self):
        return self._client.traffic

    # -- training -------------------------------------------------------------

    def step(self, closure=None, *, loss=None):
        """One round. closure (re-evaluates the model and returns the loss)
        or loss (a number or 0-d tensor) is the mini-batch loss reported to
        the server; without either the worker reports NaN ("not measured").
        Returns the loss. When the server has ended training (its --rounds
        passed) the parameters are left as they are, server_finished becomes
        True and the step returns at once."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_settings()
        with torch.no_grad():
            for p, off, n in self._slices:
                g = p.grad
                if g is None:
                    self._grad_t[off:off + n].zero_()
                elif g.is_sparse:
                    raise ValueError("EfficientAdam does not take sparse "
                                     "gradients")
                else:
                    self._grad_t[off:off + n].copy_(g.reshape(-1))
        reported = math.nan if loss is None else float(loss)
        try:
            self._client.step(self._grad, reported)
        except _effadam.StatusError as e:
            if e.code != _effadam.StatusCode.OUT_OF_RANGE:
                raise
            self.server_finished = True
            return loss
        self._write_back()
        return loss

    def record_evaluation(self, *, test_loss=math.nan,
                          test_accuracy=math.nan):
        """Rank 0's evaluation on held-out data, for the test_loss and
        test_accuracy gauges of the metrics (metrics_listen); NaN leaves
        one as it is."""
        self._client.record_evaluation(test_loss=test_loss,
                                       test_accuracy=test_accuracy)

    def finish(self):
        """Closes this worker's stream and waits for the server's final
        status (an error raises). Idempotent."""
        self._client.finish()

    def cancel(self):
        """Makes the current and every later call fail with CANCELLED."""
        self._client.cancel()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        else:
            self.cancel()  # leave at once; the error is what matters
        return False

    # -- what torch.optim.Optimizer offers that does not apply ---------------

    def add_param_group(self, param_group):
        if getattr(self, "_client", None) is not None:
            raise ValueError("the layout was fixed when this worker joined; "
                             "parameters cannot be added")
        super().add_param_group(param_group)

    def state_dict(self):
        raise NotImplementedError(
            "m, v and the error memory live in the worker library and x on "
            "the server: checkpoint the server (--checkpoint_dir); a worker "
            "that restarts joins again and fetches x")

    def load_state_dict(self, state_dict):
        self.state_dict()

    # -- internals ------------------------------------------------------------

    def _check_settings(self):
        group = self.param_groups[0]
        for key, value in self._settings.items():
            if group[key] != value:
                raise ValueError(
                    "param_groups[0][%r] changed from %r to %r: Adam's "
                    "settings are fixed when the worker joins (for a decaying "
                    "learning rate use lr_schedule='inverse_sqrt')"
                    % (key, value, group[key]))

    def _write_back(self):
        """Copies the library's replica of x into the parameters."""
        np.copyto(self._x, self._client.params)
        with torch.no_grad():
            for p, off, n in self._slices:
                p.copy_(self._x_t[off:off + n].view_as(p))
