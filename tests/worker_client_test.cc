// WorkerClient against a scripted in-process server on 127.0.0.1: the
// protocol paths a well-behaved effadam-server never takes (malformed
// deltas, settings it should have refused, parameters not there yet) and
// the client's own promises (chunking, byte counts, Cancel, a clean end).
// The real server is exercised by tests/cluster_test.py.

#include "worker/worker_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "effadam/v1/parameter_server.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transport/protocol_version.h"

namespace effadam {
namespace header_example {

// The usage example of worker/worker_client.h, compiled from the header
// (tests/header_example.py).
absl::Status Train(const WorkerClientOptions& options,
                   const TensorLayout& layout,
                   absl::Span<const float> initial_params, int64_t last_round);

// What the example leaves to its user: a gradient of ones.
float ComputeGradient(absl::Span<const float> params, absl::Span<float> grad) {
  EXPECT_EQ(params.size(), grad.size());
  std::fill(grad.begin(), grad.end(), 1.0f);
  return 0.5f;
}

}  // namespace header_example
namespace {

namespace pb = ::effadam::v1;
using ::testing::HasSubstr;

constexpr int kElements = 10;       // one fp32 tensor: updates are 40 bytes
constexpr int kMaxChunkBytes = 16;  // so they travel as 16 + 16 + 8

TensorLayout Layout() { return *TensorLayout::Create({{"w", {kElements}}}); }

CompressionConfig Fp32() {
  CompressionConfig c;
  c.worker_codec = *ParseCodecSpec("fp32");
  c.server_codec = *ParseCodecSpec("fp32");
  c.options.block_size = 8;
  c.options.min_compress_elements = 1;
  return c;
}

std::string Floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()),
                     v.size() * sizeof(float));
}

using Stream = grpc::ServerReaderWriter<pb::ServerMessage, pb::WorkerMessage>;

// Answers like effadam-server unless a test changes a knob. Train collects
// each round's update and hands it to `respond`, which writes the delta.
class FakeServer final : public pb::ParameterServer::Service {
 public:
  FakeServer() {
    join_reply.set_rank(0);
    join_reply.set_round(1);
    join_reply.set_upload_initial_params(true);
    join_reply.set_num_elements(kElements);
    join_reply.set_max_chunk_bytes(kMaxChunkBytes);
    join_reply.set_expected_workers(1);
    join_reply.set_protocol(kProtocolVersion);
    const CompressionConfig c = Fp32();
    pb::CompressionSettings* s = join_reply.mutable_compression();
    s->set_worker_codec("fp32");
    s->set_server_codec("fp32");
    s->set_block_size(8);
    s->set_min_compress_elements(1);
    s->set_worker_error_feedback(c.worker_error_feedback);
    s->set_server_error_feedback(c.server_error_feedback);
    // Default delta: q = 0.5 everywhere, in chunks like the update's.
    respond = [](Stream* stream, int64_t round, const std::string&) {
      return SendDelta(stream, round,
                       Floats(std::vector<float>(kElements, 0.5f)));
    };
  }

  // `taken_into`: the COMMIT says the worker's late update went into that
  // round (whose delta the caller sends next).
  static bool SendDelta(Stream* stream, int64_t round, const std::string& delta,
                        int64_t taken_into = 0) {
    pb::ServerMessage m;
    m.set_round(round);
    m.set_contributors(1);
    for (size_t off = 0; off < delta.size(); off += kMaxChunkBytes) {
      m.set_offset(static_cast<int64_t>(off));
      m.set_payload(delta.substr(off, kMaxChunkBytes));
      if (!stream->Write(m)) return false;
    }
    return SendEnd(stream, round, pb::ServerMessage::COMMIT, taken_into);
  }

  static bool SendEnd(Stream* stream, int64_t round,
                      pb::ServerMessage::Kind kind, int64_t taken_into = 0) {
    pb::ServerMessage m;
    m.set_round(round);
    m.set_contributors(1);
    m.set_kind(kind);
    m.set_update_taken_into(taken_into);
    return stream->Write(m);
  }

  grpc::Status Join(grpc::ServerContext*, const pb::JoinRequest* request,
                    pb::JoinResponse* reply) override {
    absl::MutexLock lock(&mu);
    join_request = *request;
    ++joins;
    if (clock != nullptr) {
      clock->Advance(join_takes);
      // Long enough for a call whose deadline has passed to see it.
      absl::SleepFor(absl::Milliseconds(20));
    }
    if (!join_status.ok()) return join_status;
    *reply = join_reply;
    return grpc::Status::OK;
  }

