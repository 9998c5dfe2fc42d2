// What the in-process tests of ParameterServerService share: a service on
// a free loopback port with a stub (TestServer), a hand-driven Train
// stream (TrainStream), the test model and settings, and the RoundEngine a
// run must equal (ReferenceEngine). Used by server_service_test and
// bad_input_test.
#ifndef EFFADAM_TESTS_SERVICE_TEST_UTIL_H_
#define EFFADAM_TESTS_SERVICE_TEST_UTIL_H_

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/shard_plan.h"
#include "gtest/gtest.h"
#include "server/parameter_server_service.h"
#include "transport/compression_proto.h"
#include "transport/protocol_version.h"

namespace effadam {
namespace service_test {

// Every client call is bounded, so a server that hangs fails the test
// instead of blocking it.
inline constexpr double kCallSeconds = 10;

inline std::unique_ptr<grpc::ClientContext> Ctx(double seconds = kCallSeconds) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
  return ctx;
}

// w[2000] is compressed; b[7] is below min_compress_elements and goes fp32.
inline TensorLayout TestLayout() {
  return *TensorLayout::Create({{"w", {40, 50}}, {"b", {7}}});
}

inline CompressionConfig Compression(const std::string& worker,
                                     const std::string& server) {
  CompressionConfig c;
  c.worker_codec = *ParseCodecSpec(worker);
  c.server_codec = *ParseCodecSpec(server);
  c.options.block_size = 64;
  c.options.min_compress_elements = 64;
  return c;
}

inline ServerOptions Options(int workers, const std::string& worker_codec,
                             const std::string& server_codec) {
  ServerOptions o;
  o.workers = workers;
  o.compression = Compression(worker_codec, server_codec);
  o.round_timeout = absl::Seconds(30);
  o.max_chunk_bytes = 100;
  o.seed = 7;
  return o;
}

inline std::vector<float> InitialParams(size_t n) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = 0.001f * static_cast<float>(i) - 0.5f;
  // Bit patterns a lossy path would not keep.
  x[5] = -0.0f;
  x[6] = 1e-40f;  // subnormal
  return x;
}

