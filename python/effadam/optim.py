"""effadam.optim: PyTorch optimizers that train through an effadam
parameter server.

EfficientAdam takes what torch.optim.Adam takes (EfficientAdamW what
torch.optim.AdamW takes); the rest is keyword-only, and where the server is
and which rank this worker claims come from the environment when not given
(RANK, WORLD_SIZE, MASTER_ADDR as torchrun, the Kubeflow PyTorchJob and
`python3 -m effadam.run` set them; docs/python.md):

    opt = EfficientAdam(model.named_parameters(), 1e-3,
                        worker_codec="sign", server_codec="sign")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6000)
    for x, y in my_shard(opt.rank, opt.num_workers):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        sched.step()
        if opt.server_finished:
            break
    opt.finish()

All the math is the C++ worker library's (effadam.WorkerClient): this class
gathers the gradients into one float32 vector in the order of the layout,
hands it to the library, which runs Adam, keeps m, v and the error memory,
encodes the update and applies the server's delta to its replica of x, and
then copies that replica back into the parameters.
"""

import inspect
import math
import numbers
import warnings

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from . import _effadam

# What Optimizer.zero_grad() does without an argument in this torch.
_SET_TO_NONE_DEFAULT = inspect.signature(
    torch.optim.Optimizer.zero_grad).parameters["set_to_none"].default

# The version of the dict state_dict() returns.
_STATE_FORMAT = 1


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
        if p.is_sparse:
            raise ValueError("parameter %r is sparse; effadam trains dense "
                             "parameters" % name)
        named.append((name, p))
    if not named:
        raise ValueError("no parameter requires grad: nothing to train")
    devices = {p.device for _, p in named}
    if len(devices) != 1:
        raise ValueError("the parameters are on several devices (%s); "
                         "EfficientAdam needs them on one"
                         % ", ".join(sorted(str(d) for d in devices)))
    return named