  grpc::Status UploadParams(grpc::ServerContext*,
                            grpc::ServerReader<pb::ParamsChunk>* reader,
                            pb::UploadParamsResponse*) override {
    pb::ParamsChunk chunk;
    absl::MutexLock lock(&mu);
    while (reader->Read(&chunk)) uploaded.push_back(chunk);
    return grpc::Status::OK;
  }

  grpc::Status FetchParams(
      grpc::ServerContext*, const pb::FetchParamsRequest*,
      grpc::ServerWriter<pb::ParamsChunk>* writer) override {
    {
      absl::MutexLock lock(&mu);
      if (fetch_unavailable > 0) {
        --fetch_unavailable;
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no params yet");
      }
    }
    const std::string bytes = Floats(x);
    pb::ParamsChunk chunk;
    chunk.set_round(fetch_round);
    for (size_t off = 0; off < bytes.size(); off += kMaxChunkBytes) {
      chunk.set_begin(static_cast<int64_t>(off / sizeof(float)));
      chunk.set_values(bytes.substr(off, kMaxChunkBytes));
      writer->Write(chunk);
    }
    return grpc::Status::OK;
  }

  grpc::Status Train(grpc::ServerContext* context, Stream* stream) override {
    pb::WorkerMessage m;
    std::string update;
    while (stream->Read(&m)) {
      {
        absl::MutexLock lock(&mu);
        messages.push_back(m);
      }
      update += m.payload();
      if (update.size() < update_bytes) continue;
      if (!respond(stream, m.round(), update)) break;
      update.clear();
    }
    absl::MutexLock lock(&mu);
    train_cancelled = context->IsCancelled();
    return end_status;
  }

  grpc::Status Status(grpc::ServerContext*, const pb::StatusRequest*,
                      pb::StatusResponse*) override {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "");
  }

  // Knobs, set before the client connects.
  pb::JoinResponse join_reply;
  grpc::Status join_status = grpc::Status::OK;  // else Join's answer
  // Each Join advances `clock` (if set) by `join_takes`.
  FakeClock* clock = nullptr;
  absl::Duration join_takes;
  int fetch_unavailable = 0;
  std::vector<float> x = std::vector<float>(kElements, 1.0f);
  int64_t fetch_round = 1;
  // Writes the delta of `round`; false ends the stream with end_status.
  std::function<bool(Stream*, int64_t round, const std::string& update)>
      respond;
  grpc::Status end_status = grpc::Status::OK;
  // The size of an update (fp32 by default).
  size_t update_bytes = kElements * sizeof(float);

  // What the client sent.
  absl::Mutex mu;
  pb::JoinRequest join_request;
  int joins = 0;
  std::vector<pb::ParamsChunk> uploaded;
  std::vector<pb::WorkerMessage> messages;
  bool train_cancelled = false;
};

// Serves `fake` on a free loopback port (*port); null if that failed.
std::unique_ptr<grpc::Server> Serve(FakeServer* fake, int* port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           port);
  builder.RegisterService(fake);
  return builder.BuildAndStart();
}

class WorkerClientTest : public ::testing::Test {
 protected:
  void StartServer() {
    server_ = Serve(&fake_, &port_);
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now()));
  }

  WorkerClientOptions Options() const {
    WorkerClientOptions o;
    o.server = "127.0.0.1:" + std::to_string(port_);
    o.compression = Fp32();
    o.adam.lr = 0.1f;
    o.connect_timeout = absl::Seconds(10);
    o.finish_timeout = absl::Seconds(5);
    return o;
  }

  FakeServer fake_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(WorkerClientTest, JoinsUploadsFetchesAndStepsInChunks) {
  StartServer();
  const std::vector<float> x0(kElements, 2.0f);
  auto client = WorkerClient::Connect(Options(), Layout(), x0);
  ASSERT_TRUE(client.ok()) << client.status();
  WorkerClient& c = **client;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.num_workers(), 1);
  EXPECT_EQ(c.round(), 1);
  {
    absl::MutexLock lock(&fake_.mu);
    ASSERT_EQ(fake_.join_request.layout_size(), 1);
    EXPECT_EQ(fake_.join_request.layout(0).name(), "w");
    EXPECT_EQ(fake_.join_request.compression().worker_codec(), "fp32");
    EXPECT_EQ(fake_.join_request.rank(), -1);
    // 40 bytes of x0 in chunks of at most 16, each starting where the last
    // ended.
    ASSERT_EQ(fake_.uploaded.size(), 3u);
    std::string up;
    for (const pb::ParamsChunk& ch : fake_.uploaded) {
      EXPECT_EQ(ch.begin() * 4, static_cast<int64_t>(up.size()));
      EXPECT_LE(ch.values().size(), static_cast<size_t>(kMaxChunkBytes));
      up += ch.values();
    }
    EXPECT_EQ(up, Floats(x0));
  }
  // The replica is the server's x, not the uploaded one.
  EXPECT_EQ(std::vector<float>(c.params().begin(), c.params().end()), fake_.x);

  std::vector<float> grad(kElements, 1.0f);
  ASSERT_TRUE(c.Step(grad, 3.5f).ok());
  ASSERT_TRUE(c.Step(grad, 2.5f).ok());
  EXPECT_EQ(c.round(), 3);
  EXPECT_EQ(c.contributors(), 1);
  // Two deltas of 0.5 applied to the fetched 1.0.
  for (float v : c.params()) EXPECT_EQ(v, 0.0f);
  {
    absl::MutexLock lock(&fake_.mu);
    ASSERT_EQ(fake_.messages.size(), 6u);
    for (size_t i = 0; i < 6; ++i) {
      const pb::WorkerMessage& m = fake_.messages[i];
      EXPECT_EQ(m.round(), 1 + static_cast<int64_t>(i / 3));
      EXPECT_EQ(m.offset(), 16 * static_cast<int64_t>(i % 3));
      // The loss rides on the chunk that completes the update.
      EXPECT_EQ(m.loss(), i == 2 ? 3.5f : i == 5 ? 2.5f : 0.0f);
    }
  }
  EXPECT_EQ(c.traffic().up().payload, 80);
  EXPECT_EQ(c.traffic().down().payload, 80);
  EXPECT_EQ(c.traffic().fp32_equivalent(), 160);
  EXPECT_EQ(c.traffic().join().payload, 80);  // upload + fetch
  EXPECT_TRUE(c.Finish().ok());
  EXPECT_TRUE(c.Finish().ok());
}

