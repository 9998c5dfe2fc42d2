// effadam._effadam: the Python face of the C++ library. Nothing here
// computes: layouts, settings, codecs, the checksum and the worker client
// are the C++ ones; this file only converts arguments, results and errors.

#include <pybind11/numpy.h>
#include <pybind11/operators.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/checksum.h"
#include "core/compression_config.h"
#include "core/tensor_layout.h"
#include "core/worker_optimizer.h"
#include "python/arrays.h"
#include "python/codec_bindings.h"
#include "python/py_worker_client.h"
#include "python/status_error.h"
#include "transport/grpc_security.h"
#include "worker/idx_reader.h"
#include "worker/launch_env.h"
#include "worker/training_config.h"

// The defaults of CompressionConfig's arguments are the flags' defaults.

namespace py = pybind11;

namespace effadam::python {
namespace {

void BindLayout(py::module_& m) {
  py::class_<TensorLayout>(m, "TensorLayout", R"doc(
The model's named tensors, flattened one after another into x; every worker
and the server agree on it, and codec blocks never straddle two tensors.

    layout = effadam.TensorLayout([("conv1.weight", (16, 1, 3, 3)),
                                   ("conv1.bias", (16,))]))doc")
      .def(py::init([](const std::vector<
                        std::pair<std::string, std::vector<int64_t>>>& t) {
             std::vector<TensorSpec> specs;
             specs.reserve(t.size());
             for (const auto& [name, shape] : t) specs.push_back({name, shape});
             return ValueOrThrow(TensorLayout::Create(std::move(specs)));
           }),
           py::arg("tensors"),
           "tensors: (name, shape) pairs; names unique and non-empty, every "
           "dimension > 0.")
      .def_property_readonly(
          "tensors",
          [](const TensorLayout& l) {
            py::list out;
            for (const TensorSpec& t : l.tensors()) {
              out.append(py::make_tuple(t.name, py::tuple(py::cast(t.shape))));
            }
            return out;
          },
          "(name, shape) pairs in order.")
      .def_property_readonly("num_elements", &TensorLayout::num_elements)
      .def(
          "offset",
          [](const TensorLayout& l, size_t i) {
            if (i >= l.tensors().size()) {
              ThrowStatus(absl::OutOfRangeError(absl::StrCat(
                  "tensor ", i, " of a layout of ", l.tensors().size())));
            }
            return l.offset(i);
          },
          py::arg("i"), "Where tensor i starts in x.")
      .def("__len__", [](const TensorLayout& l) { return l.tensors().size(); })
      .def(py::self == py::self)
      .def("__repr__", [](const TensorLayout& l) {
        return absl::StrCat("TensorLayout(", l.DebugString(), ")");
      });
}

void BindSettings(py::module_& m) {
  // The arguments' defaults are the struct's, as the daemons' flags are.
  const CompressionConfig defaults;
  py::class_<CompressionConfig>(m, "CompressionConfig", R"doc(
Both directions' codecs and where error feedback runs; must equal the
server's settings (its --worker_codec, --server_codec, --block_size,
--min_compress_elements, --error_feedback), whose defaults these share.)doc")
      .def(py::init([](const std::string& worker_codec,
                       const std::string& server_codec, int64_t block_size,
                       int64_t min_compress_elements,
                       const std::string& error_feedback) {
             return ValueOrThrow(CompressionConfigFromFlagValues(
                 worker_codec, server_codec, block_size, min_compress_elements,
                 error_feedback));
           }),
           py::kw_only(),
           py::arg("worker_codec") = defaults.worker_codec.ToString(),
           py::arg("server_codec") = defaults.server_codec.ToString(),
           py::arg("block_size") =
               static_cast<int64_t>(defaults.options.block_size),
           py::arg("min_compress_elements") =
               static_cast<int64_t>(defaults.options.min_compress_elements),
           py::arg("error_feedback") = std::string(ErrorFeedbackName(defaults)),
           "Codec names: fp32, bf16, fp16, sign, q2..q8, q2s..q8s, topk:R. "
           "error_feedback: both, worker, server or none.")
      .def_property_readonly(
          "worker_codec",
          [](const CompressionConfig& c) { return c.worker_codec.ToString(); })
      .def_property_readonly(
          "server_codec",
          [](const CompressionConfig& c) { return c.server_codec.ToString(); })
      .def_property_readonly(
          "block_size",
          [](const CompressionConfig& c) { return c.options.block_size; })
      .def_property_readonly("min_compress_elements",
                             [](const CompressionConfig& c) {
                               return c.options.min_compress_elements;
                             })
      .def_property_readonly("error_feedback",
                             [](const CompressionConfig& c) {
                               return std::string(ErrorFeedbackName(c));
                             })
      .def("__repr__", [](const CompressionConfig& c) {
        return absl::StrCat(
            "CompressionConfig(worker_codec='", c.worker_codec.ToString(),
            "', server_codec='", c.server_codec.ToString(),
            "', block_size=", c.options.block_size,
            ", min_compress_elements=", c.options.min_compress_elements,
            ", error_feedback='", ErrorFeedbackName(c), "')");
      });