def _given(**kwargs):
    """The keyword arguments that are not None: the others keep the C++
    library's defaults."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _check_lr(lr, where):
    if (isinstance(lr, bool) or not isinstance(lr, numbers.Real) or
            not math.isfinite(lr) or lr < 0):
        raise ValueError("%s is %r: the learning rate must be a finite number "
                         ">= 0 (an LR scheduler set it?); nothing was changed"
                         % (where, lr))


class EfficientAdam(torch.optim.Optimizer):
    """Adam through an effadam parameter server (Efficient-Adam).

    params: an nn.Module, model.named_parameters() (the layout names each
      tensor as the model does) or an iterable of tensors (named param0,
      param1, ...). Parameters that do not require grad are left alone and
      are not part of the layout; every parameter must be float32, dense and
      on one device (CPU or CUDA); a 0-dimensional parameter travels as
      shape (1,). One parameter group.
    lr, betas, eps, weight_decay: as torch.optim.Adam's, and the same
      numbers: weight_decay adds weight_decay * x to the gradient (L2).
      EfficientAdamW decouples it, as torch.optim.AdamW. param_groups[0]
      shows the values given; an LR scheduler may change 'lr' between steps
      (each step uses the lr of param_groups[0] at that moment); the other
      settings are fixed.
    amsgrad: only False (the library runs Adam).

    Keyword-only:
    server: host:port of effadam-server; for a model sharded over several
      servers their addresses, comma-separated, or a '{shard}' pattern with
      num_shards (docs/sharding.md). rank: the rank to claim (-1: the
      lowest free one). Not given (None): from the environment,
      effadam.resolve_placement (EFFADAM_SERVER, MASTER_ADDR + EFFADAM_PORT,
      EFFADAM_NUM_SHARDS, RANK, JOB_COMPLETION_INDEX); WORLD_SIZE, when
      set, must equal the server's --workers.
    bias_correction, beta2_schedule ('constant' or 'theta'), theta,
      lr_schedule ('constant', 'inverse_sqrt' or 'warmup_cosine', which
      scales lr in the library: a schedule without torch), warmup_rounds
      and rounds (of warmup_cosine): effadam.AdamOptions.
    worker_codec, server_codec, block_size, min_compress_elements,
      error_feedback: effadam.CompressionConfig; must equal the server's.
    seed, connect_timeout, finish_timeout, reconnect_timeout, security,
      keepalive_time, keepalive_timeout: effadam.WorkerClient.
    metrics_listen: host:port where this worker serves effadam-worker's
      Prometheus metrics (docs/metrics.md) from the moment it joins; see
      record_evaluation() for the test gauges.
    flat_params: True (the default on the CPU) makes the parameters views
      of one flat buffer; False keeps their storage and gathers and copies
      back every step, as on CUDA.
    overlap_backward: True sends the update while backward runs, as DDP's
      buckets do: a hook on each parameter's gradient accumulator hands its
      gradient to the library as soon as autograd has produced it, the
      library runs Adam and the encoding for every part of the update
      whose gradients are all in and puts its chunks on the Train stream
      while the rest of backward computes (WorkerClient.begin_step,
      add_gradient, end_step; docs/design.md, "The bucketed upload");
      step() then sends what is left and waits for the delta. The layout
      lists the parameters in reverse order (the order backward produces
      them, DDP's heuristic), so every worker of the cluster must pass the
      same value (the server refuses a mixed layout). The results are
      those of False, bit for bit, for the same gradients; but the
      gradient is taken when backward produces it: changes to .grad
      between backward and step() (clipping, scaling) are not seen, and
      a second backward before step() (gradient accumulation) raises, and
      a NaN/Inf gradient raises and ends this worker's training (the parts
      of the update already sent cannot be taken back).
      False (the default): step() gathers the gradients and sends the
      whole update after backward.
    Any of them left None keeps the library's default (the flags' defaults
    of effadam-worker).

    The constructor joins the server, uploads the model's current values if
    this is the first worker, and writes the server's x into the
    parameters: afterwards every worker's model holds the same values, and
    rank and num_workers say which data shard is this worker's.

    On the CPU the parameters become views of one flat float32 buffer (the
    replica is copied back with one memcpy) and, after the first step, so do
    their gradients while zero_grad() zeroes them in place (no gather). On
    CUDA (or with flat_params=False), the gradients are gathered on the
    device into one flat tensor, copied once into a (pinned) host buffer,
    and x goes back with one (non-blocking) host-to-device copy.

    step() needs every parameter's gradient at the current x; a parameter
    whose .grad is None counts as a zero gradient (Adam's momentum still
    moves it, unlike torch.optim.Adam, which skips it). Each step is one
    synchronous round: it returns when every live worker's update of the
    round has been averaged.
    """

    _decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0, amsgrad=False, *, server=None,
                 num_shards=None, rank=None, bias_correction=None,
                 lr_schedule=None, warmup_rounds=None, rounds=None,
                 beta2_schedule=None, theta=None, worker_codec=None,
                 server_codec=None, block_size=None,
                 min_compress_elements=None, error_feedback=None, seed=None,
                 connect_timeout=None, finish_timeout=None,
                 reconnect_timeout=None, security=None, keepalive_time=None,
                 keepalive_timeout=None, metrics_listen=None,
                 flat_params=None, overlap_backward=False):
        self._client = None
        if amsgrad:
            raise ValueError("amsgrad is not supported: the library runs Adam")
        _check_lr(lr, "lr")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError("betas must be a pair (beta1, beta2), got %r"
                             % (betas,))
        named = _named_trainable(params)
        self._overlap = bool(overlap_backward)
        if self._overlap:
            # Backward produces the last parameters' gradients first; the
            # update goes out in layout order.
            named = named[::-1]
        adam = _effadam.AdamOptions(**_given(
            # The library runs with lr of the first step; step() passes
            # param_groups[0]['lr'] on every step. lr 0 (a warm-up's start)
            # is a valid step but not a valid setting, hence the stand-in.
            lr=lr if lr > 0 else 1e-3, beta1=betas[0], beta2=betas[1],
            eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=self._decoupled_weight_decay,
            bias_correction=bias_correction, lr_schedule=lr_schedule,
            warmup_rounds=warmup_rounds, schedule_rounds=rounds,
            beta2_schedule=beta2_schedule, theta=theta))
        compression = _effadam.CompressionConfig(**_given(
            worker_codec=worker_codec, server_codec=server_codec,
            block_size=block_size,
            min_compress_elements=min_compress_elements,
            error_feedback=error_feedback))
        # What torch's param_groups show: the Python values given.
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps,
                        weight_decay=weight_decay, amsgrad=False)
        super().__init__([p for _, p in named], defaults)
        # Fixed when the worker joins; step() refuses changes to them.
        self._fixed = {k: v for k, v in defaults.items() if k != "lr"}
        # What state_dict() records and load_state_dict() checks.
        self._settings = dict(
            worker_codec=compression.worker_codec,
            server_codec=compression.server_codec,
            block_size=compression.block_size,
            min_compress_elements=compression.min_compress_elements,
            error_feedback=compression.error_feedback,
            beta1=adam.beta1, beta2=adam.beta2, eps=adam.eps,
            weight_decay=adam.weight_decay,
            decoupled_weight_decay=adam.decoupled_weight_decay,
            bias_correction=adam.bias_correction,
            lr_schedule=adam.lr_schedule, warmup_rounds=adam.warmup_rounds,
            schedule_rounds=adam.schedule_rounds,
            beta2_schedule=adam.beta2_schedule, theta=adam.theta)

        self.names = [name for name, _ in named]
        self.layout = _effadam.TensorLayout(
            [(name, tuple(p.shape) or (1,)) for name, p in named])
        self._params = [p for _, p in named]
        self.device = self._params[0].device
        self._cuda = self.device.type == "cuda"
        # Parameters as views of the flat replica: the CPU's default. Else
        # (CUDA, or flat_params=False) one gather and one copy back a step.
        self._flat_params = (self.device.type == "cpu" if flat_params is None
                             else bool(flat_params))
        if self._flat_params and self.device.type != "cpu":
            raise ValueError("flat_params=True needs CPU parameters; these "
                             "are on %s" % self.device)
        n = self.layout.num_elements
        # Flat float32 host buffers that numpy (for the library) and torch
        # share; pinned for CUDA, so that the copies can be asynchronous.
        self._grad_t = torch.zeros(n, dtype=torch.float32,
                                   pin_memory=self._cuda)
        self._x_t = torch.empty(n, dtype=torch.float32, pin_memory=self._cuda)
        self._grad = self._grad_t.numpy()
        self._x = self._x_t.numpy()
        self._grad_views = []  # CPU: each parameter's slice of _grad_t
        self._copied_back = None  # CUDA: the event of the last x copy
        self.server_finished = False
        # overlap_backward: each parameter's first element in the layout,
        # which parameters' gradients went out in this step, and the
        # gradient accumulators whose hooks send them (held, so that the
        # hooks live as long as this optimizer).
        self._offsets = []
        offset = 0
        for p in self._params:
            self._offsets.append(offset)
            offset += p.numel()
        self._sent = [False] * len(self._params)
        self._grad_accs = []

        self.placement = _effadam.resolve_placement(
            server=server, num_shards=num_shards, rank=rank)
        client = _effadam.WorkerClient(**_given(
            server=self.placement.server, num_shards=self.placement.num_shards,
            rank=self.placement.rank, compression=compression, adam=adam,
            seed=seed, connect_timeout=connect_timeout,
            finish_timeout=finish_timeout,
            reconnect_timeout=reconnect_timeout, security=security,
            keepalive_time=keepalive_time,
            keepalive_timeout=keepalive_timeout,
            metrics_listen=metrics_listen))
        client.join(self.layout)
        try:
            _effadam.check_world_size(self.placement, client.num_workers,
                                      self.placement.server)
        except _effadam.StatusError:
            client.cancel()
            raise
        with torch.no_grad():
            self._flatten_into(
                [p.detach().reshape(-1) for p in self._params], self._x_t)
        client.start(self._x)
        self._client = client
        self._lr_sent = adam.lr
        if self._flat_params:
            # The parameters become views of the flat replica: writing x
            # back is then one copy.
            with torch.no_grad():
                offset = 0
                for p in self._params:
                    p.data = self._x_t[offset:offset + p.numel()].view_as(p)
                    self._grad_views.append(
                        self._grad_t[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()
        self._write_back()
        if self._overlap:
            self._register_hooks()

    # -- what a training script reads ---------------------------------------

    @property
    def client(self):
        """The effadam.WorkerClient underneath (traffic, resyncs, ...)."""
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
        True and the step returns at once. A bad setting or gradient raises
        before anything changes."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        reported = math.nan if loss is None else float(loss)
        if self._overlap:
            return self._end_overlapped_step(loss, reported)
        lr = self._check_settings()
        grads = self._checked_grads()
        with torch.no_grad():
            self._gather(grads)
        self._send_lr(lr)
        return self._round(lambda: self._client.step(self._grad, reported),
                           loss)

    def _round(self, run, loss):
        """Runs the round (`run`) and writes x back; once the server has
        ended training, leaves the parameters and sets server_finished."""
        try:
            run()
        except _effadam.StatusError as e:
            if e.code != _effadam.StatusCode.OUT_OF_RANGE:
                raise
            self.server_finished = True
            return loss
        self._write_back()
        return loss

    def zero_grad(self, set_to_none=_SET_TO_NONE_DEFAULT):
        """As torch's; when the gradients are views of the flat buffer
        (the CPU after the first step), one fill of zeros."""
        if not set_to_none and self._grad_views and all(
                p.grad is v for p, v in zip(self._params, self._grad_views)):
            self._grad_t.zero_()
            return
        super().zero_grad(set_to_none=set_to_none)

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

    # -- checkpoints ------------------------------------------------------------

    def state_dict(self):
        """What a restarted worker needs to go on where this one is: under
        'state' the Adam step count, the round, the moments m ('exp_avg'),
        v ('exp_avg_sq') and the error memory e ('error_memory') as flat
        float32 tensors of the layout's size, and the bias-correction
        products; 'param_groups' as torch's (lr and what schedulers add);
        under 'effadam' the layout, the settings, the rank and the
        params_checksum of x. torch.save writes it."""
        st = self._client.optimizer_state()
        group = {k: v for k, v in self.param_groups[0].items()
                 if k != "params"}
        group["params"] = list(range(len(self._params)))
        return {
            "state": {
                "step": st["step"],
                "round": self._client.round,
                "exp_avg": torch.from_numpy(st["m"]),
                "exp_avg_sq": torch.from_numpy(st["v"]),
                "error_memory": torch.from_numpy(st["e"]),
                "beta1_power": st["beta1_power"],
                "beta2_power": st["beta2_power"],
            },
            "param_groups": [group],
            "effadam": {
                "format": _STATE_FORMAT,
                "layout": [[name, list(shape)]
                           for name, shape in self.layout.tensors],
                "settings": dict(self._settings),
                "rank": self.rank,
                "num_workers": self.num_workers,
                "x_checksum": _effadam.params_checksum(self._client.params),
            },
        }

    def load_state_dict(self, state_dict):
        """Restores what state_dict() saved, into a worker that has joined
        again (same rank, same layout, same settings; ValueError naming
        what differs, and nothing changes). m, v and e go on from where
        they were instead of the resync's zeros. When the server's x is not
        the one saved (the cluster went on without this worker) the state
        is still loaded and a warning says by how many rounds it is
        behind."""
        try:
            meta = state_dict["effadam"]
            st = state_dict["state"]
            groups = state_dict["param_groups"]
        except (KeyError, TypeError):
            raise ValueError("not a state_dict of effadam.optim.EfficientAdam "
                             "(no 'effadam', 'state' or 'param_groups')")
        if meta.get("format") != _STATE_FORMAT:
            raise ValueError("state_dict format %r; this effadam reads %d"
                             % (meta.get("format"), _STATE_FORMAT))
        mine = [[name, list(shape)] for name, shape in self.layout.tensors]
        saved = [[name, list(shape)] for name, shape in meta["layout"]]
        if saved != mine:
            diff = next((i for i, (a, b) in enumerate(zip(saved, mine))
                         if a != b), min(len(saved), len(mine)))
            raise ValueError(
                "the state_dict is of another layout: %d tensors against "
                "this model's %d; first difference at tensor %d: saved %s, "
                "here %s" % (len(saved), len(mine), diff,
                             saved[diff] if diff < len(saved) else "none",
                             mine[diff] if diff < len(mine) else "none"))
        differ = ["%s (saved %r, here %r)" % (k, meta["settings"].get(k), v)
                  for k, v in self._settings.items()
                  if meta["settings"].get(k) != v]
        if differ:
            raise ValueError("the state_dict was saved with other settings: "
                             + "; ".join(differ))
        if meta["rank"] != self.rank:
            raise ValueError(
                "the state_dict is rank %d's (its error memory is that "
                "worker's); this worker is rank %d: claim rank=%d"
                % (meta["rank"], self.rank, meta["rank"]))
        if len(groups) != 1:
            raise ValueError("the state_dict has %d parameter groups, "
                             "EfficientAdam one" % len(groups))
        group = {k: v for k, v in groups[0].items() if k != "params"}
        for k, v in self._fixed.items():
            if group.get(k) != v:
                raise ValueError("the state_dict was saved with %s=%r, this "
                                 "optimizer has %r" % (k, group.get(k), v))
        _check_lr(group.get("lr"), "the state_dict's lr")
        # The library checks sizes and values before it changes anything.
        self._client.restore_optimizer_state(
            step=int(st["step"]), beta1_power=float(st["beta1_power"]),
            beta2_power=float(st["beta2_power"]),
            m=_host_floats(st["exp_avg"]), v=_host_floats(st["exp_avg_sq"]),
            e=_host_floats(st["error_memory"]))
        self.param_groups[0].update(group)
        if (st["round"] != self._client.round or meta["x_checksum"] !=
                _effadam.params_checksum(self._client.params)):
            warnings.warn(
                "effadam: the state_dict was saved before round %d; the "
                "server is at round %d with another x: m, v and e are "
                "restored, the rounds in between are not this worker's"
                % (st["round"], self._client.round), stacklevel=2)

    # -- what torch.optim.Optimizer offers that does not apply ---------------

    def add_param_group(self, param_group):
        if getattr(self, "_client", None) is not None:
            raise ValueError("the layout was fixed when this worker joined; "
                             "parameters cannot be added")
        super().add_param_group(param_group)

    # -- internals ------------------------------------------------------------

    def _send_lr(self, lr):
        if lr != self._lr_sent:
            self._client.lr = lr
            self._lr_sent = lr

    def _register_hooks(self):
        """overlap_backward: a hook on each parameter's gradient
        accumulator (AccumulateGrad, as DDP registers them in this torch,
        which has no post-accumulate-grad hooks) that sends its gradient
        once autograd has accumulated it into .grad."""
        with torch.enable_grad():
            for i, p in enumerate(self._params):
                acc = p.expand_as(p).grad_fn.next_functions[0][0]
                acc.register_hook(self._make_hook(i))
                self._grad_accs.append(acc)

    def _make_hook(self, i):
        def hook(*unused):
            self._send_gradient(i)
        return hook

    def _begin_overlapped_step(self):
        """The first gradient of a step: the settings and lr of this step
        go to the library, which opens the step."""
        self._send_lr(self._check_settings())
        self._client.begin_step()
        self._sent = [False] * len(self._params)

    def _send_gradient(self, i):
        if self.server_finished:
            return
        if not self._client.step_open:
            self._begin_overlapped_step()
        if self._sent[i]:
            raise RuntimeError(
                "EfficientAdam(overlap_backward=True): the gradient of %r "
                "was produced twice before step() (a second backward, "
                "gradient accumulation); its first value went out already. "
                "Use overlap_backward=False to accumulate gradients"
                % self.names[i])
        p = self._params[i]
        g = p.grad
        if g is None:
            flat = np.zeros(p.numel(), dtype=np.float32)
        else:
            self._check_grad(self.names[i], g)
            flat = g.detach().reshape(-1).to("cpu").numpy()
        try:
            self._client.add_gradient(self._offsets[i], flat)
        except _effadam.StatusError:
            # Parts of the update may have gone out and cannot be taken
            # back: the step ends, and with a gradient missing it ends this
            # worker's training (every later call raises).
            try:
                self._client.end_step(math.nan)
            except _effadam.StatusError:
                pass
            raise
        self._sent[i] = True

    def _end_overlapped_step(self, loss, reported):
        """step() with overlap_backward: the gradients backward did not
        produce (unused parameters, or no backward at all) go now, then
        the round's delta is awaited and written back."""
        if self.server_finished:
            return loss

        def run():
            if not self._client.step_open:
                self._begin_overlapped_step()
            for i in range(len(self._params)):
                if not self._sent[i]:
                    self._send_gradient(i)
            self._client.end_step(reported)
        return self._round(run, loss)

    def _check_settings(self):
        """The lr of this step; ValueError for a bad one or for a changed
        fixed setting."""
        group = self.param_groups[0]
        for key, value in self._fixed.items():
            if group[key] != value:
                hint = ""
                if key == "betas":
                    hint = (" (OneCycleLR and CyclicLR cycle beta1 unless "
                            "given cycle_momentum=False)")
                raise ValueError(
                    "param_groups[0][%r] changed from %r to %r: only 'lr' may "
                    "change after the worker joins; the other settings are "
                    "the cluster's%s" % (key, value, group[key], hint))
        lr = group["lr"]
        _check_lr(lr, "param_groups[0]['lr']")
        return lr

    def _checked_grads(self):
        grads = [p.grad for p in self._params]
        for name, g in zip(self.names, grads):
            if g is not None:
                self._check_grad(name, g)
        return grads

    @staticmethod
    def _check_grad(name, g):
        if g.is_sparse:
            raise ValueError("the gradient of %r is sparse; EfficientAdam "
                             "takes dense gradients (nn.Embedding("
                             "sparse=False))" % name)
        if g.dtype != torch.float32:
            raise ValueError("the gradient of %r is %s; EfficientAdam "
                             "takes float32 gradients" % (name, g.dtype))

    def _flatten_into(self, flat, out):
        """Concatenates the 1-D tensors `flat` into the host buffer `out`."""
        if self._cuda:
            # One gather on the device, one copy to the host, which waits
            # for the device.
            out.copy_(_flatten_dense_tensors(flat))
        else:
            # Straight into the buffer: no model-sized temporary.
            torch.cat(flat, out=out)

    def _gather(self, grads):
        """The gradients into the flat host buffer."""
        if not self._flat_params:
            flat = [g.reshape(-1) if g is not None else
                    torch.zeros(p.numel(), device=p.device)
                    for p, g in zip(self._params, grads)]
            self._flatten_into(flat, self._grad_t)
            return
        for p, g, view in zip(self._params, grads, self._grad_views):
            if g is view:
                continue  # backward accumulated into the buffer
            if g is None:
                view.zero_()
            else:
                view.copy_(g)
            # The next backward accumulates into the buffer in place (as
            # long as zero_grad zeroes in place).
            p.grad = view

    def _write_back(self):
        """Copies the library's replica of x into the parameters."""
        if self._copied_back is not None:
            self._copied_back.synchronize()  # _x_t is read by the last copy
        np.copyto(self._x, self._client.params)
        if self._flat_params:
            return  # the parameters are views of _x_t
        flat = self._x_t.to(self.device, non_blocking=self._cuda)
        with torch.no_grad():
            for p, v in zip(self._params,
                            _unflatten_dense_tensors(flat, self._params)):
                p.copy_(v, non_blocking=self._cuda)
        if self._cuda:
            self._copied_back = torch.cuda.Event()
            self._copied_back.record()


def _host_floats(t):
    """A saved tensor as a float32 numpy vector (no copy on the CPU)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError("the state_dict's moments must be tensors, got %s"
                         % type(t).__name__)
    if t.dtype != torch.float32:
        raise ValueError("the state_dict's moments are %s, not float32"
                         % t.dtype)
    return t.detach().to("cpu").reshape(-1).numpy()


class EfficientAdamW(EfficientAdam):
    """EfficientAdam with decoupled weight decay, as torch.optim.AdamW
    (x -= lr * weight_decay * x each step, outside the moments); the same
    arguments, weight_decay 1e-2 by default as AdamW's."""

    _decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=1e-2, amsgrad=False, **kwargs):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad,
                         **kwargs)
