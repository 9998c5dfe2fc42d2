// Bad input, one case at a time, against the real service on 127.0.0.1:
// every malformed Join, UploadParams and Train message must end its call
// with the status code docs/protocol.md names, be counted once under its
// rejection reason, and leave x and the server's error memory E exactly as
// they were (ServerSummary's params_checksum and error_checksum before and
// after). After the bad input, well-behaved workers finish the run, and the
// final x and E equal a RoundEngine that saw only the good updates.
//
// With EFFADAM_BAD_INPUT_TABLE=PATH the binary writes what it observed as
// the markdown table of docs/bad_input.md.

#include <array>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/checksum.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/parameter_server_service.h"
#include "tests/service_test_util.h"

namespace effadam {
namespace {

using service_test::Encode;
using service_test::InitialParams;
using service_test::Options;
using service_test::RandomUpdate;
using service_test::ReferenceEngine;
using service_test::RejectionCounter;
using service_test::TestServer;
using service_test::TrainStream;

// Rounds every suite trains; the bad input arrives while round
// kWarmupRounds + 1 is being collected, so E is not zero.
constexpr int64_t kWarmupRounds = 5;
constexpr int64_t kRounds = 8;

// One row of docs/bad_input.md, as observed.
struct Row {
  std::string rpc, name, code, message, reasons, x_before, x_after, e_before,
      e_after;
};

std::vector<Row>& Table() {
  static auto* rows = new std::vector<Row>;
  return *rows;
}

std::string Short(const std::string& checksum) {
  return checksum.empty() ? "(none)" : checksum.substr(0, 8);
}

// The start of a status message, fit for a table cell.
std::string Clip(std::string m) {
  if (m.size() > 90) m = m.substr(0, 87) + "...";
  for (char& c : m) c = c == '|' ? '/' : c;
  return absl::StrCat("`", m, "`");
}

// Writes the rows to $EFFADAM_BAD_INPUT_TABLE when the tests are done.
class TableWriter : public ::testing::Environment {
 public:
  void TearDown() override {
    const char* path = std::getenv("EFFADAM_BAD_INPUT_TABLE");
    if (path == nullptr) return;
    std::ofstream out(path);
    out << "| # | RPC | bad input | status | message (start) | reason counted "
           "| x before -> after | E before -> after | model unchanged |\n"
        << "|---|---|---|---|---|---|---|---|---|\n";
    int i = 0;
    for (const Row& r : Table()) {
      const bool same = r.x_before == r.x_after && r.e_before == r.e_after;
      out << "| " << ++i << " | " << r.rpc << " | " << r.name << " | " << r.code
          << " | " << Clip(r.message) << " | " << r.reasons << " | "
          << Short(r.x_before) << " -> " << Short(r.x_after) << " | "
          << Short(r.e_before) << " -> " << Short(r.e_after) << " | "
          << (same ? "yes" : "NO") << " |\n";
    }
  }
};
[[maybe_unused]] const auto* const kTableWriter =
    ::testing::AddGlobalTestEnvironment(new TableWriter);

// A service with a recording observer.
class Harness {
 public:
  Harness(const std::string& worker_codec, int64_t rounds) {
    ServerOptions o = Options(2, worker_codec, "sign");
    o.rounds = rounds;
    o.observer = &observer_;
    server_ = std::make_unique<TestServer>(o);
  }
  TestServer& server() { return *server_; }