TEST_F(WorkerClientTest, RankStillTakenGivesUpAtReconnectTimeoutOnTheClock) {
  // The rank stays taken and each Join takes 3 minutes of the injected
  // clock: the first answer comes before reconnect_timeout (5 minutes), so
  // the client asks again after its backoff, past connect_timeout (1
  // minute), which no longer bounds the call; the second answer comes
  // after reconnect_timeout, so the client gives up. Minutes of the clock
  // pass in well under a second.
  FakeClock clock;
  fake_.clock = &clock;
  fake_.join_takes = absl::Minutes(3);
  fake_.join_status =
      grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "rank 0 is still held");
  StartServer();
  WorkerClientOptions o = Options();
  o.rank = 0;
  o.clock = &clock;
  o.connect_timeout = absl::Minutes(1);
  o.reconnect_timeout = absl::Minutes(5);
  WorkerClient c(o);
  // The backoff between the attempts is 100 ms of the clock, which stands
  // still unless moved: after the first answer this thread moves it on.
  std::thread ticker([&] {
    auto joins = [&] {
      absl::MutexLock lock(&fake_.mu);
      return fake_.joins;
    };
    while (joins() < 1) absl::SleepFor(absl::Milliseconds(1));
    while (joins() < 2) {
      clock.Advance(absl::Milliseconds(10));
      absl::SleepFor(absl::Milliseconds(1));
    }
  });
  const absl::Time start = absl::Now();
  const absl::Status s = c.Join(Layout());
  ticker.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_THAT(s.message(), HasSubstr("still held"));
  {
    absl::MutexLock lock(&fake_.mu);
    EXPECT_EQ(fake_.joins, 2);
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST_F(WorkerClientTest, TheHeadersExampleTrainsThroughTheLastRound) {
  StartServer();
  const absl::Status s = header_example::Train(
      Options(), Layout(), std::vector<float>(kElements, 2.0f), 3);
  EXPECT_TRUE(s.ok()) << s;
  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.messages.size(), 9u);  // 3 rounds of 3 chunks
  EXPECT_EQ(fake_.messages.back().round(), 3);
}

TEST_F(WorkerClientTest, TheHeadersExampleEndsWellWhenTheServerFinishes) {
  fake_.respond = [](Stream*, int64_t, const std::string&) { return false; };
  StartServer();
  const absl::Status s = header_example::Train(
      Options(), Layout(), std::vector<float>(kElements, 2.0f), 100);
  EXPECT_TRUE(s.ok()) << s;
}

TEST_F(WorkerClientTest, RetriesUntilTheParametersExist) {
  fake_.join_reply.set_upload_initial_params(false);
  fake_.fetch_unavailable = 2;
  fake_.fetch_round = 7;
  StartServer();
  auto client = WorkerClient::Connect(Options(), Layout(), {});
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->round(), 7);
  EXPECT_EQ((*client)->traffic().join().payload, 40);
  absl::MutexLock lock(&fake_.mu);
  EXPECT_TRUE(fake_.uploaded.empty());
}

