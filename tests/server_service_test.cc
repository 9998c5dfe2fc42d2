#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/logger.h"
#include "core/checksum.h"
#include "core/shard_plan.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/parameter_server_service.h"
#include "tests/service_test_util.h"

namespace effadam {
namespace {

using service_test::Compression;
using service_test::Encode;
using service_test::InitialParams;
using service_test::Options;
using service_test::RandomUpdate;
using service_test::ReferenceEngine;
using service_test::RejectionCounter;
using service_test::TestLayout;
using service_test::TestServer;
using service_test::TrainStream;
using ::testing::AllOf;
using ::testing::HasSubstr;

struct WorkerResult {
  std::vector<std::string> deltas;
  std::vector<int> contributors;
  grpc::Status final_status;
};

// `workers` workers (ranks 0..), all on one stream each, send RandomUpdate
// for rounds 1..rounds; the server's --rounds is `rounds`.
std::vector<WorkerResult> TrainAll(TestServer* server, int workers,
                                   int64_t rounds) {
  std::vector<WorkerResult> results(workers);
  std::vector<std::thread> threads;
  for (int r = 0; r < workers; ++r) {
    threads.emplace_back([&, r] {
      TrainStream stream(server);
      for (int64_t round = 1; round <= rounds; ++round) {
        const std::string u =
            Encode(server->worker_codec(), RandomUpdate(server->n(), r, round));
        ASSERT_TRUE(stream.Send(r, round, u));
        std::string delta;
        int64_t got_round = 0;
        int contributors = 0;
        ASSERT_TRUE(stream.ReadDelta(&delta, &got_round, &contributors));
        EXPECT_EQ(got_round, round);
        results[r].deltas.push_back(delta);
        results[r].contributors.push_back(contributors);
      }
      results[r].final_status = stream.Finish();
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

TEST(ParameterServerService, RejectsOptionsThatCannotWork) {
  ServerOptions o = Options(0, "sign", "sign");
  EXPECT_EQ(ParameterServerService::Create(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Options(2, "sign", "sign");
  o.max_chunk_bytes = 3;
  EXPECT_EQ(ParameterServerService::Create(o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ParameterServerService, JoinUploadFetchRoundTripIsBitExact) {
  ServerOptions o = Options(2, "sign", "q8");
  o.max_chunk_bytes = 1000;  // 8028 bytes of x: 9 chunks each way
  TestServer server(o);
  const std::vector<float> x0 = InitialParams(server.n());

  v1::JoinResponse first;
  ASSERT_TRUE(server.Join(server.JoinRequest(-1), &first).ok());
  EXPECT_EQ(first.rank(), 0);
  EXPECT_TRUE(first.upload_initial_params());
  EXPECT_EQ(first.round(), 1);
  EXPECT_EQ(first.num_elements(), 2007);
  EXPECT_EQ(first.max_chunk_bytes(), 1000);
  EXPECT_EQ(first.expected_workers(), 2);
  EXPECT_EQ(first.compression().worker_codec(), "sign");
  EXPECT_EQ(first.compression().server_codec(), "q8");
  EXPECT_EQ(first.compression().block_size(), 64);
  EXPECT_TRUE(first.compression().server_error_feedback());

  grpc::Status up = server.UploadChunks(TestServer::Chunks(0, x0, 250));
  ASSERT_TRUE(up.ok()) << up.error_message();

  v1::JoinResponse second;
  ASSERT_TRUE(server.Join(server.JoinRequest(-1), &second).ok());
  EXPECT_EQ(second.rank(), 1);
  EXPECT_FALSE(second.upload_initial_params());

  std::vector<float> x;
  int chunks = 0;
  int64_t round = 0;
  grpc::Status s = server.Fetch(1, &x, &chunks, &round);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(chunks, 9);
  EXPECT_EQ(round, 1);
  ASSERT_EQ(x.size(), x0.size());
  EXPECT_EQ(0, std::memcmp(x.data(), x0.data(), 4 * x0.size()));

  const v1::StatusResponse st = server.Status();
  EXPECT_EQ(st.params_checksum(), ParamsChecksum(x0));
  EXPECT_EQ(st.bytes_join(), 2 * 4 * 2007);
  EXPECT_EQ(st.live_workers(), 2);
  EXPECT_EQ(st.expected_workers(), 2);
  EXPECT_EQ(st.num_elements(), 2007);
  EXPECT_EQ(st.round(), 1);
}

TEST(ParameterServerService, Fp32RoundsGiveTheHandComputedX) {
  ServerOptions o = Options(2, "fp32", "fp32");
  o.rounds = 3;
  TestServer server(o);
  const std::vector<float> x0 = InitialParams(server.n());
  server.JoinAndUpload(0, x0);
  ASSERT_EQ(server.Join(1), 1);

  const std::vector<WorkerResult> results = TrainAll(&server, 2, 3);
  std::vector<float> x = x0;
  for (int64_t round = 1; round <= 3; ++round) {
    const std::vector<float> u0 = RandomUpdate(x.size(), 0, round);
    const std::vector<float> u1 = RandomUpdate(x.size(), 1, round);
    std::vector<float> q(x.size());
    for (size_t j = 0; j < x.size(); ++j) {
      q[j] = ((0.0f + u0[j]) + u1[j]) / 2.0f;  // ascending rank
      x[j] = x[j] + -1.0f * q[j];
    }
    for (int r = 0; r < 2; ++r) {
      EXPECT_EQ(results[r].deltas[round - 1], Encode(server.server_codec(), q))
          << "rank " << r << " round " << round;
      EXPECT_EQ(results[r].contributors[round - 1], 2);
    }
  }
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(results[r].final_status.ok())
        << results[r].final_status.error_message();
  }
  EXPECT_EQ(server.Checksum(), ParamsChecksum(x));
  EXPECT_TRUE(server.service().server().WaitUntilDone(absl::Seconds(5)));
}

TEST(ParameterServerService, CompressedRoundsEqualTheRoundEngineAndCountBytes) {
  ServerOptions o = Options(3, "sign", "q4s");  // stochastic: the seed counts
  o.rounds = 3;
  TestServer server(o);
  const std::vector<float> x0 = InitialParams(server.n());
  server.JoinAndUpload(0, x0);
  ASSERT_EQ(server.Join(), 1);
  ASSERT_EQ(server.Join(), 2);

  const std::vector<WorkerResult> results = TrainAll(&server, 3, 3);
  std::unique_ptr<RoundEngine> ref = ReferenceEngine(server, x0);
  for (int64_t round = 1; round <= 3; ++round) {
    for (int r : {2, 0, 1}) {
      ASSERT_TRUE(ref->Submit(r, round,
                              Encode(server.worker_codec(),
                                     RandomUpdate(server.n(), r, round)))
                      .ok());
    }
    const std::string want = *ref->CloseRound();
    for (int r = 0; r < 3; ++r) {
      ASSERT_EQ(results[r].deltas.size(), 3u);
      EXPECT_EQ(results[r].deltas[round - 1], want);
      EXPECT_EQ(results[r].contributors[round - 1], 3);
    }
  }
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(results[r].final_status.ok());
  EXPECT_TRUE(server.service().server().WaitUntilDone(absl::Seconds(5)));

  // Counted as effadam-sim counts: 3 rounds x 3 workers each way.
  const int64_t w = server.worker_codec().encoded_size();
  const int64_t s = server.server_codec().encoded_size();
  const ServerSummary sum = server.service().server().Summary();
  EXPECT_EQ(sum.params_checksum, ParamsChecksum(ref->params()));
  EXPECT_EQ(sum.rounds_closed, 3);
  EXPECT_EQ(sum.traffic.up().payload, 9 * w);
  EXPECT_EQ(sum.traffic.down().payload, 9 * s);
  EXPECT_EQ(sum.traffic.fp32_equivalent(), 2 * 9 * 4 * 2007);
  EXPECT_EQ(sum.traffic.join().payload, 4 * 2007);
  EXPECT_NEAR(sum.traffic.compression_ratio(),
              2.0 * 9 * 4 * 2007 / static_cast<double>(9 * (w + s)), 1e-9);
  EXPECT_NEAR(sum.train_loss, 0.5, 1e-6);
  const v1::StatusResponse st = server.Status();
  EXPECT_EQ(st.round(), 4);
  EXPECT_EQ(st.live_workers(), 0);  // every stream ended
  EXPECT_EQ(st.bytes_worker_to_server(), 9 * w);
}

TEST(ParameterServerService, JoinRejectionsSayWhatIsWrong) {
  TestServer server(Options(2, "sign", "sign"));
  // A refused first Join fixes nothing: another layout is still welcome.
  v1::JoinRequest other = server.JoinRequest(9);
  other.mutable_layout(0)->set_name("other");
  v1::JoinResponse resp;
  grpc::Status s = server.Join(other, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("rank 9 is outside [0, 2)"));

  v1::JoinRequest invalid = server.JoinRequest(-1);
  invalid.mutable_layout(1)->set_name("w");
  s = server.Join(invalid, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("invalid layout"));

  const std::vector<float> x0 = InitialParams(server.n());
  server.JoinAndUpload(0, x0);
  const std::string checksum = server.Checksum();

  v1::JoinRequest layout = server.JoinRequest(-1);
  layout.mutable_layout(0)->set_shape(1, 51);
  s = server.Join(layout, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(),
              AllOf(HasSubstr("server has [w[40,50] b[7]]"),
                    HasSubstr("worker sent [w[40,51] b[7]]")));

  v1::JoinRequest codec = server.JoinRequest(-1);
  codec.mutable_compression()->set_worker_codec("q4");
  codec.mutable_compression()->set_block_size(128);
  s = server.Join(codec, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(),
              AllOf(HasSubstr("worker_codec: server uses 'sign', worker sent "
                              "'q4'"),
                    HasSubstr("block_size: server uses 64, worker sent 128")));

  // A worker of the protocol before versions (it would wait for a delta
  // sent whole and never see the COMMIT).
  v1::JoinRequest old_worker = server.JoinRequest(-1);
  old_worker.clear_protocol();
  s = server.Join(old_worker, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(),
              AllOf(HasSubstr("worker speaks protocol version 0"),
                    HasSubstr(absl::StrCat("this server speaks version ",
                                           kProtocolVersion))));

  // Rank 0 with a Train stream is taken; without one (idle, as when its
  // worker died between its Join and its next call) a Join asking for it
  // takes it over. The stream sends the first chunk of a valid update and
  // stays open waiting for the rest (a malformed chunk would end it at
  // once, and under load the Joins below could miss its short life).
  {
    TrainStream s0(&server);
    const std::string update =
        Encode(server.worker_codec(), RandomUpdate(server.n(), 0, 1));
    ASSERT_GT(update.size(), server.options().max_chunk_bytes);
    ASSERT_TRUE(s0.SendPart(0, 1, update, 0, server.options().max_chunk_bytes));
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    do {
      s = server.Join(server.JoinRequest(0), &resp);
    } while (s.ok() && absl::Now() < give_up);  // until its stream is seen
    EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
    EXPECT_THAT(s.error_message(), HasSubstr("rank 0 is taken"));
    s0.Cancel();
  }
  ASSERT_TRUE(server.WaitLive(0));
  s = server.Join(server.JoinRequest(0), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  s = server.Join(server.JoinRequest(0), &resp);
  EXPECT_TRUE(s.ok()) << "idle: taken over: " << s.error_message();
  EXPECT_EQ(resp.rank(), 0);
  EXPECT_FALSE(resp.upload_initial_params());
  s = server.Join(server.JoinRequest(-2), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  EXPECT_EQ(server.Join(-1), 1);
  s = server.Join(server.JoinRequest(-1), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("all 2 ranks are taken"));

  EXPECT_EQ(server.Checksum(), checksum);
  EXPECT_EQ(server.Status().live_workers(), 2);
}

TEST(ParameterServerService, BadUploadsKeepNothingAndSomeoneElseUploads) {
  TestServer server(Options(2, "sign", "sign"));
  const std::vector<float> x0 = InitialParams(server.n());
  bool upload = false;
  ASSERT_EQ(server.Join(-1, &upload), 0);
  ASSERT_TRUE(upload);
  ASSERT_EQ(server.Join(-1, &upload), 1);
  ASSERT_FALSE(upload);

  // Nothing to fetch yet: UNAVAILABLE within the caller's deadline.
  std::vector<float> x;
  grpc::Status s = server.Fetch(1, &x, nullptr, nullptr, 0.5);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();

  s = server.Upload(1, x0);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(),
              HasSubstr("rank 1 was not asked to upload the initial "
                        "parameters (rank 0 was)"));

  struct Case {
    const char* name;
    std::vector<v1::ParamsChunk> chunks;
    const char* message;
  };
  std::vector<Case> cases;
  {
    auto chunks = TestServer::Chunks(0, x0, 25);
    std::swap(chunks[1], chunks[2]);
    cases.push_back({"out of order", chunks, "expected element 25"});
  }
  {
    std::vector<float> bad = x0;
    bad[1234] = std::numeric_limits<float>::quiet_NaN();
    cases.push_back({"NaN", TestServer::Chunks(0, bad, 25),
                     "initial parameters: element 1234 is not finite"});
  }
  {
    auto chunks = TestServer::Chunks(0, x0, 25);
    chunks.pop_back();
    cases.push_back({"short", chunks, "ended after 8000 of 8028 bytes"});
  }
  {
    auto chunks = TestServer::Chunks(0, x0, 25);
    chunks.push_back(chunks.back());
    chunks.back().set_begin(2007);
    cases.push_back({"long", chunks, "the buffer would be too long"});
  }
  cases.push_back({"oversize", TestServer::Chunks(0, x0, 26),
                   "over max_chunk_bytes (100)"});
  {
    auto chunks = TestServer::Chunks(0, x0, 25);
    chunks[0].mutable_values()->pop_back();
    cases.push_back(
        {"partial float", chunks, "not a whole number of 4-byte elements"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    s = server.UploadChunks(c.chunks);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr(c.message));
    EXPECT_EQ(server.Checksum(), "");  // still uninitialized
    // The failed uploader's rank is free again, and whoever joins next is
    // told to upload.
    EXPECT_EQ(server.Status().live_workers(), 1);
    ASSERT_EQ(server.Join(-1, &upload), 0);
    EXPECT_TRUE(upload);
  }
  s = server.Upload(0, x0);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(server.Checksum(), ParamsChecksum(x0));
  s = server.Upload(0, x0);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("already uploaded"));
  ASSERT_TRUE(server.Fetch(1, &x).ok());
  EXPECT_EQ(0, std::memcmp(x.data(), x0.data(), 4 * x0.size()));
}

TEST(ParameterServerService, BadTrainMessagesChangeNothing) {
  TestServer server(Options(2, "sign", "sign"));
  const std::vector<float> x0 = InitialParams(server.n());
  server.JoinAndUpload(0, x0);
  const std::string checksum = server.Checksum();
  const std::string good =
      Encode(server.worker_codec(), RandomUpdate(server.n(), 1, 1));
  ASSERT_GT(good.size(), 300u);  // several chunks of 100 bytes

  auto message = [](int rank, int64_t round, int64_t offset,
                    std::string payload) {
    v1::WorkerMessage m;
    m.set_rank(rank);
    m.set_round(round);
    m.set_offset(offset);
    m.set_payload(std::move(payload));
    return m;
  };
  struct Case {
    const char* name;
    bool join;
    std::vector<v1::WorkerMessage> messages;
    grpc::StatusCode code;
    const char* text;
  };
  std::string nan_scale = good;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(&nan_scale[0], &nan, 4);  // the first block's sign scale
  std::vector<v1::WorkerMessage> nan_chunks;
  for (size_t off = 0; off < good.size(); off += 100) {
    nan_chunks.push_back(message(1, 1, off, nan_scale.substr(off, 100)));
  }
  std::vector<v1::WorkerMessage> too_long;
  for (size_t off = 0; off + 100 < good.size(); off += 100) {
    too_long.push_back(message(1, 1, off, good.substr(off, 100)));
  }
  too_long.push_back(
      message(1, 1, too_long.size() * 100, std::string(100, '\0')));
  const std::vector<Case> cases = {
      {"unknown rank",
       false,
       {message(1, 1, 0, good.substr(0, 100))},
       grpc::StatusCode::FAILED_PRECONDITION,
       "rank 1 has not joined"},
      {"rank out of range",
       false,
       {message(7, 1, 0, good.substr(0, 100))},
       grpc::StatusCode::FAILED_PRECONDITION,
       "rank 7 has not joined"},
      {"future round",
       true,
       {message(1, 2, 0, good.substr(0, 100))},
       grpc::StatusCode::FAILED_PRECONDITION,
       "sent an update for round 2 but the server is collecting round 1"},
      {"wrong offset",
       true,
       {message(1, 1, 100, good.substr(0, 100))},
       grpc::StatusCode::INVALID_ARGUMENT,
       "at offset 100; expected offset 0"},
      {"gap",
       true,
       {message(1, 1, 0, good.substr(0, 100)),
        message(1, 1, 150, good.substr(150, 100))},
       grpc::StatusCode::INVALID_ARGUMENT,
       "at offset 150; expected offset 100"},
      {"oversize chunk",
       true,
       {message(1, 1, 0, good.substr(0, 101))},
       grpc::StatusCode::INVALID_ARGUMENT,
       "chunk at offset 0 has 101 bytes, over max_chunk_bytes (100)"},
      {"empty chunk",
       true,
       {message(1, 1, 0, "")},
       grpc::StatusCode::INVALID_ARGUMENT,
       "empty chunk"},
      {"too long", true, too_long, grpc::StatusCode::INVALID_ARGUMENT,
       "the buffer would be too long"},
      {"round changes mid-update",
       true,
       {message(1, 1, 0, good.substr(0, 100)),
        message(1, 2, 100, good.substr(100, 100))},
       grpc::StatusCode::INVALID_ARGUMENT,
       "a chunk of round 2 arrived where round 1 was expected"},
      {"another rank's message",
       true,
       {message(1, 1, 0, good.substr(0, 100)),
        message(0, 1, 100, good.substr(100, 100))},
       grpc::StatusCode::INVALID_ARGUMENT,
       "a chunk names rank 0 on rank 1's stream"},
      {"NaN scale", true, nan_chunks, grpc::StatusCode::INVALID_ARGUMENT,
       "update from rank 1"},
      {"ends mid-update",
       true,
       {message(1, 1, 0, good.substr(0, 100))},
       grpc::StatusCode::INVALID_ARGUMENT,
       "the stream ended after 100 of"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    if (c.join) {
      ASSERT_EQ(server.Join(1), 1);
    }
    TrainStream stream(&server);
    for (const v1::WorkerMessage& m : c.messages) {
      if (!stream.Write(m)) break;
    }
    const grpc::Status s = stream.Finish();
    EXPECT_EQ(s.error_code(), c.code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(c.text));
    // The stream's rank left; x is as uploaded and round 1 still open.
    const v1::StatusResponse st = server.Status();
    EXPECT_EQ(st.live_workers(), 1);
    EXPECT_EQ(st.params_checksum(), checksum);
    EXPECT_EQ(st.round(), 1);
    EXPECT_EQ(st.bytes_worker_to_server(), 0);
  }

  // A good round now equals a fresh engine's first round: no rejected byte
  // reached x or E.
  ASSERT_EQ(server.Join(1), 1);
  TrainStream s0(&server), s1(&server);
  const std::string u0 =
      Encode(server.worker_codec(), RandomUpdate(server.n(), 0, 1));
  ASSERT_TRUE(s1.Send(1, 1, good));
  ASSERT_TRUE(s0.Send(0, 1, u0));
  std::string d0, d1;
  int64_t r0 = 0, r1 = 0;
  int c0 = 0, c1 = 0;
  ASSERT_TRUE(s0.ReadDelta(&d0, &r0, &c0));
  ASSERT_TRUE(s1.ReadDelta(&d1, &r1, &c1));
  std::unique_ptr<RoundEngine> ref = ReferenceEngine(server, x0);
  ASSERT_TRUE(ref->Submit(0, 1, u0).ok());
  ASSERT_TRUE(ref->Submit(1, 1, good).ok());
  const std::string want = *ref->CloseRound();
  EXPECT_EQ(d0, want);
  EXPECT_EQ(d1, want);
  EXPECT_EQ(c0, 2);
  EXPECT_EQ(r1, 1);
  EXPECT_EQ(server.Checksum(), ParamsChecksum(ref->params()));

  // Rank 1's stream is open (it just got a delta): a second one is refused.
  TrainStream dup(&server);
  dup.Send(1, 2, good);  // may stop early: the server refuses at once
  const grpc::Status s = dup.Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(),
              HasSubstr("rank 1 already has an open Train stream"));
  s0.Cancel();
  s1.Cancel();
}

// Waits (bounded, real time) until the server has taken `bytes` of update
// payload: the updates sent so far are in their round.
void WaitForUpdates(TestServer& server, int64_t bytes) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (server.service().server().Summary().traffic.up().payload < bytes &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  ASSERT_EQ(server.service().server().Summary().traffic.up().payload, bytes);
}

TEST(ParameterServerService, RoundTimeoutClosesWithTheWorkersPresent) {
  FakeClock clock;
  ServerOptions o = Options(3, "fp32", "sign");
  o.round_timeout = absl::Seconds(60);
  o.rounds = 2;
  o.clock = &clock;
  TestServer server(o);
  const std::vector<float> x0 = InitialParams(server.n());
  server.JoinAndUpload(0, x0);
  ASSERT_EQ(server.Join(), 1);  // rank 2 never comes
  auto update = [&](int rank, int64_t round) {
    return Encode(server.worker_codec(), RandomUpdate(server.n(), rank, round));
  };
  const int64_t size =
      static_cast<int64_t>(server.worker_codec().encoded_size());

  std::unique_ptr<RoundEngine> ref = ReferenceEngine(server, x0);
  TrainStream s0(&server), s1(&server);
  for (int64_t round = 1; round <= 2; ++round) {
    ASSERT_TRUE(s0.Send(0, round, update(0, round)));
    ASSERT_TRUE(s1.Send(1, round, update(1, round)));
    WaitForUpdates(server, 2 * round * size);
    // Rank 2 is waited for until the timeout, measured on the clock.
    EXPECT_EQ(server.service().server().Summary().rounds_closed, round - 1);
    clock.Advance(o.round_timeout);
    for (int r : {0, 1})
      ASSERT_TRUE(ref->Submit(r, round, update(r, round)).ok());
    const std::string want = *ref->CloseRound();
    for (TrainStream* s : {&s0, &s1}) {
      std::string delta;
      int64_t got = 0;
      int contributors = 0;
      ASSERT_TRUE(s->ReadDelta(&delta, &got, &contributors));
      EXPECT_EQ(got, round);
      EXPECT_EQ(contributors, 2);
      EXPECT_EQ(delta, want);
    }
  }
  EXPECT_TRUE(s0.Finish().ok());
  EXPECT_EQ(server.Checksum(), ParamsChecksum(ref->params()));
  EXPECT_EQ(server.service().server().Summary().short_rounds, 2);
}

TEST(ParameterServerService, CancelledWorkerLeavesAndTheOthersGoOn) {
  TestServer server(Options(2, "sign", "sign"));  // round_timeout 30 s
  const std::vector<float> x0 = InitialParams(server.n());
  server.JoinAndUpload(0, x0);
  ASSERT_EQ(server.Join(1), 1);
  auto update = [&](int rank, int64_t round) {
    return Encode(server.worker_codec(), RandomUpdate(server.n(), rank, round));
  };

  // Rank 1 sends part of its update and vanishes (once its stream has
  // begun: a stream cancelled before its first message is read never
  // counts as the rank's, which then stays joined).
  {
    TrainStream gone(&server);
    const int64_t wire = server.WireUp();
    ASSERT_TRUE(
        gone.SendPart(1, 1, update(1, 1), 0, server.options().max_chunk_bytes));
    ASSERT_TRUE(server.WaitWireUp(wire));
    gone.Cancel();
  }
  ASSERT_TRUE(server.WaitLive(1));

  // Round 1 closes on rank 0 alone, long before the 30 s timeout.
  TrainStream s0(&server, 5);
  ASSERT_TRUE(s0.Send(0, 1, update(0, 1)));
  std::string delta;
  int64_t round = 0;
  int contributors = 0;
  ASSERT_TRUE(s0.ReadDelta(&delta, &round, &contributors));
  EXPECT_EQ(round, 1);
  EXPECT_EQ(contributors, 1);

  // Rank 1 comes back under its old rank, fetches x and takes part again.
  ASSERT_EQ(server.Join(1), 1);
  std::vector<float> x;
  int64_t fetched_round = 0;
  ASSERT_TRUE(server.Fetch(1, &x, nullptr, &fetched_round).ok());
  EXPECT_EQ(fetched_round, 2);
  TrainStream s1(&server, 5);
  ASSERT_TRUE(s1.Send(1, 2, update(1, 2)));
  ASSERT_TRUE(s0.Send(0, 2, update(0, 2)));
  std::string d0, d1;
  int c0 = 0, c1 = 0;
  ASSERT_TRUE(s0.ReadDelta(&d0, &round, &c0));
  ASSERT_TRUE(s1.ReadDelta(&d1, &round, &c1));
  EXPECT_EQ(c0, 2);
  EXPECT_EQ(d0, d1);

  std::unique_ptr<RoundEngine> ref = ReferenceEngine(server, x0);
  ASSERT_TRUE(ref->Submit(0, 1, update(0, 1)).ok());
  ASSERT_EQ(*ref->CloseRound(), delta);
  EXPECT_EQ(0, std::memcmp(x.data(), ref->params().data(), 4 * x.size()));
  ASSERT_TRUE(ref->Submit(1, 2, update(1, 2)).ok());
  ASSERT_TRUE(ref->Submit(0, 2, update(0, 2)).ok());
  EXPECT_EQ(*ref->CloseRound(), d0);
  EXPECT_EQ(server.Checksum(), ParamsChecksum(ref->params()));
  s1.Cancel();
  s0.Cancel();
}

TEST(ParameterServerService, AnUpdateSentBeforeLeavingStillCounts) {
  TestServer server(Options(2, "sign", "sign"));  // round_timeout 30 s
  const std::vector<float> x0 = InitialParams(server.n());
  server.JoinAndUpload(0, x0);
  ASSERT_EQ(server.Join(1), 1);
  auto update = [&](int rank, int64_t round) {
    return Encode(server.worker_codec(), RandomUpdate(server.n(), rank, round));
  };
  {
    TrainStream gone(&server);
    ASSERT_TRUE(gone.Send(1, 1, update(1, 1)));
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (server.Status().bytes_worker_to_server() == 0 &&
           absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    gone.Cancel();
  }
  ASSERT_TRUE(server.WaitLive(1));
  // Rank 1 comes back in the same round: its second update is not averaged
  // (the first one is), but it gets the round's delta.
  ASSERT_EQ(server.Join(1), 1);
  TrainStream s1(&server, 5), s0(&server, 5);
  ASSERT_TRUE(s1.Send(1, 1, update(1, 99)));
  ASSERT_TRUE(s0.Send(0, 1, update(0, 1)));
  std::string d0, d1;
  int64_t r0 = 0, r1 = 0;
  int c0 = 0, c1 = 0;
  ASSERT_TRUE(s0.ReadDelta(&d0, &r0, &c0));
  ASSERT_TRUE(s1.ReadDelta(&d1, &r1, &c1));
  EXPECT_EQ(c0, 2);
  EXPECT_EQ(d0, d1);
  std::unique_ptr<RoundEngine> ref = ReferenceEngine(server, x0);
  ASSERT_TRUE(ref->Submit(0, 1, update(0, 1)).ok());
  ASSERT_TRUE(ref->Submit(1, 1, update(1, 1)).ok());
  EXPECT_EQ(*ref->CloseRound(), d0);
  EXPECT_EQ(server.Checksum(), ParamsChecksum(ref->params()));
  s0.Cancel();
  s1.Cancel();
}

// Rank 1's update of round 1 comes after round 1 closed on the timeout:
// it gets round 1's delta, and its update is averaged into round 2 (which
// then closes as soon as rank 0's is in, not on the timeout), so both
// ranks are in step at round 3.
TEST(ParameterServerService, ALateUpdateIsTakenIntoTheNextRound) {
  FakeClock clock;
  ServerOptions o = Options(2, "sign", "q8");
  o.clock = &clock;
  TestServer server(o);
  const std::vector<float> x0 = InitialParams(server.n());
  server.JoinAndUpload(0, x0);
  ASSERT_EQ(server.Join(1), 1);
  auto update = [&](int rank, int64_t round) {
    return Encode(server.worker_codec(), RandomUpdate(server.n(), rank, round));
  };
  TrainStream s0(&server), s1(&server);
  ASSERT_TRUE(s0.Send(0, 1, update(0, 1)));
  WaitForUpdates(server,
                 static_cast<int64_t>(server.worker_codec().encoded_size()));
  clock.Advance(o.round_timeout);
  std::string d0, d1;
  int64_t r0 = 0, r1 = 0;
  int c0 = 0, c1 = 0;
  ASSERT_TRUE(s0.ReadDelta(&d0, &r0, &c0));  // closed by the timeout
  EXPECT_EQ(c0, 1);
  EXPECT_EQ(s0.last_taken_into(), 0);
  ASSERT_TRUE(s1.Send(1, 1, update(1, 1)));  // late
  ASSERT_TRUE(s1.ReadDelta(&d1, &r1, &c1));
  EXPECT_EQ(r1, 1);
  EXPECT_EQ(c1, 1);
  EXPECT_EQ(d1, d0);
  EXPECT_EQ(s1.last_taken_into(), 2);

  // No clock advance: round 2 has both updates once rank 0's is in.
  ASSERT_TRUE(s0.Send(0, 2, update(0, 2)));
  ASSERT_TRUE(s0.ReadDelta(&d0, &r0, &c0));
  ASSERT_TRUE(s1.ReadDelta(&d1, &r1, &c1));
  EXPECT_EQ(r0, 2);
  EXPECT_EQ(r1, 2);
  EXPECT_EQ(c0, 2);
  EXPECT_EQ(d0, d1);
  EXPECT_EQ(s1.last_taken_into(), 0);

  std::unique_ptr<RoundEngine> ref = ReferenceEngine(server, x0);
  ASSERT_TRUE(ref->Submit(0, 1, update(0, 1)).ok());
  ASSERT_TRUE(ref->CloseRound().ok());
  ASSERT_TRUE(ref->Submit(0, 2, update(0, 2)).ok());
  ASSERT_TRUE(ref->Submit(1, 2, update(1, 1)).ok());
  EXPECT_EQ(*ref->CloseRound(), d0);
  EXPECT_EQ(server.Checksum(), ParamsChecksum(ref->params()));

  // Both send round 3 next; round 2 again from rank 1 is refused.
  ASSERT_TRUE(s0.Send(0, 3, update(0, 3)));
  ASSERT_TRUE(s1.Send(1, 3, update(1, 3)));
  ASSERT_TRUE(s0.ReadDelta(&d0, &r0, &c0));
  ASSERT_TRUE(s1.ReadDelta(&d1, &r1, &c1));
  EXPECT_EQ(r0, 3);
  EXPECT_EQ(c0, 2);
  EXPECT_EQ(d0, d1);
  ASSERT_TRUE(ref->Submit(0, 3, update(0, 3)).ok());
  ASSERT_TRUE(ref->Submit(1, 3, update(1, 3)).ok());
  EXPECT_EQ(*ref->CloseRound(), d0);
  EXPECT_EQ(server.service().server().Summary().short_rounds, 1);

  // Wire bytes: 5 updates, 6 deltas (rank 1 got rounds 1 and 2 for one
  // update). The server counts a delta once its write returns, which may
  // be just after this thread read it, so wait (bounded) for the count.
  const int64_t want_down =
      6 * static_cast<int64_t>(server.server_codec().encoded_size());
  const absl::Time settle = absl::Now() + absl::Seconds(5);
  while (server.service().server().Summary().traffic.down().payload <
             want_down &&
         absl::Now() < settle) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  const ServerSummary sum = server.service().server().Summary();
  EXPECT_EQ(sum.traffic.up().payload,
            5 * static_cast<int64_t>(server.worker_codec().encoded_size()));
  EXPECT_EQ(sum.traffic.down().payload, want_down);
  s0.Cancel();
  s1.Cancel();
}

// Two rounds late: the stream carries both missed deltas, then the one of
// the round the update went into.
TEST(ParameterServerService, AnUpdateTwoRoundsLateGetsEveryMissedDelta) {
  FakeClock clock;
  ServerOptions o = Options(2, "sign", "sign");
  o.clock = &clock;
  TestServer server(o);
  server.JoinAndUpload(0, InitialParams(server.n()));
  ASSERT_EQ(server.Join(1), 1);
  auto update = [&](int rank, int64_t round) {
    return Encode(server.worker_codec(), RandomUpdate(server.n(), rank, round));
  };
  TrainStream s0(&server), s1(&server);
  std::vector<std::string> deltas(3);
  for (int64_t round = 1; round <= 2; ++round) {
    ASSERT_TRUE(s0.Send(0, round, update(0, round)));
    WaitForUpdates(server, round * static_cast<int64_t>(
                                       server.worker_codec().encoded_size()));
    clock.Advance(o.round_timeout);
    int64_t r = 0;
    int c = 0;
    ASSERT_TRUE(s0.ReadDelta(&deltas[round], &r, &c));
    EXPECT_EQ(c, 1);
  }
  std::string d;
  int64_t r = 0;
  int c = 0;
  ASSERT_TRUE(s1.Send(1, 1, update(1, 1)));
  for (int64_t missed = 1; missed <= 2; ++missed) {
    ASSERT_TRUE(s1.ReadDelta(&d, &r, &c));
    EXPECT_EQ(r, missed);
    EXPECT_EQ(d, deltas[missed]);
    EXPECT_EQ(s1.last_taken_into(), 3);
  }
  ASSERT_TRUE(s0.Send(0, 3, update(0, 3)));
  ASSERT_TRUE(s1.ReadDelta(&d, &r, &c));
  EXPECT_EQ(r, 3);
  EXPECT_EQ(c, 2);
  EXPECT_EQ(s1.last_taken_into(), 0);
  // Its stream goes on at round 4.
  ASSERT_TRUE(s0.Send(0, 4, update(0, 4)));
  ASSERT_TRUE(s1.Send(1, 4, update(1, 4)));
  ASSERT_TRUE(s1.ReadDelta(&d, &r, &c));
  EXPECT_EQ(r, 4);
  EXPECT_EQ(c, 2);
  s0.Cancel();
  s1.Cancel();
}

TEST(ParameterServerService, ShutdownEndsWaitingStreamsWithUnavailable) {
  TestServer server(Options(2, "sign", "sign"));
  const std::vector<float> x0 = InitialParams(server.n());
  server.JoinAndUpload(0, x0);
  TrainStream s0(&server, 5);
  ASSERT_TRUE(s0.Send(
      0, 1, Encode(server.worker_codec(), RandomUpdate(server.n(), 0, 1))));
  // Once the update is in, the stream waits for rank 1, who never comes.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (server.Status().bytes_worker_to_server() == 0 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  server.service().server().Shutdown();
  const grpc::Status s = s0.Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(s.error_message(), HasSubstr("shutting down"));
  EXPECT_EQ(server.Checksum(), ParamsChecksum(x0));
  EXPECT_TRUE(server.service().server().WaitUntilDone(absl::ZeroDuration()));
}

TEST(ParameterServerService, CheckpointsEveryKRoundsAndARestoreGoesOnExactly) {
  ServerOptions o = Options(2, "sign", "q4s");
  o.checkpoint_every = 2;
  const std::vector<float> x0 = InitialParams(TestLayout().num_elements());
  std::optional<Checkpoint> due;
  {
    TestServer a(o);
    EXPECT_FALSE(a.service().server().TakeDueCheckpoint().has_value());
    a.JoinAndUpload(0, x0);
    ASSERT_EQ(a.Join(1), 1);
    TrainAll(&a, 2, 3);
    due = a.service().server().TakeDueCheckpoint();
    ASSERT_TRUE(due.has_value());
    EXPECT_FALSE(a.service().server().TakeDueCheckpoint().has_value());
    EXPECT_EQ(due->state.round, 3);  // taken after round 2 closed
    EXPECT_EQ(due->rounds_closed, 2);
  }
  // The reference: two rounds straight, then round 3 from the restored
  // state, all in one engine.
  TestServer b(o, due);
  std::unique_ptr<RoundEngine> ref = ReferenceEngine(b, x0);
  for (int64_t round = 1; round <= 2; ++round) {
    for (int r = 0; r < 2; ++r) {
      ASSERT_TRUE(
          ref->Submit(r, round,
                      Encode(b.worker_codec(), RandomUpdate(b.n(), r, round)))
              .ok());
    }
    ASSERT_TRUE(ref->CloseRound().ok());
  }
  EXPECT_EQ(ParamsChecksum(ref->params()), ParamsChecksum(due->state.params));

  bool upload = true;
  ASSERT_EQ(b.Join(0, &upload), 0);
  EXPECT_FALSE(upload);
  ASSERT_EQ(b.Join(1), 1);
  std::vector<float> x;
  int64_t fetched_round = 0;
  ASSERT_TRUE(b.Fetch(0, &x, nullptr, &fetched_round).ok());
  EXPECT_EQ(fetched_round, 3);
  EXPECT_EQ(ParamsChecksum(x), ParamsChecksum(due->state.params));
  TrainStream s0(&b), s1(&b);
  for (int r = 0; r < 2; ++r) {
    const std::string u = Encode(b.worker_codec(), RandomUpdate(b.n(), r, 3));
    ASSERT_TRUE((r == 0 ? s0 : s1).Send(r, 3, u));
    ASSERT_TRUE(ref->Submit(r, 3, u).ok());
  }
  std::string delta;
  int64_t round = 0;
  int contributors = 0;
  ASSERT_TRUE(s0.ReadDelta(&delta, &round, &contributors));
  EXPECT_EQ(round, 3);
  EXPECT_EQ(delta, *ref->CloseRound());
  EXPECT_EQ(b.Checksum(), ParamsChecksum(ref->params()));
  const ServerSummary sum = b.service().server().Summary();
  EXPECT_EQ(sum.resumed_at_round, 3);
  EXPECT_EQ(sum.rounds_closed, 3);
  s0.Cancel();
  s1.Cancel();
}

TEST(ParameterServerService, RestoreRefusesOtherCompressionSettings) {
  ServerOptions o = Options(1, "sign", "sign");
  Checkpoint c;
  c.layout = TestLayout();
  c.compression = CompressionToProto(Compression("q4", "sign"));
  c.state.params.assign(c.layout.num_elements(), 0.0f);
  auto service = *ParameterServerService::Create(o);
  const absl::Status s = service->server().Restore(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("worker_codec"));
  EXPECT_EQ(service->server().Summary().num_elements, 0);
  c.compression = CompressionToProto(o.compression);
  EXPECT_TRUE(service->server().Restore(c).ok());
  EXPECT_FALSE(service->server().Restore(c).ok());  // only before serving, once
}

TEST(ParameterServerService, AWorkerTooFarBehindIsToldToResync) {
  FakeClock clock;
  ServerOptions o = Options(2, "sign", "sign");
  o.clock = &clock;
  RejectionCounter rejections;
  o.observer = &rejections;
  TestServer server(o);
  server.JoinAndUpload(0, InitialParams(server.n()));
  ASSERT_EQ(server.Join(1), 1);
  // Rank 1 sends nothing while rank 0's rounds close on the timeout.
  TrainStream s0(&server);
  for (int64_t round = 1; round <= 6; ++round) {
    ASSERT_TRUE(s0.Send(
        0, round,
        Encode(server.worker_codec(), RandomUpdate(server.n(), 0, round))));
    WaitForUpdates(server, round * static_cast<int64_t>(
                                       server.worker_codec().encoded_size()));
    clock.Advance(o.round_timeout);
    std::string delta;
    int64_t got = 0;
    int contributors = 0;
    ASSERT_TRUE(s0.ReadDelta(&delta, &got, &contributors));
    EXPECT_EQ(contributors, 1);
  }
  const std::string before = server.Checksum();
  TrainStream s1(&server);
  // The server refuses the round at its first chunk and may end the stream
  // before the later chunks are written, so Send may report a failed
  // write; the stream's status says why.
  s1.Send(1, 1, Encode(server.worker_codec(), RandomUpdate(server.n(), 1, 1)));
  const grpc::Status s = s1.Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("join again and fetch x"));
  EXPECT_EQ(rejections.count(Rejection::kLagging), 1);
  EXPECT_EQ(server.Checksum(), before);
  EXPECT_EQ(server.service().server().Summary().short_rounds, 6);
  s0.Cancel();
}

// The round closes segment by segment: the delta of the first segment (w)
// reaches the workers while the second (b) of a worker's update has not
// been sent, and the whole delta, after COMMIT, is the engine's.
TEST(ParameterServerService, TheDeltaOfASegmentGoesOutBeforeTheUpdatesEnd) {
  for (const char* codecs : {"fp32/fp32", "sign/sign"}) {
    SCOPED_TRACE(codecs);
    const std::string spec = codecs;
    TestServer server(Options(2, spec.substr(0, spec.find('/')),
                              spec.substr(spec.find('/') + 1)));
    ASSERT_EQ(server.worker_codec().segments().size(), 2u);
    const std::vector<float> x0 = InitialParams(server.n());
    server.JoinAndUpload(0, x0);
    ASSERT_EQ(server.Join(1), 1);
    std::unique_ptr<RoundEngine> ref = ReferenceEngine(server, x0);
    TrainStream s0(&server), s1(&server);
    const std::string u0 = Encode(server.worker_codec(),
                                  RandomUpdate(server.n(), 0, 1)),
                      u1 = Encode(server.worker_codec(),
                                  RandomUpdate(server.n(), 1, 1));
    ASSERT_TRUE(s0.Send(0, 1, u0));
    // Rank 1: segment w whole, b not (the chunks up to and with the one
    // where b starts).
    const size_t chunk = server.options().max_chunk_bytes;
    const size_t b_begin = server.worker_codec().segments()[1].byte_begin;
    const size_t first_part = (b_begin + chunk - 1) / chunk * chunk;
    ASSERT_LT(first_part, u1.size());
    ASSERT_TRUE(s1.SendPart(1, 1, u1, 0, first_part));
    v1::ServerMessage m;
    ASSERT_TRUE(s0.ReadMessage(&m));
    EXPECT_EQ(m.kind(), v1::ServerMessage::CHUNK);
    EXPECT_EQ(m.offset(), 0);
    EXPECT_EQ(server.Status().round(), 1);
    ASSERT_TRUE(s1.SendPart(1, 1, u1, first_part, u1.size()));
    std::string d1;
    int64_t r = 0;
    int c = 0;
    ASSERT_TRUE(s1.ReadDelta(&d1, &r, &c));
    EXPECT_EQ(s1.last_end(), v1::ServerMessage::COMMIT);
    EXPECT_EQ(c, 2);
    ASSERT_TRUE(ref->Submit(0, 1, u0).ok());
    ASSERT_TRUE(ref->Submit(1, 1, u1).ok());
    EXPECT_EQ(d1, *ref->CloseRound());
    EXPECT_EQ(server.Checksum(), ParamsChecksum(ref->params()));
  }
}

TEST(ParameterServerService, ARoundThatOverflowsIsDroppedAndTrainingGoesOn) {
  ServerOptions o = Options(2, "fp32", "sign");
  TestServer server(o);
  const std::vector<float> x0 = InitialParams(server.n());
  server.JoinAndUpload(0, x0);
  ASSERT_EQ(server.Join(1), 1);
  TrainStream s0(&server), s1(&server);
  const std::string huge =
      Encode(server.worker_codec(), std::vector<float>(server.n(), 3e38f));
  ASSERT_TRUE(s0.Send(0, 1, huge));
  ASSERT_TRUE(s1.Send(1, 1, huge));
  std::string d0, d1;
  int64_t r = 0;
  int c = 0;
  ASSERT_TRUE(s0.ReadDelta(&d0, &r, &c));
  ASSERT_TRUE(s1.ReadDelta(&d1, &r, &c));
  EXPECT_EQ(s0.last_end(), v1::ServerMessage::DROP);
  EXPECT_EQ(d0, d1);
  EXPECT_EQ(server.Checksum(), ParamsChecksum(x0));
  std::vector<float> applied(server.n(), 0.0f);
  ASSERT_TRUE(server.server_codec()
                  .DecodeAccumulate(d0, 1.0f, absl::MakeSpan(applied))
                  .ok());
  for (float a : applied) ASSERT_EQ(a, 0.0f);
  // Round 2 is an ordinary round.
  for (int rank = 0; rank < 2; ++rank) {
    ASSERT_TRUE((rank == 0 ? s0 : s1)
                    .Send(rank, 2,
                          Encode(server.worker_codec(),
                                 RandomUpdate(server.n(), rank, 2))));
  }
  ASSERT_TRUE(s0.ReadDelta(&d0, &r, &c));
  EXPECT_EQ(r, 2);
  EXPECT_NE(server.Checksum(), ParamsChecksum(x0));
  const ServerSummary sum = server.service().server().Summary();
  EXPECT_TRUE(sum.error.ok()) << sum.error;
  EXPECT_EQ(sum.dropped_rounds, 1);
  s0.Cancel();
  s1.Cancel();
}

TEST(ParameterServerService, TwoShardsComputeTheUnshardedServersDeltas) {
  // Shard k of 2 owns whole segments; workers send each shard its byte
  // range of the whole-model update. The shards' deltas, concatenated, and
  // their x, concatenated, are those of one unsharded server.
  const TensorLayout layout = TestLayout();
  const CompressionConfig cc = Compression("sign", "q4s");
  std::shared_ptr<const UpdateCodec> wc =
      *UpdateCodec::Create(layout, cc.worker_codec, cc.options);
  const std::vector<ShardRange> plan = *PlanShards(*wc, 2);
  const std::vector<float> x0 = InitialParams(layout.num_elements());
  std::vector<std::unique_ptr<TestServer>> shards;
  for (int k = 0; k < 2; ++k) {
    ServerOptions o = Options(2, "sign", "q4s");
    o.shard = k;
    o.num_shards = 2;
    shards.push_back(std::make_unique<TestServer>(o));
    v1::JoinResponse resp;
    ASSERT_TRUE(shards[k]->Join(shards[k]->JoinRequest(0), &resp).ok());
    EXPECT_EQ(resp.shard(), k);
    EXPECT_EQ(resp.num_shards(), 2);
    EXPECT_EQ(resp.shard_begin(), static_cast<int64_t>(plan[k].begin));
    EXPECT_EQ(resp.shard_size(), static_cast<int64_t>(plan[k].size));
    EXPECT_EQ(resp.num_elements(), static_cast<int64_t>(layout.num_elements()));
    ASSERT_TRUE(shards[k]
                    ->Upload(0, std::vector<float>(
                                    x0.begin() + plan[k].begin,
                                    x0.begin() + plan[k].begin + plan[k].size))
                    .ok());
    ASSERT_EQ(shards[k]->Join(1), 1);
  }
  TestServer whole(Options(2, "sign", "q4s"));
  std::unique_ptr<RoundEngine> ref = ReferenceEngine(whole, x0);
  std::vector<std::unique_ptr<TrainStream>> streams;  // [shard][rank]
  for (int k = 0; k < 2; ++k) {
    for (int r = 0; r < 2; ++r) {
      streams.push_back(std::make_unique<TrainStream>(shards[k].get()));
    }
  }
  for (int64_t round = 1; round <= 3; ++round) {
    for (int r = 0; r < 2; ++r) {
      const std::string u =
          Encode(*wc, RandomUpdate(layout.num_elements(), r, round));
      ASSERT_TRUE(ref->Submit(r, round, u).ok());
      for (int k = 0; k < 2; ++k) {
        ASSERT_TRUE(streams[2 * k + r]->Send(
            r, round, u.substr(plan[k].byte_begin, plan[k].byte_size)));
      }
    }
    std::string joined;
    for (int k = 0; k < 2; ++k) {
      for (int r = 0; r < 2; ++r) {
        std::string delta;
        int64_t got = 0;
        int contributors = 0;
        ASSERT_TRUE(streams[2 * k + r]->ReadDelta(&delta, &got, &contributors));
        EXPECT_EQ(got, round);
        if (r == 0) joined += delta;
      }
    }
    EXPECT_EQ(joined, *ref->CloseRound()) << "round " << round;
  }
  std::vector<float> x;
  for (int k = 0; k < 2; ++k) {
    std::vector<float> part;
    ASSERT_TRUE(shards[k]->Fetch(0, &part).ok());
    x.insert(x.end(), part.begin(), part.end());
  }
  EXPECT_EQ(ParamsChecksum(x), ParamsChecksum(ref->params()));
  for (auto& s : streams) s->Cancel();
}

TEST(ParameterServerService, ARestoreChecksTheShard) {
  ServerOptions o = Options(1, "sign", "sign");
  o.shard = 1;
  o.num_shards = 2;
  Checkpoint c;
  c.layout = TestLayout();
  c.compression = CompressionToProto(o.compression);
  c.shard = 0;
  c.num_shards = 2;
  c.state.params.assign(2000, 0.0f);  // shard 0 of 2 is w[40,50]
  auto service = *ParameterServerService::Create(o);
  const absl::Status s = service->server().Restore(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("shard 0 of 2"));
  c.shard = 1;
  EXPECT_FALSE(
      service->server().Restore(c).ok());  // shard 1 is b[7]: wrong size
  c.state.params.assign(7, 0.0f);
  EXPECT_TRUE(service->server().Restore(c).ok());
}

}  // namespace
}  // namespace effadam

// ------------------------------------------------- issue 17: no client can
// stop the server or wedge its membership.

namespace effadam {
namespace {

// This process's resident memory, from /proc/self/statm.
int64_t ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  long pages = 0, resident = 0;
  if (f != nullptr) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE);
}

// Waits (bounded, real time) until the server has read a chunk of an
// upload: it counts the chunk's bytes when it starts the upload.
void WaitForUploadStart(TestServer& server) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (server.service().server().Summary().traffic.join().wire == 0 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  ASSERT_GT(server.service().server().Summary().traffic.join().wire, 0);
}

// A refused call's message is cut to kMaxStatusMessageBytes, so a client
// sees the real code (a 2000-tensor layout that differs from the server's
// used to reach it as RESOURCE_EXHAUSTED: "received initial metadata size
// exceeds limit"); the server log has the whole message, with the peer.
TEST(ParameterServerServiceLimits, ALongRefusalKeepsItsCodeAndIsLogged) {
  RecordingLogger log;
  ServerOptions o = Options(2, "sign", "sign");
  o.logger = &log;
  RejectionCounter rejections;
  o.observer = &rejections;
  TestServer server(o);
  ASSERT_EQ(server.Join(0), 0);
  std::vector<TensorSpec> many;
  for (int i = 0; i < 2000; ++i) {
    many.push_back({absl::StrCat("layer_with_a_long_name_", i), {10}});
  }
  v1::JoinRequest req = server.JoinRequest(1);
  *req.mutable_layout() = LayoutToProto(*TensorLayout::Create(many));
  v1::JoinResponse resp;
  const grpc::Status s = server.Join(req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_LE(s.error_message().size(), kMaxStatusMessageBytes);
  EXPECT_THAT(s.error_message(), HasSubstr("the layout differs"));
  EXPECT_THAT(s.error_message(), HasSubstr("the server log has it all"));
  EXPECT_EQ(rejections.count(Rejection::kLayoutMismatch), 1);
  EXPECT_TRUE(log.Contains("rejected Join from ipv4:127.0.0.1:"));
  EXPECT_TRUE(log.Contains("layer_with_a_long_name_1999"));  // all of it
  EXPECT_TRUE(log.Contains("(layout_mismatch)"));
}

// A flood of refused calls is counted in full but logged at a bounded rate.
TEST(ParameterServerServiceLimits, RejectedCallsAreLoggedAtABoundedRate) {
  RecordingLogger log;
  ServerOptions o = Options(2, "sign", "sign");
  o.logger = &log;
  RejectionCounter rejections;
  o.observer = &rejections;
  TestServer server(o);
  v1::JoinResponse resp;
  for (int i = 0; i < 100; ++i) {
    ASSERT_FALSE(server.Join(server.JoinRequest(7), &resp).ok());
  }
  EXPECT_EQ(rejections.count(Rejection::kBadRank), 100);
  int logged = 0;
  for (const RecordingLogger::Line& line : log.lines()) {
    logged += line.message.find("(bad_rank)") != std::string::npos;
  }
  EXPECT_GE(logged, 1);
  EXPECT_LE(logged, 40);  // 20 per 10 s; the test may straddle a period
}

// Finding 7: an UploadParams with no chunks (or whose first chunk gRPC
// refused for its size) named no rank, so the uploader stayed live and no
// other worker was ever asked to upload. The uploader must start within
// the stall timeout; then the next Join uploads.
TEST(ParameterServerServiceLimits, AnUploaderThatSendsNothingIsReplaced) {
  FakeClock clock;
  ServerOptions o = Options(2, "sign", "sign");
  o.clock = &clock;
  TestServer server(o);
  bool upload = false;
  ASSERT_EQ(server.Join(-1, &upload), 0);
  ASSERT_TRUE(upload);
  EXPECT_EQ(server.UploadChunks({}).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_EQ(server.Join(-1, &upload), 1);
  EXPECT_FALSE(upload);  // rank 0 still has its time
  clock.Advance(absl::Seconds(61));
  ASSERT_EQ(server.Join(-1, &upload), 0);
  EXPECT_TRUE(upload);
  EXPECT_TRUE(server.Upload(0, InitialParams(server.n())).ok());
}

// Finding 6: an uploader that sent one chunk and stopped held every other
// worker until its own timeout. Now its call is cancelled once it has sent
// nothing for the stall timeout, its rank leaves, and the next Join
// uploads.
TEST(ParameterServerServiceLimits, AStalledUploadIsCancelledAndReplaced) {
  FakeClock clock;
  ServerOptions o = Options(2, "sign", "sign");
  o.clock = &clock;
  TestServer server(o);
  bool upload = false;
  ASSERT_EQ(server.Join(-1, &upload), 0);
  ASSERT_TRUE(upload);
  const std::vector<float> x0 = InitialParams(server.n());
  std::vector<v1::ParamsChunk> chunks =
      TestServer::Chunks(0, x0, o.max_chunk_bytes / 4);
  ASSERT_GT(chunks.size(), 2u);

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::UploadParamsResponse resp;
  auto writer = server.stub()->UploadParams(&ctx, &resp);
  ASSERT_TRUE(writer->Write(chunks[0]));
  WaitForUploadStart(server);
  clock.Advance(absl::Seconds(61));
  // Any call applies the rule; this Join is the new uploader.
  ASSERT_EQ(server.Join(-1, &upload), 0);
  EXPECT_TRUE(upload);
  const grpc::Status stalled = writer->Finish();
  EXPECT_FALSE(stalled.ok());
  EXPECT_TRUE(server.Upload(0, x0).ok());
  std::vector<float> x;
  ASSERT_TRUE(server.Fetch(0, &x).ok());
  EXPECT_EQ(ParamsChecksum(x), ParamsChecksum(x0));
}

// A worker killed while its FetchParams ran kept its joined rank for the
// idle grace (60 s): its restarted process was refused with ALREADY_EXISTS
// and rounds waited for it. The cancelled call now frees the rank at once.
TEST(ParameterServerServiceLimits, AFetchWhoseClientWentAwayFreesItsRank) {
  ServerOptions o = Options(2, "sign", "sign");
  TestServer server(o);
  bool upload = false;
  ASSERT_EQ(server.Join(-1, &upload), 0);
  ASSERT_TRUE(upload);
  ASSERT_EQ(server.Join(-1, &upload), 1);
  ASSERT_EQ(server.Status().live_workers(), 2);
  // Rank 1 waits in FetchParams for the initial parameters, then its
  // process dies (the call is cancelled).
  grpc::ClientContext ctx;
  v1::FetchParamsRequest req;
  req.set_rank(1);
  auto reader = server.stub()->FetchParams(&ctx, req);
  absl::SleepFor(absl::Milliseconds(200));
  ctx.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(server.WaitLive(1));
  // The restarted worker gets its rank back at once.
  ASSERT_EQ(server.Join(1, &upload), 1);
  EXPECT_FALSE(upload);
  const std::vector<float> x0 = InitialParams(server.n());
  ASSERT_TRUE(server.Upload(0, x0).ok());
  std::vector<float> x;
  ASSERT_TRUE(server.Fetch(1, &x).ok());
  EXPECT_EQ(ParamsChecksum(x), ParamsChecksum(x0));
}

// A worker waiting for the initial parameters while its uploader goes away
// is told to join again, and the first to do so uploads: nobody waits for
// parameters that will never come.
TEST(ParameterServerServiceLimits, WaitingWorkersRejoinWhenTheUploaderFails) {
  ServerOptions o = Options(2, "sign", "sign");
  TestServer server(o);
  bool upload = false;
  ASSERT_EQ(server.Join(-1, &upload), 0);
  ASSERT_TRUE(upload);
  ASSERT_EQ(server.Join(-1, &upload), 1);
  ASSERT_FALSE(upload);
  grpc::Status fetched;
  std::thread waiter([&] {
    std::vector<float> x;
    fetched = server.Fetch(1, &x);
  });
  absl::SleepFor(absl::Milliseconds(300));  // rank 1 is waiting now
  // Rank 0's upload is malformed: refused, and rank 0 must join again.
  std::vector<float> bad = InitialParams(server.n());
  bad[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(server.Upload(0, bad).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  waiter.join();
  EXPECT_EQ(fetched.error_code(), grpc::StatusCode::ABORTED)
      << fetched.error_message();
  EXPECT_THAT(fetched.error_message(), HasSubstr("join again"));
  ASSERT_EQ(server.Join(1, &upload), 1);
  EXPECT_TRUE(upload);
  EXPECT_TRUE(server.Upload(1, InitialParams(server.n())).ok());
}

// Finding 5: a 42-byte Join declaring 2^28 elements and one upload chunk
// made the server allocate and zero 1 GiB and hold it while the client
// stalled. Memory now follows the bytes that arrived.
TEST(ParameterServerServiceLimits, ADeclaredHugeLayoutCostsOnlyWhatArrives) {
  ServerOptions o = Options(1, "fp32", "fp32");
  o.max_chunk_bytes = 1 << 20;
  TestServer server(o);
  v1::JoinRequest req = server.JoinRequest(-1);
  *req.mutable_layout() =
      LayoutToProto(*TensorLayout::Create({{"w", {int64_t{1} << 28}}}));
  v1::JoinResponse join;
  ASSERT_TRUE(server.Join(req, &join).ok());
  ASSERT_TRUE(join.upload_initial_params());
  const int64_t rss_before = ResidentBytes();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::UploadParamsResponse resp;
  auto writer = server.stub()->UploadParams(&ctx, &resp);
  std::vector<float> first((1 << 20) / 4, 0.5f);
  ASSERT_TRUE(
      writer->Write(TestServer::Chunks(join.rank(), first, first.size())[0]));
  WaitForUploadStart(server);
  absl::SleepFor(absl::Milliseconds(200));  // the chunk is being kept
  const int64_t grown = ResidentBytes() - rss_before;
  EXPECT_LT(grown, int64_t{200} << 20) << "RSS grew by " << grown << " B";
  ctx.TryCancel();
  writer->Finish();
}

}  // namespace
}  // namespace effadam

// ------------------------------------- issue 17: zero lost rounds on a
// server crash. A restarted server whose checkpoint is older than the
// replicas its workers hold takes the newest replica (checked by its
// checksum), so rounds_closed after the restart equals rounds_closed
// before it.

namespace effadam {
namespace {

v1::JoinRequest ReplicaJoin(TestServer& server, int rank, int64_t round,
                            const std::string& checksum) {
  v1::JoinRequest req = server.JoinRequest(rank);
  req.set_replica_round(round);
  req.set_replica_checksum(checksum);
  return req;
}

grpc::Status UploadReplica(TestServer& server, int rank, int64_t round,
                           const std::vector<float>& x) {
  std::vector<v1::ParamsChunk> chunks = TestServer::Chunks(
      rank, x, server.options().max_chunk_bytes / sizeof(float));
  for (v1::ParamsChunk& c : chunks) c.set_round(round);
  return server.UploadChunks(chunks);
}

TEST(ParameterServerServiceRecovery, ANewerReplicaWinsOverTheCheckpoint) {
  ServerOptions o = Options(2, "sign", "sign");
  o.checkpoint_every = 2;
  const std::vector<float> x0 = InitialParams(TestLayout().num_elements());
  std::optional<Checkpoint> checkpoint;
  std::vector<float> replica;  // the workers' x after 3 rounds
  int64_t closed_before = 0;
  {
    TestServer a(o);
    a.JoinAndUpload(0, x0);
    ASSERT_EQ(a.Join(1), 1);
    TrainAll(&a, 2, 3);
    checkpoint = a.service().server().TakeDueCheckpoint();  // after round 2
    ASSERT_TRUE(checkpoint.has_value());
    ASSERT_EQ(checkpoint->state.round, 3);
    ASSERT_TRUE(a.Fetch(0, &replica).ok());
    closed_before = a.service().server().Summary().rounds_closed;
    ASSERT_EQ(closed_before, 3);
  }
  const std::string replica_sum = ParamsChecksum(replica);
  RecordingLogger log;
  o.logger = &log;
  TestServer b(o, checkpoint);
  v1::JoinResponse resp;
  // A replica as old as x is not asked for.
  ASSERT_TRUE(
      b.Join(ReplicaJoin(b, 1, 3, ParamsChecksum(checkpoint->state.params)),
             &resp)
          .ok());
  EXPECT_FALSE(resp.upload_initial_params());
  // A newer one is, and must be what its Join declared.
  ASSERT_TRUE(b.Join(ReplicaJoin(b, 0, 4, replica_sum), &resp).ok());
  ASSERT_TRUE(resp.upload_initial_params());
  std::vector<float> forged = replica;
  forged[0] += 1.0f;
  EXPECT_EQ(UploadReplica(b, 0, 4, forged).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(b.service().server().Summary().round, 3);  // unchanged
  // Rank 0 had to leave; it joins again and uploads the true replica.
  ASSERT_TRUE(b.Join(ReplicaJoin(b, 0, 4, replica_sum), &resp).ok());
  ASSERT_TRUE(resp.upload_initial_params());
  ASSERT_TRUE(UploadReplica(b, 0, 4, replica).ok());
  const ServerSummary s = b.service().server().Summary();
  EXPECT_EQ(s.round, 4);
  EXPECT_EQ(s.rounds_closed, closed_before);  // zero rounds lost
  EXPECT_EQ(s.params_checksum, replica_sum);
  EXPECT_EQ(s.error_checksum,
            ParamsChecksum(std::vector<float>(b.n(), 0.0f)));  // E restarts
  EXPECT_TRUE(log.Contains("x recovered from rank 0's replica at round 4"));
  // Rank 1 fetches the replica and both train on from round 4.
  std::vector<float> x;
  int64_t round = 0;
  ASSERT_TRUE(b.Fetch(1, &x, nullptr, &round).ok());
  EXPECT_EQ(round, 4);
  EXPECT_EQ(ParamsChecksum(x), replica_sum);
}

TEST(ParameterServerServiceRecovery, ReplicasAreTakenOnlyUntilARoundCloses) {
  ServerOptions o = Options(1, "fp32", "fp32");
  TestServer server(o);
  const std::vector<float> x0 = InitialParams(server.n());
  server.JoinAndUpload(0, x0);
  TrainAll(&server, 1, 1);
  v1::JoinResponse resp;
  ASSERT_TRUE(
      server.Join(ReplicaJoin(server, 0, 9, ParamsChecksum(x0)), &resp).ok());
  EXPECT_FALSE(resp.upload_initial_params());  // a round closed here
}

// A server restarted without a checkpoint goes on at the first rejoining
// worker's replica round, not at round 1.
TEST(ParameterServerServiceRecovery,
     WithoutACheckpointTheReplicaKeepsItsRound) {
  ServerOptions o = Options(2, "sign", "sign");
  TestServer server(o);
  const std::vector<float> x = InitialParams(server.n());
  v1::JoinResponse resp;
  ASSERT_TRUE(
      server.Join(ReplicaJoin(server, 1, 41, ParamsChecksum(x)), &resp).ok());
  ASSERT_TRUE(resp.upload_initial_params());
  ASSERT_TRUE(UploadReplica(server, 1, 41, x).ok());
  const ServerSummary s = server.service().server().Summary();
  EXPECT_EQ(s.round, 41);
  EXPECT_EQ(s.rounds_closed, 40);
  EXPECT_EQ(s.resumed_at_round, 41);
}

}  // namespace
}  // namespace effadam