  // Runs `bad` (after `setup`, outside the snapshot) and checks that it was
  // refused with `code`, counted once as `reason`, and changed neither x
  // nor E nor the round.
  void Expect(const char* rpc, const std::string& name, grpc::StatusCode code,
              Rejection reason, const std::function<grpc::Status()>& bad,
              const std::function<void()>& setup = nullptr) {
    SCOPED_TRACE(absl::StrCat(rpc, ": ", name));
    if (setup) setup();
    const ServerSummary before = server_->service().server().Summary();
    const std::array<int, kNumRejections> counted = observer_.counts();
    const grpc::Status s = bad();
    const ServerSummary after = server_->service().server().Summary();
    const std::array<int, kNumRejections> now = observer_.counts();

    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_FALSE(s.error_message().empty());
    std::vector<std::string> reasons;
    for (int i = 0; i < kNumRejections; ++i) {
      for (int k = counted[i]; k < now[i]; ++k) {
        reasons.push_back(RejectionName(static_cast<Rejection>(i)));
      }
    }
    EXPECT_THAT(reasons, ::testing::ElementsAre(RejectionName(reason)));
    EXPECT_EQ(after.params_checksum, before.params_checksum);
    EXPECT_EQ(after.error_checksum, before.error_checksum);
    EXPECT_EQ(after.round, before.round);
    EXPECT_EQ(after.rounds_closed, before.rounds_closed);
    Table().push_back(Row{
        rpc, name,
        absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())),
        s.error_message(),
        reasons.empty() ? "(none)" : absl::StrJoin(reasons, ", "),
        before.params_checksum, after.params_checksum, before.error_checksum,
        after.error_checksum});
  }

 private:
  RejectionCounter observer_;
  std::unique_ptr<TestServer> server_;
};

v1::WorkerMessage Message(int rank, int64_t round, int64_t offset,
                          std::string payload) {
  v1::WorkerMessage m;
  m.set_rank(rank);
  m.set_round(round);
  m.set_offset(offset);
  m.set_payload(std::move(payload));
  return m;
}

// Opens a Train stream, writes `messages` (stopping when the server has
// answered) and returns the server's final status.
grpc::Status SendMessages(TestServer* server,
                          const std::vector<v1::WorkerMessage>& messages) {
  TrainStream stream(server);
  for (const v1::WorkerMessage& m : messages) {
    if (!stream.Write(m)) break;
  }
  return stream.Finish();
}

// The chunks a well-behaved worker sends for `update`.
std::vector<v1::WorkerMessage> Chunks(int rank, int64_t round,
                                      const std::string& update,
                                      size_t chunk = 100) {
  std::vector<v1::WorkerMessage> out;
  for (size_t off = 0; off < update.size(); off += chunk) {
    out.push_back(Message(rank, round, off, update.substr(off, chunk)));
  }
  return out;
}