TEST_F(WorkerClientTest, GivesUpOnUnavailableAfterTheTimeout) {
  fake_.join_reply.set_upload_initial_params(false);
  fake_.fetch_unavailable = 1000;
  StartServer();
  WorkerClientOptions o = Options();
  o.connect_timeout = absl::Milliseconds(500);
  auto client = WorkerClient::Connect(o, Layout(), {});
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(client.status().message(), HasSubstr("no params yet"));
}

TEST_F(WorkerClientTest, RejectsSettingsTheServerShouldHaveRefused) {
  fake_.join_reply.mutable_compression()->set_server_codec("sign");
  StartServer();
  WorkerClient c(Options());
  const absl::Status s = c.Join(Layout());
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("sign"));
}

TEST_F(WorkerClientTest, AServerOfAnotherProtocolVersionIsRefusedAtJoin) {
  fake_.join_reply.clear_protocol();  // a server from before versions
  StartServer();
  WorkerClient c(Options());
  const absl::Status s = c.Join(Layout());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("speaks protocol version 0"));
}

TEST_F(WorkerClientTest, ADroppedRoundLeavesTheReplicaAndARestartStartsOver) {
  int rounds = 0;
  fake_.respond = [&rounds](Stream* stream, int64_t round, const std::string&) {
    if (++rounds == 1) {
      return FakeServer::SendEnd(stream, round, pb::ServerMessage::DROP);
    }
    // Half of a delta of 9s, then RESTART and the real delta.
    pb::ServerMessage m;
    m.set_round(round);
    m.set_payload(
        Floats(std::vector<float>(kElements, 9.0f)).substr(0, kMaxChunkBytes));
    if (!stream->Write(m)) return false;
    if (!FakeServer::SendEnd(stream, round, pb::ServerMessage::RESTART)) {
      return false;
    }
    return FakeServer::SendDelta(stream, round,
                                 Floats(std::vector<float>(kElements, 0.5f)));
  };
  StartServer();
  auto client = WorkerClient::Connect(Options(), Layout(),
                                      std::vector<float>(kElements, 2.0f));
  ASSERT_TRUE(client.ok()) << client.status();
  WorkerClient& c = **client;
  const std::vector<float> x(c.params().begin(), c.params().end());
  ASSERT_TRUE(c.Step(std::vector<float>(kElements, 1.0f), 1).ok());
  EXPECT_EQ(std::vector<float>(c.params().begin(), c.params().end()), x);
  EXPECT_EQ(c.round(), 2);
  ASSERT_TRUE(c.Step(std::vector<float>(kElements, 1.0f), 1).ok());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(c.params()[i], x[i] - 0.5f);
  EXPECT_TRUE(c.Finish().ok());
}

TEST_F(WorkerClientTest, DeltaOfAnotherRoundEndsTheStream) {
  fake_.respond = [](Stream* stream, int64_t round, const std::string&) {
    return FakeServer::SendDelta(stream, round + 1,
                                 Floats(std::vector<float>(kElements, 0.5f)));
  };
  StartServer();
  auto client =
      WorkerClient::Connect(Options(), Layout(), std::vector<float>(kElements));
  ASSERT_TRUE(client.ok()) << client.status();
  const std::vector<float> before((*client)->params().begin(),
                                  (*client)->params().end());
  const absl::Status s =
      (*client)->Step(std::vector<float>(kElements, 1.0f), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("round 1"));
  EXPECT_EQ(std::vector<float>((*client)->params().begin(),
                               (*client)->params().end()),
            before);
  EXPECT_EQ((*client)->Finish(), s);
}

TEST_F(WorkerClientTest, ALateUpdateAppliesEveryMissedDeltaInOrder) {
  // Round 1's update went into round 3: the deltas of rounds 1 (0.5), 2
  // (dropped) and 3 (0.25) come in one exchange; the worker applies them
  // and sends round 4 next.
  fake_.respond = [](Stream* stream, int64_t round, const std::string&) {
    if (round == 1) {
      return FakeServer::SendDelta(stream, 1,
                                   Floats(std::vector<float>(kElements, 0.5f)),
                                   /*taken_into=*/3) &&
             FakeServer::SendEnd(stream, 2, pb::ServerMessage::DROP,
                                 /*taken_into=*/3) &&
             FakeServer::SendDelta(
                 stream, 3, Floats(std::vector<float>(kElements, 0.25f)));
    }
    return FakeServer::SendDelta(stream, round,
                                 Floats(std::vector<float>(kElements, 0.5f)));
  };
  StartServer();
  auto client = WorkerClient::Connect(Options(), Layout(),
                                      std::vector<float>(kElements, 2.0f));
  ASSERT_TRUE(client.ok()) << client.status();
  const std::vector<float> grad(kElements, 1.0f);
  ASSERT_TRUE((*client)->Step(grad, 1).ok());
  EXPECT_EQ((*client)->round(), 4);
  // x was the server's 1.0 (FetchParams): 1 - 0.5 - 0.25.
  for (float v : (*client)->params()) ASSERT_EQ(v, 0.25f);
  ASSERT_TRUE((*client)->Step(grad, 1).ok());
  EXPECT_EQ((*client)->round(), 5);
  for (float v : (*client)->params()) ASSERT_EQ(v, -0.25f);
  {
    absl::MutexLock lock(&fake_.mu);
    EXPECT_EQ(fake_.messages.back().round(), 4);
  }
  const TrafficCounts t = (*client)->traffic();
  EXPECT_EQ(t.down().payload, 3 * kElements * 4);
  EXPECT_EQ(t.up().payload, 2 * kElements * 4);
  EXPECT_EQ((*client)->resyncs(), 0);
  EXPECT_TRUE((*client)->Finish().ok());
}