inline std::vector<float> RandomUpdate(size_t n, int rank, int64_t round) {
  std::mt19937 rng(static_cast<uint32_t>(1000 * rank + round));
  std::normal_distribution<float> normal(0, 0.01f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

inline std::string Encode(const UpdateCodec& codec,
                          const std::vector<float>& u) {
  std::string out;
  EXPECT_TRUE(codec.EncodeWithFeedback(u, {}, 0, &out).ok());
  return out;
}

// A running service on a free loopback port and a stub talking to it.
// Counts the rejections the service reports, by reason (thread-safe: the
// service calls it from its RPC threads).
class RejectionCounter : public ServerObserver {
 public:
  void OnRejected(Rejection why) override {
    absl::MutexLock lock(&mu_);
    ++counts_[static_cast<int>(why)];
  }
  std::array<int, kNumRejections> counts() const {
    absl::MutexLock lock(&mu_);
    return counts_;
  }
  int count(Rejection why) const { return counts()[static_cast<int>(why)]; }
  int total() const {
    int sum = 0;
    for (int c : counts()) sum += c;
    return sum;
  }

 private:
  mutable absl::Mutex mu_;
  std::array<int, kNumRejections> counts_ ABSL_GUARDED_BY(mu_) = {};
};

class TestServer {
 public:
  explicit TestServer(const ServerOptions& options,
                      std::optional<Checkpoint> restore = std::nullopt)
      : options_(options) {
    auto service = ParameterServerService::Create(options);
    EXPECT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    if (restore.has_value()) {
      absl::Status s = service_->server().Restore(*std::move(restore));
      EXPECT_TRUE(s.ok()) << s;
    }
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    EXPECT_NE(port_, 0);
    stub_ = v1::ParameterServer::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials()));
    layout_ = TestLayout();
    // This server's part of the model.
    ShardCodecs codecs = *MakeShardCodecs(layout_, options.compression,
                                          options.shard, options.num_shards);
    worker_codec_ = std::move(codecs.worker);
    server_codec_ = std::move(codecs.server);
  }
  ~TestServer() {
    service_->server().Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(2));
  }

  v1::ParameterServer::Stub* stub() { return stub_.get(); }
  ParameterServerService& service() { return *service_; }
  const ServerOptions& options() const { return options_; }
  const TensorLayout& layout() const { return layout_; }
  const UpdateCodec& worker_codec() const { return *worker_codec_; }
  const UpdateCodec& server_codec() const { return *server_codec_; }
  // Elements of this server's part of x (all of it without sharding).
  size_t n() const { return worker_codec_->num_elements(); }

  v1::JoinRequest JoinRequest(int rank) const {
    v1::JoinRequest req;
    *req.mutable_layout() = LayoutToProto(layout_);
    *req.mutable_compression() = CompressionToProto(options_.compression);
    req.set_rank(rank);
    req.set_protocol(kProtocolVersion);
    return req;
  }

  grpc::Status Join(const v1::JoinRequest& req, v1::JoinResponse* resp) {
    return stub_->Join(Ctx().get(), req, resp);
  }
  // Joins with the test layout; the granted rank.
  int Join(int rank = -1, bool* upload = nullptr) {
    v1::JoinResponse resp;
    grpc::Status s = Join(JoinRequest(rank), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    if (upload != nullptr) *upload = resp.upload_initial_params();
    return s.ok() ? resp.rank() : -1;
  }

  grpc::Status UploadChunks(const std::vector<v1::ParamsChunk>& chunks) {
    auto ctx = Ctx();
    v1::UploadParamsResponse resp;
    auto writer = stub_->UploadParams(ctx.get(), &resp);
    for (const v1::ParamsChunk& c : chunks) {
      if (!writer->Write(c)) break;  // the server has already answered
    }
    writer->WritesDone();
    return writer->Finish();
  }
  static std::vector<v1::ParamsChunk> Chunks(int rank,
                                             const std::vector<float>& x,
                                             size_t per_chunk) {
    std::vector<v1::ParamsChunk> chunks;
    for (size_t b = 0; b < x.size(); b += per_chunk) {
      const size_t k = std::min(per_chunk, x.size() - b);
      v1::ParamsChunk c;
      c.set_rank(rank);
      c.set_begin(static_cast<int64_t>(b));
      c.set_values(reinterpret_cast<const char*>(x.data() + b), 4 * k);
      chunks.push_back(c);
    }
    return chunks;
  }
  grpc::Status Upload(int rank, const std::vector<float>& x) {
    return UploadChunks(Chunks(rank, x, options_.max_chunk_bytes / 4));
  }

  grpc::Status Fetch(int rank, std::vector<float>* x, int* chunks = nullptr,
                     int64_t* round = nullptr, double seconds = kCallSeconds) {
    auto ctx = Ctx(seconds);
    v1::FetchParamsRequest req;
    req.set_rank(rank);
    auto reader = stub_->FetchParams(ctx.get(), req);
    v1::ParamsChunk c;
    x->clear();
    int count = 0;
    while (reader->Read(&c)) {
      EXPECT_EQ(c.begin(), static_cast<int64_t>(x->size()));
      EXPECT_LE(c.values().size(), options_.max_chunk_bytes);
      const size_t k = c.values().size() / 4;
      x->resize(x->size() + k);
      std::memcpy(x->data() + x->size() - k, c.values().data(), 4 * k);
      if (round != nullptr) *round = c.round();
      ++count;
    }
    if (chunks != nullptr) *chunks = count;
    return reader->Finish();
  }

  v1::StatusResponse Status() {
    v1::StatusResponse resp;
    grpc::Status s = stub_->Status(Ctx().get(), v1::StatusRequest(), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }
  std::string Checksum() { return Status().params_checksum(); }

  // Joins `rank` with the initial parameters uploaded; x0 when it uploads.
  void JoinAndUpload(int rank, const std::vector<float>& x0) {
    bool upload = false;
    ASSERT_EQ(Join(rank, &upload), rank);
    ASSERT_TRUE(upload);
    grpc::Status s = Upload(rank, x0);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  // Polls Status until `want` workers are live (bounded).
  bool WaitLive(int want) {
    return WaitFor([&] { return Status().live_workers() == want; });
  }
  // Waits until the server has read more than `bytes` of messages from
  // workers (ServerSummary::traffic.up().wire): a Train stream's first
  // message has reached its handler, so cancelling the stream now makes
  // the rank leave instead of ending a call that never began.
  bool WaitWireUp(int64_t bytes) {
    return WaitFor([&] { return WireUp() > bytes; });
  }
  int64_t WireUp() { return service_->server().StatusNow().traffic.up().wire; }
  bool WaitFor(const std::function<bool()>& done) {
    const absl::Time deadline = absl::Now() + absl::Seconds(kCallSeconds);
    while (absl::Now() < deadline) {
      if (done()) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

 private:
  ServerOptions options_;
  std::unique_ptr<ParameterServerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::ParameterServer::Stub> stub_;
  int port_ = 0;
  TensorLayout layout_;
  std::shared_ptr<const UpdateCodec> worker_codec_, server_codec_;
};

// One worker's Train stream, driven by hand.
class TrainStream {
 public:
  TrainStream(TestServer* server, double seconds = kCallSeconds)
      : server_(server),
        ctx_(Ctx(seconds)),
        stream_(server->stub()->Train(ctx_.get())) {}

  bool Write(const v1::WorkerMessage& m) { return stream_->Write(m); }

  // Sends `update` for `round` in chunks of max_chunk_bytes.
  bool Send(int rank, int64_t round, const std::string& update,
            float loss = 0.5f) {
    return SendPart(rank, round, update, 0, update.size(), loss);
  }
  // Sends the chunks of `update` that start in [begin, end) (begin at a
  // chunk boundary).
  bool SendPart(int rank, int64_t round, const std::string& update,
                size_t begin, size_t end, float loss = 0.5f) {
    const size_t chunk = server_->options().max_chunk_bytes;
    for (size_t off = begin; off < end; off += chunk) {
      v1::WorkerMessage m;
      m.set_rank(rank);
      m.set_round(round);
      m.set_offset(static_cast<int64_t>(off));
      m.set_payload(update.substr(off, chunk));
      m.set_loss(loss);
      if (!stream_->Write(m)) return false;
    }
    return true;
  }

  // Reads one whole delta, as a worker does: CHUNK messages in order (a
  // RESTART starts again), until COMMIT, or DROP, after which *delta is the
  // zero delta a worker applies (and last_end() says DROP); false when the
  // stream ended first.
  bool ReadDelta(std::string* delta, int64_t* round, int* contributors) {
    const UpdateCodec& codec = server_->server_codec();
    const size_t size = codec.encoded_size();
    delta->clear();
    v1::ServerMessage m;
    bool first = true;
    while (true) {
      if (!stream_->Read(&m)) return false;
      if (first) *round = m.round();
      first = false;
      EXPECT_EQ(m.round(), *round);
      if (m.kind() == v1::ServerMessage::RESTART) {
        delta->clear();
        continue;
      }
      if (m.kind() != v1::ServerMessage::CHUNK) break;
      EXPECT_EQ(m.offset(), static_cast<int64_t>(delta->size()));
      EXPECT_LE(m.payload().size(), server_->options().max_chunk_bytes);
      delta->append(m.payload());
    }
    last_end_ = m.kind();
    last_taken_into_ = m.update_taken_into();
    *contributors = m.contributors();
    if (m.kind() == v1::ServerMessage::DROP) {
      EXPECT_TRUE(
          codec
              .EncodeWithFeedback(std::vector<float>(codec.num_elements()), {},
                                  0, delta)
              .ok());
    }
    EXPECT_EQ(delta->size(), size);
    return true;
  }
  // One message of the server; false when the stream ended.
  bool ReadMessage(v1::ServerMessage* m) { return stream_->Read(m); }
  // How the last delta read ended: COMMIT or DROP.
  v1::ServerMessage::Kind last_end() const { return last_end_; }
  // The last delta's end named this round as the one its late update went
  // into (0: none).
  int64_t last_taken_into() const { return last_taken_into_; }

  // The server's final status, after reading whatever it still sends.
  grpc::Status Finish() {
    stream_->WritesDone();
    v1::ServerMessage m;
    while (stream_->Read(&m)) {
    }
    return stream_->Finish();
  }
  void Cancel() { ctx_->TryCancel(); }

 private:
  TestServer* server_;
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<
      grpc::ClientReaderWriter<v1::WorkerMessage, v1::ServerMessage>>
      stream_;
  v1::ServerMessage::Kind last_end_ = v1::ServerMessage::CHUNK;
  int64_t last_taken_into_ = 0;
};

// The same math without the network: the reference a run must equal.
inline std::unique_ptr<RoundEngine> ReferenceEngine(
    const TestServer& server, const std::vector<float>& x0) {
  const CompressionConfig& c = server.options().compression;
  std::shared_ptr<const UpdateCodec> wc =
      *UpdateCodec::Create(server.layout(), c.worker_codec, c.options);
  std::shared_ptr<const UpdateCodec> sc =
      *UpdateCodec::Create(server.layout(), c.server_codec, c.options);
  RoundEngineOptions eo;
  eo.error_feedback = c.server_error_feedback;
  eo.seed = server.options().seed;
  return *RoundEngine::Create(wc, sc, x0, eo);
}

}  // namespace service_test
}  // namespace effadam

#endif  // EFFADAM_TESTS_SERVICE_TEST_UTIL_H_