  const AdamOptions adam;
  py::class_<AdamOptions>(m, "AdamOptions", R"doc(
The worker's Adam: d = lr_t * m_hat / (sqrt(v_hat) + eps), with
lr_schedule 'constant' (lr), 'inverse_sqrt' (lr / sqrt(t)) or
'warmup_cosine' (linear warm-up over warmup_rounds, then a half cosine to 0
at schedule_rounds), beta2_schedule 'constant' (beta2) or 'theta'
(1 - theta / t). weight_decay is decoupled (AdamW: d += lr_t * wd * x) when
decoupled_weight_decay, else L2 added to the gradient (torch's Adam).)doc")
      .def(
          py::init([](float lr, float beta1, float beta2, float eps,
                      const std::string& lr_schedule,
                      const std::string& beta2_schedule, float theta,
                      bool bias_correction, float weight_decay,
                      bool decoupled_weight_decay, int64_t warmup_rounds,
                      int64_t schedule_rounds) {
            AdamOptions a;
            a.lr = lr;
            a.beta1 = beta1;
            a.beta2 = beta2;
            a.eps = eps;
            a.lr_schedule = ValueOrThrow(ParseLrSchedule(lr_schedule));
            a.beta2_schedule = ValueOrThrow(ParseBeta2Schedule(beta2_schedule));
            a.theta = theta;
            a.bias_correction = bias_correction;
            a.weight_decay = weight_decay;
            a.weight_decay_mode = decoupled_weight_decay
                                      ? WeightDecayMode::kDecoupled
                                      : WeightDecayMode::kL2;
            a.warmup_rounds = warmup_rounds;
            a.schedule_rounds = schedule_rounds;
            ThrowIfError(ValidateAdamOptions(a));
            return a;
          }),
          py::kw_only(), py::arg("lr") = adam.lr, py::arg("beta1") = adam.beta1,
          py::arg("beta2") = adam.beta2, py::arg("eps") = adam.eps,
          py::arg("lr_schedule") = LrScheduleName(adam.lr_schedule),
          py::arg("beta2_schedule") = Beta2ScheduleName(adam.beta2_schedule),
          py::arg("theta") = adam.theta,
          py::arg("bias_correction") = adam.bias_correction,
          py::arg("weight_decay") = adam.weight_decay,
          py::arg("decoupled_weight_decay") =
              adam.weight_decay_mode == WeightDecayMode::kDecoupled,
          py::arg("warmup_rounds") = adam.warmup_rounds,
          py::arg("schedule_rounds") = adam.schedule_rounds)
      .def_readonly("lr", &AdamOptions::lr)
      .def_readonly("beta1", &AdamOptions::beta1)
      .def_readonly("beta2", &AdamOptions::beta2)
      .def_readonly("eps", &AdamOptions::eps)
      .def_readonly("theta", &AdamOptions::theta)
      .def_readonly("bias_correction", &AdamOptions::bias_correction)
      .def_readonly("weight_decay", &AdamOptions::weight_decay)
      .def_property_readonly("decoupled_weight_decay",
                             [](const AdamOptions& a) {
                               return a.weight_decay_mode ==
                                      WeightDecayMode::kDecoupled;
                             })
      .def_readonly("warmup_rounds", &AdamOptions::warmup_rounds)
      .def_readonly("schedule_rounds", &AdamOptions::schedule_rounds)
      .def_property_readonly(
          "lr_schedule",
          [](const AdamOptions& a) { return LrScheduleName(a.lr_schedule); })
      .def_property_readonly("beta2_schedule", [](const AdamOptions& a) {
        return Beta2ScheduleName(a.beta2_schedule);
      });

  py::class_<ClientSecurity>(m, "ClientSecurity", R"doc(
TLS and the shared token of a client (docs/security.md), loaded and checked
now from the same files as the binaries' --tls_ca_file, --tls_cert_file,
--tls_key_file, --tls_server_name and --auth_token_file. The default is a
plaintext channel without a token.)doc")
      .def(py::init([](const std::string& tls_ca_file,
                       const std::string& tls_cert_file,
                       const std::string& tls_key_file,
                       const std::string& tls_server_name,
                       const std::string& auth_token_file) {
             ClientSecurityFiles f;
             f.ca_file = tls_ca_file;
             f.cert_file = tls_cert_file;
             f.key_file = tls_key_file;
             f.server_name = tls_server_name;
             f.token_file = auth_token_file;
             return ValueOrThrow(LoadClientSecurity(f));
           }),
           py::kw_only(), py::arg("tls_ca_file") = "",
           py::arg("tls_cert_file") = "", py::arg("tls_key_file") = "",
           py::arg("tls_server_name") = "", py::arg("auth_token_file") = "")
      .def_readonly("tls", &ClientSecurity::tls)
      .def_property_readonly(
          "client_certificate",
          [](const ClientSecurity& s) { return !s.cert_pem.empty(); })
      .def_property_readonly(
          "token", [](const ClientSecurity& s) { return !s.token.empty(); },
          "Whether a token is sent (the token itself is not exposed).");
}

// effadam.resolve_placement: worker/launch_env.h, the same function
// effadam-worker calls, over os.environ or a given mapping.
void BindPlacement(py::module_& m) {
  py::class_<WorkerPlacement>(m, "WorkerPlacement",
                              "Where a worker's server is and which rank it "
                              "claims (resolve_placement).")
      .def_readonly("server", &WorkerPlacement::server)
      .def_readonly("num_shards", &WorkerPlacement::num_shards)
      .def_readonly("rank", &WorkerPlacement::rank)
      .def_readonly("world_size", &WorkerPlacement::world_size)
      .def_readonly("server_source", &WorkerPlacement::server_source)
      .def_readonly("rank_source", &WorkerPlacement::rank_source)
      .def("__repr__", [](const WorkerPlacement& p) {
        return absl::StrCat("WorkerPlacement(server='", p.server, "' from ",
                            p.server_source, ", num_shards=", p.num_shards,
                            ", rank=", p.rank, " from ", p.rank_source,
                            ", world_size=", p.world_size, ")");
      });
  m.def(
      "resolve_placement",
      [](std::optional<std::string> server, std::optional<int> num_shards,
         std::optional<int> rank, std::optional<py::dict> environ) {
        GivenPlacement g{std::move(server), num_shards, rank};
        EnvLookup env = ProcessEnvironment();
        std::map<std::string, std::string> copy;
        if (environ.has_value()) {
          for (auto [k, v] : *environ) {
            copy[py::str(k)] = py::str(v);
          }
          env = [&copy](const std::string& name) -> std::optional<std::string> {
            auto it = copy.find(name);
            if (it == copy.end()) return std::nullopt;
            return it->second;
          };
        }
        return ValueOrThrow(ResolvePlacement(g, env));
      },
      py::kw_only(), py::arg("server") = py::none(),
      py::arg("num_shards") = py::none(), py::arg("rank") = py::none(),
      py::arg("environ") = py::none(),
      "server, num_shards and rank where given (not None), the others from "
      "the environment (environ, default the process's): EFFADAM_SERVER, "
      "else MASTER_ADDR:EFFADAM_PORT (default port 50051), else "
      "127.0.0.1:50051; EFFADAM_NUM_SHARDS; RANK, else JOB_COMPLETION_INDEX, "
      "else -1; WORLD_SIZE. InvalidArgumentError names a bad variable or a "
      "rank outside WORLD_SIZE. What effadam-worker does with its flags.");
  m.def(
      "check_world_size",
      [](const WorkerPlacement& p, int server_workers,
         const std::string& server) {
        ThrowIfError(CheckWorldSize(p, server_workers, server));
      },
      py::arg("placement"), py::arg("server_workers"), py::arg("server"),
      "After join: FailedPreconditionError naming both when WORLD_SIZE was "
      "set and differs from the server's --workers.");
}

// The C++ IDX reader (worker/idx_reader.h) with the data handed to numpy
// without a copy: the arrays share one capsule that owns the Dataset.
py::tuple LoadIdx(const std::string& images_path,
                  const std::string& labels_path) {
  absl::StatusOr<Dataset> loaded;
  {
    py::gil_scoped_release nogil;
    loaded = LoadIdxDataset(images_path, labels_path);
  }
  auto* d = new Dataset(ValueOrThrow(std::move(loaded)));
  py::capsule owner(d, [](void* p) { delete static_cast<Dataset*>(p); });
  const py::ssize_t n = d->num_examples;
  py::array_t<float> images({n, static_cast<py::ssize_t>(d->dim)},
                            d->images.data(), owner);
  py::array_t<uint8_t> labels({n}, d->labels.data(), owner);
  return py::make_tuple(images, labels);
}

}  // namespace
}  // namespace effadam::python

PYBIND11_MODULE(_effadam, m) {
  using namespace effadam::python;
  m.doc() =
      "effadam: Efficient-Adam workers and codecs from the C++ library "
      "(see docs/python.md).";
  RegisterStatusErrors(m);
  BindLayout(m);
  BindSettings(m);
  BindCodecs(m);
  BindWorkerClient(m);
  BindPlacement(m);
  m.def("load_idx_dataset", &LoadIdx, py::arg("images_path"),
        py::arg("labels_path"),
        "An IDX image file and its label file (gzip'ed or plain), read by "
        "the C++ reader the built-in models use: (images, labels), float32 "
        "[n, rows*cols] in [0, 1] and uint8 [n]. Errors name the file.");
  m.def(
      "params_checksum",
      [](py::handle x) {
        return effadam::ParamsChecksum(ToFloats(x, "x").span);
      },
      py::arg("x"),
      "XXH3-64 of x's float32 bytes as 16 hex digits: the params_checksum of "
      "the servers' and workers' summaries.");
}