TEST_F(WorkerClientTest, MissedDeltasThatDoNotAddUpEndTheStream) {
  // A round taken into that is not later, one that changes, and an end
  // before the round it named: a broken server.
  using Respond = std::function<bool(Stream*, int64_t, const std::string&)>;
  const std::string half = Floats(std::vector<float>(kElements, 0.5f));
  const std::vector<std::pair<Respond, std::string>> cases = {
      {[half](Stream* stream, int64_t round, const std::string&) {
         return FakeServer::SendDelta(stream, round, half, round);
       },
       "taken into round 1"},
      {[half](Stream* stream, int64_t round, const std::string&) {
         return FakeServer::SendDelta(stream, round, half, round + 2) &&
                FakeServer::SendDelta(stream, round + 1, half, round + 3);
       },
       "taken into round 4"},
      {[half](Stream* stream, int64_t round, const std::string&) {
         return FakeServer::SendDelta(stream, round, half, round + 2) &&
                FakeServer::SendDelta(stream, round + 1, half);
       },
       "the deltas end at 2"},
      {[half](Stream* stream, int64_t round, const std::string&) {
         return FakeServer::SendDelta(stream, round, half,
                                      round + ShardLink::kMostMissedRounds + 1);
       },
       "taken into round 18"},
  };
  for (const auto& [respond, says] : cases) {
    SCOPED_TRACE(says);
    FakeServer fake;
    fake.respond = respond;
    int port = 0;
    std::unique_ptr<grpc::Server> server = Serve(&fake, &port);
    ASSERT_NE(server, nullptr);
    WorkerClientOptions o = Options();
    o.server = "127.0.0.1:" + std::to_string(port);
    auto client =
        WorkerClient::Connect(o, Layout(), std::vector<float>(kElements));
    ASSERT_TRUE(client.ok()) << client.status();
    const std::vector<float> before((*client)->params().begin(),
                                    (*client)->params().end());
    const absl::Status s =
        (*client)->Step(std::vector<float>(kElements, 1.0f), 1);
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
    EXPECT_THAT(s.message(), HasSubstr(says));
    EXPECT_EQ(std::vector<float>((*client)->params().begin(),
                                 (*client)->params().end()),
              before);
    server->Shutdown(absl::ToChronoTime(absl::Now()));
  }
}

TEST_F(WorkerClientTest, DeltaThatDoesNotValidateLeavesTheReplica) {
  fake_.respond = [](Stream* stream, int64_t round, const std::string&) {
    std::vector<float> q(kElements, 0.5f);
    q[3] = std::numeric_limits<float>::infinity();
    return FakeServer::SendDelta(stream, round, Floats(q));
  };
  StartServer();
  auto client =
      WorkerClient::Connect(Options(), Layout(), std::vector<float>(kElements));
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Status s =
      (*client)->Step(std::vector<float>(kElements, 1.0f), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("server delta"));
  for (float v : (*client)->params()) EXPECT_EQ(v, 1.0f);
}

TEST_F(WorkerClientTest, ServerErrorKeepsItsCodeAndMessage) {
  fake_.respond = [](Stream*, int64_t, const std::string&) { return false; };
  fake_.end_status = grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                  "update of round 1 arrived twice");
  StartServer();
  auto client =
      WorkerClient::Connect(Options(), Layout(), std::vector<float>(kElements));
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Status s =
      (*client)->Step(std::vector<float>(kElements, 1.0f), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("update of round 1 arrived twice"));
  EXPECT_FALSE((*client)->server_finished());
}

