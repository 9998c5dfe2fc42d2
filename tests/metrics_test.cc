// The Prometheus metrics of both daemons against the real service and real
// WorkerClients on 127.0.0.1: the byte counters must equal the counts the
// summaries report, rejections must land under their reason, the gauges
// must say what the last round looked like, and the exposer must serve it
// all (or refuse an address with a status, not an exception).

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "metrics/prometheus_util.h"
#include "metrics/server_metrics.h"
#include "metrics/worker_metrics.h"
#include "prometheus/registry.h"
#include "server/parameter_server_service.h"
#include "tests/scrape_util.h"
#include "transport/compression_proto.h"
#include "transport/protocol_version.h"
#include "worker/worker_client.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;

constexpr int kCallSeconds = 10;

// w[2000] goes through the sign codec; b[7] travels as fp32.
TensorLayout TestLayout() {
  return *TensorLayout::Create({{"w", {40, 50}}, {"b", {7}}});
}

CompressionConfig Compression(const std::string& server_codec = "sign") {
  CompressionConfig c;
  c.worker_codec = *ParseCodecSpec("sign");
  c.server_codec = *ParseCodecSpec(server_codec);
  c.options.block_size = 64;
  c.options.min_compress_elements = 64;
  return c;
}

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(kCallSeconds));
  return ctx;
}

// The value of the series `name`{labels} in `registry`; NaN when absent.
// Histograms answer with their sample count.
double Value(prometheus::Registry& registry, const std::string& name,
             const std::map<std::string, std::string>& labels = {}) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& m : family.metric) {
      bool match = true;
      for (const auto& [key, value] : labels) {
        bool found = false;
        for (const prometheus::ClientMetric::Label& l : m.label) {
          found |= l.name == key && l.value == value;
        }
        match &= found;
      }
      if (!match) continue;
      switch (family.type) {
        case prometheus::MetricType::Counter:
          return m.counter.value;
        case prometheus::MetricType::Gauge:
          return m.gauge.value;
        case prometheus::MetricType::Histogram:
          return static_cast<double>(m.histogram.sample_count);
        default:
          return std::nan("");
      }
    }
  }
  return std::nan("");
}