void PutFloat(std::string* bytes, size_t at, float v) {
  std::memcpy(&(*bytes)[at], &v, sizeof v);
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// A corruption of a good update of the test layout: w[2000] in blocks of
// 64 with the direction's codec, then b[7] as fp32 (its last 28 bytes).
struct Corruption {
  std::string name;
  std::function<void(std::string*)> apply;
};

std::vector<Corruption> FpCorruptions() {
  return {
      {"NaN in the fp32 tensor b",
       [](std::string* u) { PutFloat(u, u->size() - 28 + 12, kNaN); }},
      {"-Inf in the fp32 tensor b",
       [](std::string* u) { PutFloat(u, u->size() - 4, -kInf); }},
  };
}

std::vector<Corruption> ScaleCorruptions() {
  std::vector<Corruption> c = {
      {"NaN scale of block 0", [](std::string* u) { PutFloat(u, 0, kNaN); }},
      {"+Inf scale of block 5",
       [](std::string* u) { PutFloat(u, 4 * 5, kInf); }},
      {"negative scale of block 31",
       [](std::string* u) { PutFloat(u, 4 * 31, -1.0f); }},
  };
  for (Corruption& f : FpCorruptions()) c.push_back(std::move(f));
  return c;
}

// Two workers train kWarmupRounds rounds; rank 0 keeps its stream open
// (idle at the next round) and rank 1 closes its own and leaves. Returns
// rank 0's stream.
std::unique_ptr<TrainStream> WarmUp(TestServer* server,
                                    const std::vector<float>& x0) {
  server->JoinAndUpload(0, x0);
  EXPECT_EQ(server->Join(1), 1);
  auto s0 = std::make_unique<TrainStream>(server, 60);
  TrainStream s1(server, 60);
  for (int64_t round = 1; round <= kWarmupRounds; ++round) {
    for (int rank : {0, 1}) {
      TrainStream& s = rank == 0 ? *s0 : s1;
      EXPECT_TRUE(s.Send(rank, round,
                         Encode(server->worker_codec(),
                                RandomUpdate(server->n(), rank, round))));
    }
    for (TrainStream* s : {s0.get(), &s1}) {
      std::string delta;
      int64_t got = 0;
      int contributors = 0;
      EXPECT_TRUE(s->ReadDelta(&delta, &got, &contributors));
      EXPECT_EQ(got, round);
      EXPECT_EQ(contributors, 2);
    }
  }
  EXPECT_TRUE(s1.Finish().ok());
  EXPECT_TRUE(server->WaitLive(1));
  return s0;
}

// Both ranks train rounds `from`..kRounds (rank 1 on a new stream; it must
// be joined), the server ends both streams with OK, and the final x and E
// equal a RoundEngine that saw every round's two good updates.
void FinishRunAndCompare(TestServer* server, TrainStream* s0, int64_t from,
                         const std::vector<float>& x0) {
  TrainStream s1(server, 60);
  for (int64_t round = from; round <= kRounds; ++round) {
    for (int rank : {0, 1}) {
      TrainStream& s = rank == 0 ? *s0 : s1;
      ASSERT_TRUE(s.Send(rank, round,
                         Encode(server->worker_codec(),
                                RandomUpdate(server->n(), rank, round))));
    }
    for (TrainStream* s : {s0, &s1}) {
      std::string delta;
      int64_t got = 0;
      int contributors = 0;
      ASSERT_TRUE(s->ReadDelta(&delta, &got, &contributors));
      EXPECT_EQ(contributors, 2);
    }
  }
  EXPECT_TRUE(s0->Finish().ok());
  EXPECT_TRUE(s1.Finish().ok());

  std::unique_ptr<RoundEngine> ref = ReferenceEngine(*server, x0);
  for (int64_t round = 1; round <= kRounds; ++round) {
    for (int rank : {0, 1}) {
      ASSERT_TRUE(ref->Submit(rank, round,
                              Encode(server->worker_codec(),
                                     RandomUpdate(server->n(), rank, round)))
                      .ok());
    }
    ASSERT_TRUE(ref->CloseRound().ok());
  }
  const ServerSummary s = server->service().server().Summary();
  EXPECT_EQ(s.rounds_closed, kRounds);
  EXPECT_EQ(s.params_checksum, ParamsChecksum(ref->params()));
  EXPECT_EQ(s.error_checksum, ParamsChecksum(ref->error_memory()));
}

// Payload corruptions of rank 1's update for the round being collected.
void ExpectInvalidPayloads(Harness* h, const std::string& codec,
                           const std::vector<Corruption>& cases) {
  TestServer& server = h->server();
  const int64_t round = kWarmupRounds + 1;
  const std::string good =
      Encode(server.worker_codec(), RandomUpdate(server.n(), 1, round));
  for (const Corruption& c : cases) {
    std::string bad = good;
    c.apply(&bad);
    h->Expect(
        "Train", absl::StrCat(codec, " update: ", c.name),
        grpc::StatusCode::INVALID_ARGUMENT, Rejection::kInvalidPayload,
        [&] { return SendMessages(&server, Chunks(1, round, bad)); },
        [&] { ASSERT_EQ(server.Join(1), 1); });
  }
}

TEST(BadInput, TrainAndJoinOnASignServer) {
  Harness h("sign", kRounds);
  TestServer& server = h.server();
  const std::vector<float> x0 = InitialParams(server.n());
  std::unique_ptr<TrainStream> s0 = WarmUp(&server, x0);
  const int64_t round = kWarmupRounds + 1;
  const std::string good =
      Encode(server.worker_codec(), RandomUpdate(server.n(), 1, round));
  ASSERT_EQ(good.size(), 406u);  // 5 chunks: 4 of 100 bytes, then 6
  auto join1 = [&] { ASSERT_EQ(server.Join(1), 1); };
  auto train = [&](const char* name, grpc::StatusCode code, Rejection why,
                   std::vector<v1::WorkerMessage> messages, bool join = true) {
    h.Expect(
        "Train", name, code, why,
        [&] { return SendMessages(&server, messages); },
        join ? std::function<void()>(join1) : nullptr);
  };
  using Code = grpc::StatusCode;
  const std::vector<v1::WorkerMessage> ok = Chunks(1, round, good);

  train("rank that has not joined (1, left)", Code::FAILED_PRECONDITION,
        Rejection::kUnknownRank, ok, false);
  train("rank out of range (7)", Code::FAILED_PRECONDITION,
        Rejection::kUnknownRank, Chunks(7, round, good), false);
  train("negative rank (-3)", Code::FAILED_PRECONDITION,
        Rejection::kUnknownRank, Chunks(-3, round, good), false);
  train("second stream for a rank (0 has one)", Code::FAILED_PRECONDITION,
        Rejection::kDuplicateStream, Chunks(0, round, good), false);
  {
    auto m = ok;
    m[2].set_rank(0);
    train("a chunk naming another rank mid-update", Code::INVALID_ARGUMENT,
          Rejection::kWrongRank, m);
  }
  train("stale round (1; its delta is no longer kept)", Code::ABORTED,
        Rejection::kLagging, Chunks(1, 1, good));
  train("round 0", Code::INVALID_ARGUMENT, Rejection::kWrongRound,
        Chunks(1, 0, good));
  train("future round (current + 1)", Code::FAILED_PRECONDITION,
        Rejection::kWrongRound, Chunks(1, round + 1, good));
  train("round past --rounds", Code::FAILED_PRECONDITION,
        Rejection::kTrainingEnded, Chunks(1, kRounds + 1, good));
  {
    auto m = ok;
    m[1].set_round(round + 1);
    train("round changes mid-update", Code::INVALID_ARGUMENT,
          Rejection::kBadOffset, m);
  }
  train("first chunk at offset 100", Code::INVALID_ARGUMENT,
        Rejection::kBadOffset, {Message(1, round, 100, good.substr(0, 100))});
  {
    auto m = ok;
    m[2].set_offset(250);
    train("gap (offset 250, expected 200)", Code::INVALID_ARGUMENT,
          Rejection::kBadOffset, m);
  }
  {
    auto m = ok;
    std::swap(m[1], m[2]);
    train("chunks out of order", Code::INVALID_ARGUMENT, Rejection::kBadOffset,
          m);
  }
  {
    auto m = ok;
    m.insert(m.begin() + 2, m[1]);
    train("a chunk sent twice", Code::INVALID_ARGUMENT, Rejection::kBadOffset,
          m);
  }
  train("negative offset", Code::INVALID_ARGUMENT, Rejection::kBadOffset,
        {Message(1, round, -1, good.substr(0, 100))});
  train("empty chunk", Code::INVALID_ARGUMENT, Rejection::kBadChunkSize,
        {Message(1, round, 0, "")});
  train("chunk over max_chunk_bytes (101 > 100)", Code::INVALID_ARGUMENT,
        Rejection::kBadChunkSize, {Message(1, round, 0, good.substr(0, 101))});
  train("short chunk mid-update (50 of 100 bytes)", Code::INVALID_ARGUMENT,
        Rejection::kBadChunkSize, Chunks(1, round, good, 50));
  {
    auto m = ok;
    m.back().set_payload(std::string(100, '\0'));
    train("overlong update (100 bytes where 6 remain)", Code::INVALID_ARGUMENT,
          Rejection::kBadChunkSize, m);
  }
  {
    auto m = ok;
    m.pop_back();
    train("truncated update (stream ends after 400 of 406 bytes)",
          Code::INVALID_ARGUMENT, Rejection::kTruncatedUpdate, m);
  }
  ExpectInvalidPayloads(&h, "sign", ScaleCorruptions());

  // Join, with rank 0 live and rank 1 departed.
  auto join = [&](const std::string& name, grpc::StatusCode code, Rejection why,
                  const std::function<void(v1::JoinRequest*)>& change) {
    v1::JoinRequest req = server.JoinRequest(-1);
    change(&req);
    h.Expect("Join", name, code, why, [&] {
      v1::JoinResponse resp;
      return server.Join(req, &resp);
    });
  };
  join("empty layout", Code::INVALID_ARGUMENT, Rejection::kBadLayout,
       [](v1::JoinRequest* r) { r->clear_layout(); });
  join("zero dimension", Code::INVALID_ARGUMENT, Rejection::kBadLayout,
       [](v1::JoinRequest* r) { r->mutable_layout(0)->set_shape(1, 0); });
  join("negative dimension", Code::INVALID_ARGUMENT, Rejection::kBadLayout,
       [](v1::JoinRequest* r) { r->mutable_layout(1)->set_shape(0, -7); });
  join("tensor without dimensions", Code::INVALID_ARGUMENT,
       Rejection::kBadLayout,
       [](v1::JoinRequest* r) { r->mutable_layout(1)->clear_shape(); });
  join("duplicate tensor names", Code::INVALID_ARGUMENT, Rejection::kBadLayout,
       [](v1::JoinRequest* r) { r->mutable_layout(1)->set_name("w"); });
  join("empty tensor name", Code::INVALID_ARGUMENT, Rejection::kBadLayout,
       [](v1::JoinRequest* r) { r->mutable_layout(0)->set_name(""); });
  join("too many elements (2^32 > 2^31)", Code::INVALID_ARGUMENT,
       Rejection::kBadLayout, [](v1::JoinRequest* r) {
         r->mutable_layout(0)->set_shape(0, int64_t{1} << 16);
         r->mutable_layout(0)->set_shape(1, int64_t{1} << 16);
       });
  join("dimension overflowing int64 products", Code::INVALID_ARGUMENT,
       Rejection::kBadLayout, [](v1::JoinRequest* r) {
         r->mutable_layout(0)->set_shape(0,
                                         std::numeric_limits<int64_t>::max());
       });
  join("layout differs from the server's", Code::FAILED_PRECONDITION,
       Rejection::kLayoutMismatch,
       [](v1::JoinRequest* r) { r->mutable_layout(0)->set_shape(1, 51); });
  // Its message would be ~60 KB, past gRPC's 8 KiB metadata limit: cut to
  // 1 KiB so the worker sees this code, not RESOURCE_EXHAUSTED.
  join("layout of 2000 tensors that differs (a message cut to 1 KiB)",
       Code::FAILED_PRECONDITION, Rejection::kLayoutMismatch,
       [](v1::JoinRequest* r) {
         r->clear_layout();
         for (int i = 0; i < 2000; ++i) {
           v1::TensorSpec* t = r->add_layout();
           t->set_name(absl::StrCat("layer_with_a_long_name_", i));
           t->add_shape(10);
         }
       });
  join("unknown codec name (q9)", Code::INVALID_ARGUMENT,
       Rejection::kBadCompression, [](v1::JoinRequest* r) {
         r->mutable_compression()->set_worker_codec("q9");
       });
  join("topk ratio out of range (topk:1.5)", Code::INVALID_ARGUMENT,
       Rejection::kBadCompression, [](v1::JoinRequest* r) {
         r->mutable_compression()->set_server_codec("topk:1.5");
       });
  join("block size not a multiple of 8 (100)", Code::INVALID_ARGUMENT,
       Rejection::kBadCompression, [](v1::JoinRequest* r) {
         r->mutable_compression()->set_block_size(100);
       });
  join("block size too big (131072)", Code::INVALID_ARGUMENT,
       Rejection::kBadCompression, [](v1::JoinRequest* r) {
         r->mutable_compression()->set_block_size(131072);
       });
  join("negative min_compress_elements", Code::INVALID_ARGUMENT,
       Rejection::kBadCompression, [](v1::JoinRequest* r) {
         r->mutable_compression()->set_min_compress_elements(-1);
       });
  join("compression differs (q4 for sign)", Code::FAILED_PRECONDITION,
       Rejection::kCompressionMismatch, [](v1::JoinRequest* r) {
         r->mutable_compression()->set_worker_codec("q4");
       });
  join("error feedback differs", Code::FAILED_PRECONDITION,
       Rejection::kCompressionMismatch, [](v1::JoinRequest* r) {
         r->mutable_compression()->set_server_error_feedback(false);
       });
  join("rank out of range (9)", Code::INVALID_ARGUMENT, Rejection::kBadRank,
       [](v1::JoinRequest* r) { r->set_rank(9); });
  join("rank below -1 (-2)", Code::INVALID_ARGUMENT, Rejection::kBadRank,
       [](v1::JoinRequest* r) { r->set_rank(-2); });
  join("rank taken (0 is live)", Code::ALREADY_EXISTS, Rejection::kRankTaken,
       [](v1::JoinRequest* r) { r->set_rank(0); });
  ASSERT_EQ(server.Join(1), 1);  // both ranks live now
  join("no free rank (both live)", Code::RESOURCE_EXHAUSTED,
       Rejection::kNoFreeRank, [](v1::JoinRequest*) {});

  // A duplicate round on one stream: rank 1 sends the current round and
  // gets its delta, then sends the same round again.
  auto s1 = std::make_unique<TrainStream>(&server, 60);
  h.Expect(
      "Train", "duplicate round (the same round again after its delta)",
      Code::FAILED_PRECONDITION, Rejection::kWrongRound,
      [&] {
        s1->Send(1, round, good);
        return s1->Finish();
      },
      [&] {
        ASSERT_TRUE(s1->Send(1, round, good));
        ASSERT_TRUE(s0->Send(
            0, round,
            Encode(server.worker_codec(), RandomUpdate(server.n(), 0, round))));
        std::string delta;
        int64_t got = 0;
        int contributors = 0;
        ASSERT_TRUE(s1->ReadDelta(&delta, &got, &contributors));
        ASSERT_TRUE(s0->ReadDelta(&delta, &got, &contributors));
      });
  s1.reset();

  ASSERT_EQ(server.Join(1), 1);
  FinishRunAndCompare(&server, s0.get(), round + 1, x0);
}

TEST(BadInput, InvalidQ4Payloads) {
  Harness h("q4", kRounds);
  const std::vector<float> x0 = InitialParams(h.server().n());
  std::unique_ptr<TrainStream> s0 = WarmUp(&h.server(), x0);
  std::vector<Corruption> cases = ScaleCorruptions();
  // Codes follow the 32 scales: 4 bits per element, 15 is not a level.
  cases.push_back({"code 15 (2^4 - 1, not a level) for element 0",
                   [](std::string* u) { (*u)[128] |= 0x0f; }});
  ExpectInvalidPayloads(&h, "q4", cases);
  ASSERT_EQ(h.server().Join(1), 1);
  FinishRunAndCompare(&h.server(), s0.get(), kWarmupRounds + 1, x0);
}

TEST(BadInput, InvalidTopkPayloads) {
  Harness h("topk:0.1", kRounds);
  const std::vector<float> x0 = InitialParams(h.server().n());
  std::unique_ptr<TrainStream> s0 = WarmUp(&h.server(), x0);
  // Block 0 keeps k = 7 of 64: 7 uint16 indices, then 7 float32 values.
  auto index = [](std::string* u, int t, uint16_t v) {
    std::memcpy(&(*u)[2 * t], &v, 2);
  };
  std::vector<Corruption> cases = {
      {"index 64 outside its block of 64",
       [&](std::string* u) { index(u, 6, 64); }},
      {"indices not ascending (index 1 = index 0)",
       [&](std::string* u) {
         uint16_t first;
         std::memcpy(&first, u->data(), 2);
         index(u, 1, first);
       }},
      {"NaN value", [](std::string* u) { PutFloat(u, 14, kNaN); }},
      {"+Inf value", [](std::string* u) { PutFloat(u, 14 + 4 * 6, kInf); }},
  };
  for (Corruption& f : FpCorruptions()) cases.push_back(std::move(f));
  ExpectInvalidPayloads(&h, "topk:0.1", cases);
  ASSERT_EQ(h.server().Join(1), 1);
  FinishRunAndCompare(&h.server(), s0.get(), kWarmupRounds + 1, x0);
}

TEST(BadInput, UploadsOfTheInitialParameters) {
  Harness h("sign", kRounds);
  TestServer& server = h.server();
  using Code = grpc::StatusCode;
  const std::vector<float> x0 = InitialParams(server.n());  // 2007 floats
  auto upload = [&](const std::string& name, grpc::StatusCode code,
                    std::vector<v1::ParamsChunk> chunks) {
    h.Expect(
        "UploadParams", name, code, Rejection::kBadUpload,
        [&] { return server.UploadChunks(chunks); },
        // A malformed upload frees the uploader's rank: join it again
        // unless it is still live (then it is still the uploader).
        [&] {
          v1::JoinResponse resp;
          const grpc::Status s = server.Join(server.JoinRequest(0), &resp);
          ASSERT_TRUE(s.ok() ? resp.upload_initial_params()
                             : s.error_code() == Code::ALREADY_EXISTS)
              << s.error_message();
        });
    EXPECT_EQ(server.service().server().Summary().params_checksum, "");
  };
  const std::vector<v1::ParamsChunk> ok = TestServer::Chunks(0, x0, 25);

  bool asked = false;
  ASSERT_EQ(server.Join(0, &asked), 0);
  ASSERT_TRUE(asked);
  ASSERT_EQ(server.Join(1, &asked), 1);
  ASSERT_FALSE(asked);
  h.Expect("Train", "before the initial parameters exist",
           Code::FAILED_PRECONDITION, Rejection::kNotReady,
           [&] { return SendMessages(&server, {Message(1, 1, 0, "x")}); });
  h.Expect("UploadParams", "from a rank not asked to upload (1)",
           Code::FAILED_PRECONDITION, Rejection::kBadUpload,
           [&] { return server.Upload(1, x0); });
  h.Expect("UploadParams", "no chunks at all", Code::INVALID_ARGUMENT,
           Rejection::kBadUpload, [&] { return server.UploadChunks({}); });
  {
    auto c = ok;
    c[3].set_rank(1);
    upload("a chunk naming another rank", Code::INVALID_ARGUMENT, c);
  }
  {
    auto c = ok;
    std::swap(c[1], c[2]);
    upload("chunks out of order (begin 50, expected 25)",
           Code::INVALID_ARGUMENT, c);
  }
  {
    std::vector<float> bad = x0;
    bad[1234] = kNaN;
    upload("NaN at element 1234", Code::INVALID_ARGUMENT,
           TestServer::Chunks(0, bad, 25));
    bad[1234] = -kInf;
    upload("-Inf at element 1234", Code::INVALID_ARGUMENT,
           TestServer::Chunks(0, bad, 25));
  }
  {
    auto c = ok;
    c.pop_back();
    upload("too short (2000 of 2007 elements)", Code::INVALID_ARGUMENT, c);
  }
  {
    auto c = ok;
    c.push_back(c.back());
    c.back().set_begin(2007);
    upload("too long (a chunk past element 2007)", Code::INVALID_ARGUMENT, c);
  }
  {
    auto c = ok;
    c[0].mutable_values()->pop_back();
    upload("not a multiple of 4 bytes (99)", Code::INVALID_ARGUMENT, c);
  }
  upload("chunk over max_chunk_bytes (104 > 100)", Code::INVALID_ARGUMENT,
         TestServer::Chunks(0, x0, 26));
  upload("short chunk mid-upload (24 of 25 elements)", Code::INVALID_ARGUMENT,
         TestServer::Chunks(0, x0, 24));
  {
    auto c = ok;
    c[2].set_round(3);
    upload("round set on an upload chunk", Code::INVALID_ARGUMENT, c);
  }

  // The well-behaved upload, then a whole run.
  ASSERT_EQ(server.Join(0, &asked), 0);
  ASSERT_TRUE(asked);
  const grpc::Status s = server.Upload(0, x0);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(server.service().server().Summary().params_checksum,
            ParamsChecksum(x0));
  auto s0 = std::make_unique<TrainStream>(&server, 60);
  FinishRunAndCompare(&server, s0.get(), 1, x0);
}

}  // namespace
}  // namespace effadam