TEST_F(WorkerClientTest, ResyncsAfterALaggingOrBrokenStream) {
  // The first stream ends without a delta, as a restarting server's or a
  // lagging worker's does; the client joins again with its rank, fetches
  // the server's x and round, and steps on a new stream.
  for (grpc::StatusCode code :
       {grpc::StatusCode::ABORTED, grpc::StatusCode::UNAVAILABLE}) {
    SCOPED_TRACE(code);
    FakeServer fake;
    int streams = 0;
    fake.respond = [&streams](Stream* stream, int64_t round,
                              const std::string&) {
      if (++streams == 1) return false;
      return FakeServer::SendDelta(stream, round,
                                   Floats(std::vector<float>(kElements, 0.5f)));
    };
    fake.end_status = grpc::Status(code, "restarting");
    int port = 0;
    std::unique_ptr<grpc::Server> server = Serve(&fake, &port);
    ASSERT_NE(server, nullptr);
    WorkerClientOptions o = Options();
    o.server = "127.0.0.1:" + std::to_string(port);
    auto client =
        WorkerClient::Connect(o, Layout(), std::vector<float>(kElements, 2.0f));
    ASSERT_TRUE(client.ok()) << client.status();
    {
      absl::MutexLock lock(&fake.mu);
      fake.join_reply.set_upload_initial_params(false);
      fake.join_reply.set_round(7);
      fake.x.assign(kElements, 3.0f);
      fake.fetch_round = 7;
    }
    const std::vector<float> grad(kElements, 1.0f);
    ASSERT_TRUE((*client)->Step(grad, 1).ok());
    EXPECT_EQ((*client)->resyncs(), 1);
    EXPECT_EQ((*client)->round(), 7);
    for (float v : (*client)->params()) ASSERT_EQ(v, 3.0f);
    {
      absl::MutexLock lock(&fake.mu);
      EXPECT_EQ(fake.join_request.rank(), 0);  // its own rank, not "any"
    }
    ASSERT_TRUE((*client)->Step(grad, 1).ok());
    EXPECT_EQ((*client)->round(), 8);
    for (float v : (*client)->params()) ASSERT_EQ(v, 2.5f);
    EXPECT_EQ((*client)->resyncs(), 1);
    (*client)->Cancel();
    server->Shutdown(absl::ToChronoTime(absl::Now()));
  }
}

TEST_F(WorkerClientTest, WithoutReconnectTimeoutALostStreamIsAnError) {
  fake_.respond = [](Stream*, int64_t, const std::string&) { return false; };
  fake_.end_status = grpc::Status(grpc::StatusCode::ABORTED, "lagging");
  StartServer();
  WorkerClientOptions o = Options();
  o.reconnect_timeout = absl::ZeroDuration();
  auto client =
      WorkerClient::Connect(o, Layout(), std::vector<float>(kElements));
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Status s =
      (*client)->Step(std::vector<float>(kElements, 1.0f), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_EQ((*client)->resyncs(), 0);
}

TEST_F(WorkerClientTest, ReconnectGivesUpAfterItsTimeout) {
  StartServer();
  WorkerClientOptions o = Options();
  o.reconnect_timeout = absl::Milliseconds(800);
  auto client =
      WorkerClient::Connect(o, Layout(), std::vector<float>(kElements));
  ASSERT_TRUE(client.ok()) << client.status();
  server_->Shutdown(absl::ToChronoTime(absl::Now()));
  server_.reset();
  const absl::Time start = absl::Now();
  const absl::Status s =
      (*client)->Step(std::vector<float>(kElements, 1.0f), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("reconnecting"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(8));
}

TEST_F(WorkerClientTest, ServerEndingTrainingIsOutOfRangeThenFinishIsOk) {
  fake_.respond = [](Stream*, int64_t, const std::string&) { return false; };
  StartServer();
  auto client =
      WorkerClient::Connect(Options(), Layout(), std::vector<float>(kElements));
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Status s =
      (*client)->Step(std::vector<float>(kElements, 1.0f), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE((*client)->server_finished());
  EXPECT_TRUE((*client)->Finish().ok());
}

TEST_F(WorkerClientTest, RunStopsAtTheLastRound) {
  StartServer();
  auto client =
      WorkerClient::Connect(Options(), Layout(), std::vector<float>(kElements));
  ASSERT_TRUE(client.ok()) << client.status();
  int calls = 0;
  const absl::Status s = (*client)->Run(
      4, [&](absl::Span<const float> params, absl::Span<float> grad) {
        EXPECT_EQ(params.size(), static_cast<size_t>(kElements));
        for (float& g : grad) g = 1.0f;
        ++calls;
        return absl::StatusOr<float>(0.5f);
      });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(calls, 4);
  EXPECT_EQ((*client)->round(), 5);
}

TEST_F(WorkerClientTest, CancelInterruptsAStepWaitingForItsDelta) {
  fake_.respond = [](Stream*, int64_t, const std::string&) {
    absl::SleepFor(absl::Seconds(2));  // a round that does not close
    return false;
  };
  StartServer();
  auto client =
      WorkerClient::Connect(Options(), Layout(), std::vector<float>(kElements));
  ASSERT_TRUE(client.ok()) << client.status();
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(200));
    (*client)->Cancel();
  });
  const absl::Time start = absl::Now();
  const absl::Status s =
      (*client)->Step(std::vector<float>(kElements, 1.0f), 1);
  canceller.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_EQ((*client)->Step(std::vector<float>(kElements, 1.0f), 1).code(),
            absl::StatusCode::kCancelled);
}