double L2(absl::Span<const float> v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

// The service with ServerMetrics as its observer, on a free loopback port.
class MetricsServer {
 public:
  MetricsServer(int workers, int64_t rounds) : metrics_(workers) {
    ServerOptions o;
    o.workers = workers;
    o.rounds = rounds;
    o.compression = Compression();
    o.round_timeout = absl::Seconds(30);
    o.max_chunk_bytes = 100;  // several messages per update and per delta
    o.observer = &metrics_;
    auto service = ParameterServerService::Create(o);
    EXPECT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    EXPECT_NE(port_, 0);
    stub_ = v1::ParameterServer::NewStub(
        grpc::CreateChannel(address(), grpc::InsecureChannelCredentials()));
  }
  ~MetricsServer() {
    service_->server().Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(2));
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  ParameterServerService& service() { return *service_; }
  prometheus::Registry& registry() { return *metrics_.registry(); }
  v1::ParameterServer::Stub* stub() { return stub_.get(); }
  double Value(const std::string& name,
               const std::map<std::string, std::string>& labels = {}) {
    return effadam::Value(registry(), name, labels);
  }

 private:
  ServerMetrics metrics_;  // outlives the service, which reports to it
  std::unique_ptr<ParameterServerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::ParameterServer::Stub> stub_;
  int port_ = 0;
};

WorkerClientOptions ClientOptions(const std::string& server) {
  WorkerClientOptions o;
  o.server = server;
  o.compression = Compression();
  o.connect_timeout = absl::Seconds(kCallSeconds);
  return o;
}

TEST(Metrics, CountersEqualTheSummariesAfterARun) {
  constexpr int kWorkers = 2;
  constexpr int64_t kRounds = 3;
  MetricsServer server(kWorkers, kRounds);
  const TensorLayout layout = TestLayout();
  std::vector<float> x0(layout.num_elements());
  for (size_t i = 0; i < x0.size(); ++i) x0[i] = 0.01f * (i % 17);

  std::vector<std::unique_ptr<WorkerClient>> clients;
  std::vector<std::unique_ptr<WorkerMetrics>> worker_metrics;
  for (int r = 0; r < kWorkers; ++r) {
    clients.push_back(
        std::make_unique<WorkerClient>(ClientOptions(server.address())));
    ASSERT_TRUE(clients[r]->Join(layout).ok());
    ASSERT_EQ(clients[r]->rank(), r);
    ASSERT_TRUE(clients[r]->Start(x0).ok());
    worker_metrics.push_back(std::make_unique<WorkerMetrics>(r));
    worker_metrics[r]->Sync(*clients[r]);
  }
  // Loss reported in round t by rank r: t + r / 4 (exact in float).
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorkers; ++r) {
    threads.emplace_back([&, r] {
      WorkerClient& client = *clients[r];
      std::vector<float> grad(x0.size());
      for (int64_t t = 1; t <= kRounds; ++t) {
        for (size_t i = 0; i < grad.size(); ++i) {
          grad[i] = std::sin(0.1f * i + t + r);
        }
        const float loss = t + 0.25f * r;
        ASSERT_TRUE(client.Step(grad, loss).ok());
        worker_metrics[r]->RecordStep(client, 0.002 * t, loss);
      }
      EXPECT_TRUE(client.Finish().ok());
      worker_metrics[r]->Sync(client);
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(
      server.service().server().WaitUntilDone(absl::Seconds(kCallSeconds)));

  // The server's counters are its summary's numbers.
  const ServerSummary s = server.service().server().Summary();
  using Labels = std::map<std::string, std::string>;
  const Labels up = {{"direction", "worker_to_server"}};
  const Labels down = {{"direction", "server_to_worker"}};
  const Labels join = {{"direction", "join"}};
  EXPECT_EQ(server.Value("effadam_server_payload_bytes_total", up),
            s.traffic.up().payload);
  EXPECT_EQ(server.Value("effadam_server_payload_bytes_total", down),
            s.traffic.down().payload);
  EXPECT_EQ(server.Value("effadam_server_payload_bytes_total", join),
            s.traffic.join().payload);
  EXPECT_EQ(server.Value("effadam_server_wire_bytes_total", up),
            s.traffic.up().wire);
  EXPECT_EQ(server.Value("effadam_server_wire_bytes_total", down),
            s.traffic.down().wire);
  EXPECT_EQ(server.Value("effadam_server_wire_bytes_total", join),
            s.traffic.join().wire);
  EXPECT_EQ(server.Value("effadam_server_fp32_equivalent_bytes_total", up),
            s.traffic.up().fp32);
  EXPECT_EQ(server.Value("effadam_server_fp32_equivalent_bytes_total", down),
            s.traffic.down().fp32);
  EXPECT_TRUE(std::isnan(
      server.Value("effadam_server_fp32_equivalent_bytes_total", join)));

  // Both ends count the same messages; the payload is inside them.
  const std::unique_ptr<UpdateCodec> codec = *UpdateCodec::Create(
      layout, Compression().worker_codec, Compression().options);
  EXPECT_EQ(s.traffic.up().payload,
            kWorkers * kRounds * static_cast<int64_t>(codec->encoded_size()));
  EXPECT_EQ(s.traffic.join().payload, 3 * 4 * static_cast<int64_t>(x0.size()));
  TrafficCounts workers;
  for (int r = 0; r < kWorkers; ++r) workers += clients[r]->traffic();
  EXPECT_EQ(s.traffic.up().wire, workers.up().wire);
  EXPECT_EQ(s.traffic.down().wire, workers.down().wire);
  EXPECT_EQ(s.traffic.join().wire, workers.join().wire);
  EXPECT_GT(s.traffic.up().wire, s.traffic.up().payload);
  EXPECT_GT(s.traffic.down().wire, s.traffic.down().payload);
  EXPECT_GT(s.traffic.join().wire, s.traffic.join().payload);

  // The gauges describe round 3, after which every stream ended.
  EXPECT_EQ(server.Value("effadam_server_rounds_total"), kRounds);
  EXPECT_EQ(server.Value("effadam_server_round"), kRounds + 1);
  EXPECT_EQ(server.Value("effadam_server_round_duration_seconds"), kRounds);
  EXPECT_EQ(server.Value("effadam_server_expected_workers"), kWorkers);
  EXPECT_EQ(server.Value("effadam_server_round_contributors"), kWorkers);
  EXPECT_EQ(server.Value("effadam_server_lagging_workers"), 0);
  EXPECT_EQ(server.Value("effadam_server_live_workers"), 0);
  EXPECT_EQ(server.Value("effadam_server_dropped_workers_total"), 0);
  EXPECT_EQ(server.Value("effadam_server_train_loss"), kRounds + 0.125);
  const double norm = server.Value("effadam_server_error_memory_norm");
  EXPECT_TRUE(std::isfinite(norm) && norm > 0) << norm;  // sign loses a lot
  for (int i = 0; i < kNumRejections; ++i) {
    EXPECT_EQ(
        server.Value("effadam_server_rejected_messages_total",
                     {{"reason", RejectionName(static_cast<Rejection>(i))}}),
        0);
  }

  // Each worker's counters are its client's counts, under its rank.
  for (int r = 0; r < kWorkers; ++r) {
    prometheus::Registry& reg = *worker_metrics[r]->registry();
    const WorkerClient& c = *clients[r];
    const Labels rank = {{"rank", absl::StrCat(r)}};
    auto with = [&](Labels l) {
      l.insert(rank.begin(), rank.end());
      return l;
    };
    const TrafficCounts t = c.traffic();
    EXPECT_EQ(Value(reg, "effadam_worker_wire_bytes_total", with(up)),
              t.up().wire);
    EXPECT_EQ(Value(reg, "effadam_worker_wire_bytes_total", with(down)),
              t.down().wire);
    EXPECT_EQ(Value(reg, "effadam_worker_wire_bytes_total", with(join)),
              t.join().wire);
    EXPECT_EQ(Value(reg, "effadam_worker_payload_bytes_total", with(up)),
              t.up().payload);
    EXPECT_EQ(Value(reg, "effadam_worker_payload_bytes_total", with(down)),
              t.down().payload);
    EXPECT_EQ(Value(reg, "effadam_worker_payload_bytes_total", with(join)),
              t.join().payload);
    EXPECT_EQ(
        Value(reg, "effadam_worker_fp32_equivalent_bytes_total", with(up)),
        t.up().fp32);
    EXPECT_EQ(
        Value(reg, "effadam_worker_fp32_equivalent_bytes_total", with(down)),
        t.down().fp32);
    EXPECT_TRUE(std::isnan(
        Value(reg, "effadam_worker_fp32_equivalent_bytes_total", with(join))));
    EXPECT_EQ(Value(reg, "effadam_worker_rounds_total", rank), kRounds);
    EXPECT_EQ(Value(reg, "effadam_worker_round_duration_seconds", rank),
              kRounds);
    EXPECT_EQ(Value(reg, "effadam_worker_train_loss", rank),
              kRounds + 0.25 * r);
    // The step sums e's squares in its own order (SquareSum per part):
    // the same norm up to the rounding of a double sum.
    EXPECT_NEAR(Value(reg, "effadam_worker_error_memory_norm", rank),
                L2(c.error_memory()), 1e-12 * L2(c.error_memory()));
    EXPECT_GT(L2(c.error_memory()), 0);
    EXPECT_TRUE(std::isnan(Value(reg, "effadam_worker_test_accuracy", rank)));
  }
}

TEST(Metrics, RejectionsAreCountedByReason) {
  MetricsServer server(/*workers=*/2, /*rounds=*/0);
  const TensorLayout layout = TestLayout();
  auto join_request = [&](int rank, const std::string& server_codec) {
    v1::JoinRequest req;
    *req.mutable_layout() = LayoutToProto(layout);
    *req.mutable_compression() = CompressionToProto(Compression(server_codec));
    req.set_rank(rank);
    req.set_protocol(kProtocolVersion);
    return req;
  };
  auto rejected = [&](const std::string& reason) {
    return server.Value("effadam_server_rejected_messages_total",
                        {{"reason", reason}});
  };
  v1::JoinResponse resp;
  EXPECT_EQ(server.stub()
                ->Join(Ctx().get(), join_request(5, "sign"), &resp)
                .error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(rejected("bad_rank"), 1);
  EXPECT_EQ(server.stub()
                ->Join(Ctx().get(), join_request(0, "q8"), &resp)
                .error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(rejected("compression_mismatch"), 1);

  // A well-behaved rank 0 brings the parameters; rank 1 then misbehaves.
  WorkerClient good(ClientOptions(server.address()));
  ASSERT_TRUE(good.Join(layout).ok());
  ASSERT_TRUE(good.Start(std::vector<float>(layout.num_elements(), 0.5f)).ok());
  ASSERT_TRUE(
      server.stub()->Join(Ctx().get(), join_request(1, "sign"), &resp).ok());
  EXPECT_EQ(server.Value("effadam_server_live_workers"), 2);
  {
    auto ctx = Ctx();
    auto stream = server.stub()->Train(ctx.get());
    v1::WorkerMessage m;
    m.set_rank(1);
    m.set_round(1);
    m.set_offset(7);  // the first chunk of an update starts at 0
    m.set_payload("abc");
    ASSERT_TRUE(stream->Write(m));
    stream->WritesDone();
    const grpc::Status s = stream->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("offset"));
  }
  EXPECT_EQ(rejected("bad_offset"), 1);
  EXPECT_EQ(server.Value("effadam_server_dropped_workers_total"), 1);
  EXPECT_EQ(server.Value("effadam_server_live_workers"), 1);
  {
    // Rank 1 has left; its next stream is refused at the first message.
    auto ctx = Ctx();
    auto stream = server.stub()->Train(ctx.get());
    v1::WorkerMessage m;
    m.set_rank(1);
    m.set_round(1);
    m.set_payload("x");
    ASSERT_TRUE(stream->Write(m));
    stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  EXPECT_EQ(rejected("unknown_rank"), 1);
  // Refusals at the start of a stream are not dropped workers.
  EXPECT_EQ(server.Value("effadam_server_dropped_workers_total"), 1);

  int total = 0;
  for (int i = 0; i < kNumRejections; ++i) {
    total += rejected(RejectionName(static_cast<Rejection>(i)));
  }
  EXPECT_EQ(total, 4);
  // Rejected messages went over the wire too, and count on both sides.
  const ServerSummary s = server.service().server().Summary();
  EXPECT_EQ(server.Value("effadam_server_wire_bytes_total",
                         {{"direction", "worker_to_server"}}),
            s.traffic.up().wire);
  EXPECT_GT(s.traffic.up().wire, 0);
  EXPECT_EQ(s.traffic.up().payload, 0);
  EXPECT_EQ(
      server.Value("effadam_server_wire_bytes_total", {{"direction", "join"}}),
      s.traffic.join().wire);
  EXPECT_EQ(s.traffic.join().wire, good.traffic().join().wire);
}

TEST(Metrics, ExposerServesTheRegistryAndRefusesBadAddresses) {
  for (const char* bad : {"", "9464", "localhost", ":9464", "127.0.0.1:",
                          "127.0.0.1:http", "127.0.0.1:70000", "a:b:9464"}) {
    EXPECT_EQ(StartMetricsExposer(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  absl::StatusOr<std::unique_ptr<prometheus::Exposer>> exposer =
      StartMetricsExposer("127.0.0.1:0");
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int port = BoundPort(**exposer);
  ASSERT_GT(port, 0);
  ServerMetrics metrics(/*expected_workers=*/3);
  (*exposer)->RegisterCollectable(metrics.registry());
  metrics.OnRejected(Rejection::kRankTaken);
  const std::string text = Scrape(port);
  EXPECT_THAT(text, HasSubstr("200 OK"));
  EXPECT_THAT(text, HasSubstr("\neffadam_server_expected_workers 3\n"));
  EXPECT_THAT(text, HasSubstr("\neffadam_server_round 1\n"));
  EXPECT_THAT(text, HasSubstr("effadam_server_rejected_messages_total{reason="
                              "\"rank_taken\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE effadam_server_round_duration_seconds "
                              "histogram\n"));

  // The port is taken now: a status that names it, not an exception.
  absl::StatusOr<std::unique_ptr<prometheus::Exposer>> second =
      StartMetricsExposer(absl::StrCat("127.0.0.1:", port));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr(absl::StrCat(port)));
}

}  // namespace
}  // namespace effadam
