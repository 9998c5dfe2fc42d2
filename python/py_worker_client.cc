#include "python/py_worker_client.h"

#include <pybind11/numpy.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <string>
#include <thread>
#include <tuple>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "metrics/prometheus_util.h"
#include "python/arrays.h"
#include "python/status_error.h"

namespace py = pybind11;

namespace effadam::python {
namespace {

// How long Ctrl-C may wait to be noticed during a blocking call.
constexpr absl::Duration kSignalPoll = absl::Milliseconds(100);

// Marks the client busy for one blocking call.
class BusyScope {
 public:
  explicit BusyScope(std::atomic<bool>* busy) : busy_(busy) {
    if (busy_->exchange(true)) {
      busy_ = nullptr;
      ThrowStatus(absl::FailedPreconditionError(
          "another call of this WorkerClient is in progress in another "
          "thread; a WorkerClient is not thread-safe (only cancel() may be "
          "called meanwhile)"));
    }
  }
  ~BusyScope() {
    if (busy_ != nullptr) *busy_ = false;
  }
  BusyScope(const BusyScope&) = delete;
  BusyScope& operator=(const BusyScope&) = delete;

 private:
  std::atomic<bool>* busy_;
};

absl::Duration Seconds(double s, const char* name) {
  if (!(s >= 0)) {
    ThrowStatus(absl::InvalidArgumentError(
        absl::StrCat(name, " must be >= 0 seconds, got ", s)));
  }
  return absl::Seconds(s);
}

}  // namespace

PyWorkerClient::PyWorkerClient(WorkerClientOptions options,
                               const std::string& metrics_listen)
    : client_(std::make_unique<WorkerClient>(std::move(options))) {
  if (!metrics_listen.empty()) {
    exposer_ = ValueOrThrow(StartMetricsExposer(metrics_listen));
  }
}

PyWorkerClient::~PyWorkerClient() = default;

void PyWorkerClient::SyncMetrics() {
  if (metrics_ != nullptr) metrics_->Sync(*client_);
}

void PyWorkerClient::RecordEvaluation(double test_loss, double test_accuracy) {
  if (metrics_ == nullptr) return;
  Evaluation eval;
  eval.loss = test_loss;
  eval.metric = test_accuracy;
  eval.metric_name = std::isnan(test_accuracy) ? "" : "test_accuracy";
  metrics_->RecordEvaluation(eval);
}

int PyWorkerClient::metrics_port() const {
  return exposer_ == nullptr ? 0 : BoundPort(*exposer_);
}

absl::Status PyWorkerClient::Blocking(
    const std::function<absl::Status()>& call) {
  BusyScope busy(&busy_);
  struct Result {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    absl::Status status ABSL_GUARDED_BY(mu);
  } result;
  std::thread worker([&] {
    absl::Status s;
    try {
      s = call();
    } catch (const std::exception& e) {  // e.g. bad_alloc: not a crash
      s = absl::InternalError(e.what());
    }
    absl::MutexLock lock(&result.mu);
    result.status = std::move(s);
    result.done = true;
  });
  bool interrupted = false;
  while (true) {
    bool done;
    {
      py::gil_scoped_release nogil;
      absl::MutexLock lock(&result.mu);
      done = result.mu.AwaitWithTimeout(absl::Condition(&result.done),
                                        kSignalPoll);
    }
    if (done) break;
    // Runs the Python signal handlers (only in the main thread); non-zero
    // when one raised, e.g. KeyboardInterrupt for Ctrl-C.
    if (PyErr_CheckSignals() != 0) {
      interrupted = true;
      client_->Cancel();
      break;
    }
  }
  {
    py::gil_scoped_release nogil;
    worker.join();
  }
  if (interrupted) throw py::error_already_set();
  absl::MutexLock lock(&result.mu);
  return result.status;
}

void PyWorkerClient::Join(const TensorLayout& layout) {
  ThrowIfError(Blocking([&] { return client_->Join(layout); }));
  // The series carry the rank, known only now.
  if (exposer_ != nullptr && metrics_ == nullptr) {
    metrics_ = std::make_unique<WorkerMetrics>(client_->rank());
    exposer_->RegisterCollectable(metrics_->registry());
    SyncMetrics();
  }
}

void PyWorkerClient::Start(py::handle initial_params) {
  FloatsIn x = ToFloats(initial_params, "initial_params");
  const absl::Status s = Blocking([&] { return client_->Start(x.span); });
  SyncMetrics();
  ThrowIfError(s);
}

void PyWorkerClient::Step(py::handle grad, float loss) {
  FloatsIn g = ToFloats(grad, "grad");
  const absl::Time start = absl::Now();
  const absl::Status s = Blocking([&] { return client_->Step(g.span, loss); });
  RecordStepAndThrow(s, start, loss);
}

void PyWorkerClient::RecordStepAndThrow(const absl::Status& s, absl::Time start,
                                        float loss) {
  if (metrics_ != nullptr && s.ok()) {
    metrics_->RecordStep(*client_, absl::ToDoubleSeconds(absl::Now() - start),
                         loss);
  } else {
    SyncMetrics();
  }
  ThrowIfError(s);
}

void PyWorkerClient::BeginStep() { ThrowIfError(idle_client().BeginStep()); }

void PyWorkerClient::AddGradient(size_t begin, py::handle grad) {
  FloatsIn g = ToFloats(grad, "grad");
  WorkerClient& client = idle_client();
  absl::Status s;
  {
    py::gil_scoped_release nogil;
    s = client.AddGradient(begin, g.span);
  }
  ThrowIfError(s);
}

void PyWorkerClient::EndStep(float loss) {
  const absl::Time start = absl::Now();
  const absl::Status s = Blocking([&] { return client_->EndStep(loss); });
  RecordStepAndThrow(s, start, loss);
}

void PyWorkerClient::Run(int64_t last_round, py::function gradient) {
  // The callback runs on the blocking call's thread; what it raises is
  // raised again here, in the caller's thread, once Run has returned.
  std::exception_ptr raised;
  // A round's step runs from the return of one gradient call to the next
  // call; the metrics record it then (on the client's own thread, as
  // WorkerMetrics asks).
  absl::Time last_call;
  int64_t last_round_called = -1;  // the round of the last gradient call
  float last_loss = std::numeric_limits<float>::quiet_NaN();
  auto record_round = [&] {
    if (metrics_ != nullptr && last_round_called >= 0 &&
        client_->round() > last_round_called) {
      metrics_->RecordStep(
          *client_, absl::ToDoubleSeconds(absl::Now() - last_call), last_loss);
    }
  };
  auto call_gradient = [&](absl::Span<const float> params,
                           absl::Span<float> grad) -> absl::StatusOr<float> {
    record_round();
    last_round_called = client_->round();
    // The step's time starts when the gradient is there, as in step().
    absl::Cleanup step_starts = [&] { last_call = absl::Now(); };
    py::gil_scoped_acquire gil;
    try {
      // Copies: the arrays may outlive the call, the spans do not.
      py::array_t<float> p = CopyToArray(params);
      py::array_t<float> g(static_cast<py::ssize_t>(grad.size()));
      std::memset(g.mutable_data(), 0, grad.size() * sizeof(float));
      const float loss = gradient(p, g).cast<float>();
      if (g.size() != static_cast<py::ssize_t>(grad.size()) || g.ndim() != 1) {
        return absl::InvalidArgumentError(
            "run: the gradient function must fill `grad` in place");
      }
      std::memcpy(grad.data(), g.data(), grad.size() * sizeof(float));
      last_loss = loss;
      return loss;
    } catch (...) {
      raised = std::current_exception();
      return absl::CancelledError("run: the gradient function raised");
    }
  };
  absl::Status s =
      Blocking([&] { return client_->Run(last_round, call_gradient); });
  record_round();  // the last round, if its delta was applied
  SyncMetrics();
  if (raised) std::rethrow_exception(raised);
  ThrowIfError(s);
}

void PyWorkerClient::Finish() {
  const absl::Status s = Blocking([&] { return client_->Finish(); });
  SyncMetrics();
  ThrowIfError(s);
}

void PyWorkerClient::Cancel() { client_->Cancel(); }

WorkerClient& PyWorkerClient::idle_client() {
  BusyScope busy(&busy_);  // raises while a blocking call runs
  return *client_;
}

void BindWorkerClient(py::module_& m) {
  // The structs' defaults, which the daemons' flags share: a default worker
  // joins a default server.
  const WorkerClientOptions defaults;
  const CompressionConfig& default_compression = defaults.compression;
  // common/traffic.h: the one record of traffic, as in C++.
  py::class_<DirectionBytes>(m, "DirectionBytes",
                             "The bytes of one direction, counted three ways.")
      .def_readonly("payload", &DirectionBytes::payload,
                    "codec payloads (updates, deltas, parameters)")
      .def_readonly("fp32", &DirectionBytes::fp32,
                    "what fp32 Adam would have moved (0 for join)")
      .def_readonly("wire", &DirectionBytes::wire,
                    "the serialized protobuf messages that carried them")
      .def("__repr__", [](const DirectionBytes& d) {
        return absl::StrCat("DirectionBytes(payload=", d.payload,
                            ", fp32=", d.fp32, ", wire=", d.wire, ")");
      });
  py::class_<TrafficCounts>(m, "Traffic",
                            "A worker's bytes by direction (up: "
                            "worker_to_server, down: server_to_worker, "
                            "join: UploadParams and FetchParams), summed "
                            "over the shards.")
      .def_property_readonly("up", &TrafficCounts::up)
      .def_property_readonly("down", &TrafficCounts::down)
      .def_property_readonly("join", &TrafficCounts::join)
      .def_property_readonly("round_payload", &TrafficCounts::round_payload,
                             "up.payload + down.payload")
      .def_property_readonly("fp32_equivalent", &TrafficCounts::fp32_equivalent,
                             "up.fp32 + down.fp32")
      .def_property_readonly("compression_ratio",
                             &TrafficCounts::compression_ratio,
                             "fp32_equivalent / round_payload; 0 before any "
                             "traffic")
      // The names the summaries and earlier versions use.
      .def_property_readonly(
          "worker_to_server",
          [](const TrafficCounts& t) { return t.up().payload; }, "up.payload")
      .def_property_readonly(
          "server_to_worker",
          [](const TrafficCounts& t) { return t.down().payload; },
          "down.payload")
      .def_property_readonly(
          "fp32_worker_to_server",
          [](const TrafficCounts& t) { return t.up().fp32; }, "up.fp32")
      .def_property_readonly(
          "fp32_server_to_worker",
          [](const TrafficCounts& t) { return t.down().fp32; }, "down.fp32")
      .def_property_readonly("total", &TrafficCounts::round_payload,
                             "round_payload")
      .def_property_readonly("fp32_total", &TrafficCounts::fp32_equivalent,
                             "fp32_equivalent")
      .def_property_readonly("ratio", &TrafficCounts::compression_ratio,
                             "compression_ratio")
      .def("__repr__", [](const TrafficCounts& t) {
        std::string out = "Traffic(";
        for (int d = 0; d < kNumTrafficDirections; ++d) {
          const DirectionBytes& b = t.by_direction[d];
          absl::StrAppend(
              &out, d == 0 ? "" : ", ",
              TrafficDirectionName(static_cast<TrafficDirection>(d)),
              "=(payload=", b.payload, ", fp32=", b.fp32, ", wire=", b.wire,
              ")");
        }
        return out + ")";
      });

  py::class_<PyWorkerClient>(m, "WorkerClient", R"doc(
One worker of an effadam cluster (the C++ WorkerClient): it owns the replica
of x, Adam's m and v, the error memory, the codecs and the Train stream.

    client = effadam.WorkerClient(server="127.0.0.1:50051",
                                  compression=effadam.CompressionConfig())
    client.join(layout)              # rank and num_workers known now
    client.start(initial_params)     # the first worker uploads; all fetch x
    while client.round <= last_round:
        loss = my_gradient(client.params, grad)
        client.step(grad, loss)
    client.finish()

Blocking calls release the GIL; Ctrl-C cancels the client and raises
KeyboardInterrupt. Errors raise effadam.StatusError (code, message).
Not thread-safe, except cancel().)doc")
      .def(py::init([](std::string server, int num_shards, int rank,
                       const CompressionConfig& compression,
                       const AdamOptions& adam, uint64_t seed,
                       double connect_timeout, double finish_timeout,
                       double reconnect_timeout, const ClientSecurity& security,
                       double keepalive_time, double keepalive_timeout,
                       const std::string& metrics_listen) {
             WorkerClientOptions o;
             o.server = std::move(server);
             o.num_shards = num_shards;
             o.rank = rank;
             o.compression = compression;
             o.adam = adam;
             o.seed = seed;
             o.connect_timeout = Seconds(connect_timeout, "connect_timeout");
             o.finish_timeout = Seconds(finish_timeout, "finish_timeout");
             o.reconnect_timeout =
                 Seconds(reconnect_timeout, "reconnect_timeout");
             o.security = security;
             o.keepalive.time = Seconds(keepalive_time, "keepalive_time");
             o.keepalive.timeout =
                 Seconds(keepalive_timeout, "keepalive_timeout");
             ThrowIfError(CheckClientKeepalive(o.keepalive));
             return std::make_unique<PyWorkerClient>(std::move(o),
                                                     metrics_listen);
           }),
           py::kw_only(), py::arg("server") = defaults.server,
           py::arg("num_shards") = defaults.num_shards,
           py::arg("rank") = defaults.rank,
           py::arg("compression") = default_compression,
           py::arg("adam") = defaults.adam, py::arg("seed") = defaults.seed,
           py::arg("connect_timeout") =
               absl::ToDoubleSeconds(defaults.connect_timeout),
           py::arg("finish_timeout") =
               absl::ToDoubleSeconds(defaults.finish_timeout),
           py::arg("reconnect_timeout") =
               absl::ToDoubleSeconds(defaults.reconnect_timeout),
           py::arg("security") = defaults.security,
           py::arg("keepalive_time") =
               absl::ToDoubleSeconds(defaults.keepalive.time),
           py::arg("keepalive_timeout") =
               absl::ToDoubleSeconds(defaults.keepalive.timeout),
           py::arg("metrics_listen") = "",
           "Does not touch the network. server: host:port, or for a model "
           "sharded over S servers their addresses in shard order, "
           "comma-separated, or one address with '{shard}' and num_shards=S "
           "(docs/sharding.md). rank -1: the lowest free one. "
           "compression must equal the server's settings (the default is "
           "the flags' default, sign both ways); timeouts are in seconds "
           "(WorkerClientOptions). metrics_listen: host:port to serve "
           "effadam-worker's Prometheus metrics on from join() on (port 0: "
           "any free port, see metrics_port); empty: none.")
      .def("join", &PyWorkerClient::Join, py::arg("layout"),
           "Announces the layout and compression settings and gets a rank.")
      .def("start", &PyWorkerClient::Start, py::arg("initial_params"),
           "Uploads initial_params if the server asks this worker for them "
           "(the first worker; otherwise they are not read), fetches the "
           "server's x and opens the Train stream.")
      .def("step", &PyWorkerClient::Step, py::arg("grad"),
           py::arg("loss") = std::numeric_limits<float>::quiet_NaN(),
           "One round: an Adam step on grad (the gradient at params; float32 "
           "vector, converted if it is not), the compressed update sent, the "
           "server's delta applied. loss is reported to the server (NaN: not "
           "measured). OUT_OF_RANGE when the server has ended training; a bad "
           "gradient is INVALID_ARGUMENT and changes nothing.")
      .def("begin_step", &PyWorkerClient::BeginStep,
           "Opens a bucketed step: the gradient then arrives range by range "
           "(add_gradient) and each chunk of the update is sent as soon as "
           "its bytes are final, while later gradients are computed.")
      .def("add_gradient", &PyWorkerClient::AddGradient, py::arg("begin"),
           py::arg("grad"),
           "The gradient of elements [begin, begin + len(grad)) of the "
           "layout: ranges of one step are disjoint and, by end_step, cover "
           "it. The update parts it completes are computed now (Adam, error "
           "feedback, encoding; without the GIL) and go out. A range outside "
           "the layout, overlapping one given before or with NaN/Inf is "
           "INVALID_ARGUMENT and keeps nothing.")
      .def("end_step", &PyWorkerClient::EndStep,
           py::arg("loss") = std::numeric_limits<float>::quiet_NaN(),
           "Ends the bucketed step: waits for the round's delta and applies "
           "it, as step does (the same errors). A gradient still missing "
           "ends this worker's training with INVALID_ARGUMENT (what went "
           "out cannot be taken back).")
      .def_property_readonly(
          "step_open",
          [](const PyWorkerClient& c) { return c.client().step_open(); },
          "Between begin_step and end_step.")
      .def("run", &PyWorkerClient::Run, py::arg("last_round"),
           py::arg("gradient"),
           "Steps until round last_round is applied or the server ends "
           "training, then finishes. gradient(params, grad) gets a copy of x "
           "and a float32 array of zeros to fill in place, and returns the "
           "loss; what it raises stops the run and is raised again here.")
      .def("finish", &PyWorkerClient::Finish,
           "Closes this worker's side of the stream and waits for the "
           "server's final status. Idempotent.")
      .def("record_evaluation", &PyWorkerClient::RecordEvaluation,
           py::kw_only(),
           py::arg("test_loss") = std::numeric_limits<double>::quiet_NaN(),
           py::arg("test_accuracy") = std::numeric_limits<double>::quiet_NaN(),
           "Sets the test_loss and test_accuracy gauges of the metrics "
           "(rank 0's evaluation on held-out data); NaN leaves one as it "
           "is. No-op without metrics_listen.")
      .def_property_readonly("metrics_port", &PyWorkerClient::metrics_port,
                             "The port /metrics is served on; 0 without "
                             "metrics_listen.")
      .def("cancel", &PyWorkerClient::Cancel,
           "Makes the current and every later call fail with CANCELLED. Any "
           "thread may call it.")
      .def_property_readonly(
          "rank", [](const PyWorkerClient& c) { return c.client().rank(); })
      .def_property_readonly(
          "num_workers",
          [](const PyWorkerClient& c) { return c.client().num_workers(); })
      .def_property_readonly(
          "round", [](const PyWorkerClient& c) { return c.client().round(); },
          "The round whose update step() sends next; params is x after "
          "round - 1.")
      .def_property_readonly(
          "params",
          [](py::object self) {
            return ReadOnlyView(
                self.cast<const PyWorkerClient&>().client().params(), self);
          },
          "The replica of x: a read-only numpy view of the library's memory "
          "(no copy) that every step() changes in place; copy it "
          "(np.array(client.params)) to keep a snapshot. Empty before start().")
      .def_property(
          "lr",
          [](const PyWorkerClient& c) {
            const WorkerOptimizer* o = c.client().optimizer();
            return o == nullptr ? std::numeric_limits<float>::quiet_NaN()
                                : o->lr();
          },
          [](PyWorkerClient& c, float lr) {
            WorkerOptimizer* o = c.idle_client().optimizer();
            if (o == nullptr) {
              ThrowStatus(
                  absl::FailedPreconditionError("lr: call start() first"));
            }
            ThrowIfError(o->SetLr(lr));
          },
          "The base learning rate of the next step() (the Adam options' lr "
          "until set; lr_schedule scales it). Set it between steps for a "
          "schedule of your own: finite and >= 0, else InvalidArgumentError "
          "and nothing changes. NaN before start().")
      .def(
          "optimizer_state",
          [](const PyWorkerClient& c) {
            const WorkerOptimizer* o = c.client().optimizer();
            if (o == nullptr) {
              ThrowStatus(absl::FailedPreconditionError(
                  "optimizer_state: call start() first"));
            }
            const WorkerOptimizer::State st = o->state();
            py::dict d;
            d["step"] = st.step;
            d["beta1_power"] = st.beta1_power;
            d["beta2_power"] = st.beta2_power;
            d["m"] = CopyToArray(st.m);
            d["v"] = CopyToArray(st.v);
            d["e"] = CopyToArray(st.e);
            return d;
          },
          "A copy of Adam's state: {'step', 'beta1_power', 'beta2_power' "
          "(the bias-correction products), 'm', 'v', 'e' (float32 arrays: "
          "the moments and the error memory)}.")
      .def(
          "restore_optimizer_state",
          [](PyWorkerClient& c, int64_t step, double beta1_power,
             double beta2_power, py::handle m, py::handle v, py::handle e) {
            WorkerOptimizer* o = c.idle_client().optimizer();
            if (o == nullptr) {
              ThrowStatus(absl::FailedPreconditionError(
                  "restore_optimizer_state: call start() first"));
            }
            WorkerOptimizer::State st;
            st.step = step;
            st.beta1_power = beta1_power;
            st.beta2_power = beta2_power;
            for (auto [obj, name, out] :
                 {std::tuple{m, "m", &st.m}, std::tuple{v, "v", &st.v},
                  std::tuple{e, "e", &st.e}}) {
              const FloatsIn in = ToFloats(obj, name);
              out->assign(in.span.begin(), in.span.end());
            }
            ThrowIfError(o->RestoreState(std::move(st)));
          },
          py::kw_only(), py::arg("step"), py::arg("beta1_power"),
          py::arg("beta2_power"), py::arg("m"), py::arg("v"), py::arg("e"),
          "Replaces Adam's state with one optimizer_state() returned (after "
          "start(); x stays the server's). A state of another size or with "
          "NaN/Inf raises InvalidArgumentError and changes nothing.")
      .def_property_readonly(
          "error_memory",
          [](py::object self) {
            return ReadOnlyView(
                self.cast<const PyWorkerClient&>().client().error_memory(),
                self);
          },
          "The worker's error memory e, a read-only view like params.")
      .def_property_readonly(
          "contributors",
          [](const PyWorkerClient& c) { return c.client().contributors(); })
      .def_property_readonly(
          "server_finished",
          [](const PyWorkerClient& c) { return c.client().server_finished(); })
      .def_property_readonly(
          "resyncs",
          [](const PyWorkerClient& c) { return c.client().resyncs(); })
      .def_property_readonly(
          "traffic",
          [](const PyWorkerClient& c) { return c.client().traffic(); },
          "A copy of the byte counts (effadam.Traffic): payload, fp32 "
          "equivalent and wire bytes by direction.");
}

}  // namespace effadam::python