TEST_F(WorkerClientTest, CancelStopsWaitingForAServerThatIsNotThere) {
  // Nothing listens on the port: Join retries until cancelled.
  WorkerClientOptions o = Options();
  o.server = "127.0.0.1:1";
  WorkerClient c(o);
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(300));
    c.Cancel();
  });
  const absl::Time start = absl::Now();
  const absl::Status s = c.Join(Layout());
  canceller.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

// Three tensors, so three update parts of 16, 16 and 8 bytes (fp32): the
// chunks of 16 bytes each hold one part.
TensorLayout ThreeTensors() {
  return *TensorLayout::Create({{"a", {4}}, {"b", {4}}, {"c", {2}}});
}

std::vector<pb::WorkerMessage> MessagesSoFar(FakeServer& fake) {
  absl::MutexLock lock(&fake.mu);
  return fake.messages;
}

// Waits (up to 5 s) until the fake server has read `n` update chunks.
bool AwaitMessages(FakeServer& fake, size_t n) {
  absl::MutexLock lock(&fake.mu);
  auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
    return fake.messages.size() >= n;
  };
  return fake.mu.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(5));
}

TEST_F(WorkerClientTest, BucketedStepSendsEachChunkOnceItsGradientIsIn) {
  StartServer();
  const std::vector<float> x0(kElements, 2.0f);
  auto bucketed = WorkerClient::Connect(Options(), ThreeTensors(), x0);
  ASSERT_TRUE(bucketed.ok()) << bucketed.status();
  WorkerClient& c = **bucketed;
  ASSERT_EQ(c.optimizer()->num_update_parts(), 3u);
  std::vector<std::vector<float>> grads;
  for (int r = 0; r < 3; ++r) {
    std::vector<float> g(kElements);
    for (int i = 0; i < kElements; ++i) g[i] = 0.25f * (i - r * 3);
    grads.push_back(g);
  }
  for (int r = 0; r < 3; ++r) {
    const std::vector<float>& g = grads[r];
    const size_t before = MessagesSoFar(fake_).size();
    ASSERT_TRUE(c.BeginStep().ok());
    EXPECT_TRUE(c.step_open());
    // As a backward pass: the last tensor first, ranges that split parts.
    ASSERT_TRUE(c.AddGradient(8, absl::MakeSpan(g).subspan(8, 2)).ok());
    ASSERT_TRUE(c.AddGradient(5, absl::MakeSpan(g).subspan(5, 3)).ok());
    // Part 0 is not in: nothing can go (chunks go in order).
    absl::SleepFor(absl::Milliseconds(50));
    EXPECT_EQ(MessagesSoFar(fake_).size(), before);
    ASSERT_TRUE(c.AddGradient(0, absl::MakeSpan(g).subspan(0, 4)).ok());
    // Chunk 0 (part 0) goes out while part 1 still lacks element 4.
    ASSERT_TRUE(AwaitMessages(fake_, before + 1));
    absl::SleepFor(absl::Milliseconds(50));
    EXPECT_EQ(MessagesSoFar(fake_).size(), before + 1);
    ASSERT_TRUE(c.AddGradient(4, absl::MakeSpan(g).subspan(4, 1)).ok());
    // Chunk 1 goes; the last one waits for the loss.
    ASSERT_TRUE(AwaitMessages(fake_, before + 2));
    absl::SleepFor(absl::Milliseconds(50));
    EXPECT_EQ(MessagesSoFar(fake_).size(), before + 2);
    ASSERT_TRUE(c.EndStep(1.5f + r).ok());
    EXPECT_FALSE(c.step_open());
  }
  EXPECT_EQ(c.round(), 4);
  const std::vector<pb::WorkerMessage> bucketed_messages = MessagesSoFar(fake_);
  const std::vector<float> bucketed_params(c.params().begin(),
                                           c.params().end());
  const WorkerOptimizer::State bucketed_state = c.optimizer()->state();
  const TrafficCounts bucketed_traffic = c.traffic();
  ASSERT_TRUE(c.Finish().ok());

  // The same rounds with Step: the same messages, replica and state.
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.messages.clear();
  }
  auto stepped = WorkerClient::Connect(Options(), ThreeTensors(), x0);
  ASSERT_TRUE(stepped.ok()) << stepped.status();
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE((*stepped)->Step(grads[r], 1.5f + r).ok());
  }
  const std::vector<pb::WorkerMessage> stepped_messages = MessagesSoFar(fake_);
  ASSERT_EQ(stepped_messages.size(), bucketed_messages.size());
  for (size_t i = 0; i < stepped_messages.size(); ++i) {
    EXPECT_EQ(bucketed_messages[i].SerializeAsString(),
              stepped_messages[i].SerializeAsString())
        << "message " << i;
  }
  EXPECT_EQ(bucketed_params, std::vector<float>((*stepped)->params().begin(),
                                                (*stepped)->params().end()));
  const WorkerOptimizer::State stepped_state = (*stepped)->optimizer()->state();
  EXPECT_EQ(bucketed_state.step, stepped_state.step);
  EXPECT_EQ(bucketed_state.m, stepped_state.m);
  EXPECT_EQ(bucketed_state.v, stepped_state.v);
  EXPECT_EQ(bucketed_state.e, stepped_state.e);
  EXPECT_EQ(bucketed_traffic.up().payload, (*stepped)->traffic().up().payload);
  EXPECT_EQ(bucketed_traffic.down().payload,
            (*stepped)->traffic().down().payload);
  EXPECT_TRUE((*stepped)->Finish().ok());
}

// A client of three tensors (x0 zeros) connected to the fake server.
std::unique_ptr<WorkerClient> ConnectThreeTensors(
    const WorkerClientOptions& options) {
  auto client = WorkerClient::Connect(options, ThreeTensors(),
                                      std::vector<float>(kElements));
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

TEST_F(WorkerClientTest, BucketedStepRefusesBadRangesAndEndsWhenOneIsMissing) {
  StartServer();
  std::unique_ptr<WorkerClient> client = ConnectThreeTensors(Options());
  ASSERT_NE(client, nullptr);
  WorkerClient& c = *client;
  const std::vector<float> g(kElements, 1.0f);
  EXPECT_EQ(c.AddGradient(0, g).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.EndStep(1).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(c.BeginStep().ok());
  EXPECT_EQ(c.BeginStep().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.Step(g, 1).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(c.AddGradient(2, absl::MakeSpan(g).subspan(0, 3)).ok());
  // Outside the layout, overlapping [2, 5) from either side, empty, NaN.
  EXPECT_EQ(c.AddGradient(9, absl::MakeSpan(g).subspan(0, 2)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.AddGradient(4, absl::MakeSpan(g).subspan(0, 2)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.AddGradient(0, absl::MakeSpan(g).subspan(0, 3)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.AddGradient(0, {}).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> nan(3, 1.0f);
  nan[1] = std::numeric_limits<float>::quiet_NaN();
  const absl::Status s = c.AddGradient(5, nan);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("element 6"));
  // The refused ranges left nothing: [0, 2) is still missing.
  ASSERT_TRUE(c.AddGradient(5, absl::MakeSpan(g).subspan(0, 5)).ok());
  EXPECT_TRUE(c.step_open());
  const absl::Status end = c.EndStep(1);
  EXPECT_EQ(end.code(), absl::StatusCode::kInvalidArgument) << end;
  EXPECT_THAT(end.message(), HasSubstr("the first: 0"));
  EXPECT_FALSE(c.step_open());
  // Training ended with it.
  EXPECT_EQ(c.BeginStep().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Finish().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(WorkerClientTest, CancelEndsABucketedStepWaitingForGradients) {
  StartServer();
  std::unique_ptr<WorkerClient> client = ConnectThreeTensors(Options());
  ASSERT_NE(client, nullptr);
  WorkerClient& c = *client;
  const std::vector<float> g(kElements, 1.0f);
  ASSERT_TRUE(c.BeginStep().ok());
  ASSERT_TRUE(c.AddGradient(0, absl::MakeSpan(g).subspan(0, 4)).ok());
  c.Cancel();
  ASSERT_TRUE(c.AddGradient(4, absl::MakeSpan(g).subspan(4, 6)).ok());
  EXPECT_EQ(c.EndStep(1).code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(c.step_open());
}

TEST_F(WorkerClientTest, DestroyingAClientAbandonsItsOpenBucketedStep) {
  StartServer();
  std::unique_ptr<WorkerClient> client = ConnectThreeTensors(Options());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->BeginStep().ok());
  client.reset();  // joins the step's thread, which waits for gradients
  absl::MutexLock lock(&fake_.mu);
  EXPECT_TRUE(fake_.messages.empty());
}

}  // namespace
}  // namespace effadam
