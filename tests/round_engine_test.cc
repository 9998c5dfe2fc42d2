#include "core/round_engine.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;

struct Fixture {
  std::shared_ptr<const UpdateCodec> worker, server;
  std::unique_ptr<RoundEngine> engine;
};

// A model of tensors of the given sizes, blocks of 64 elements.
Fixture MakeModel(
    const std::string& wname, const std::string& sname, bool error_feedback,
    const std::vector<int64_t>& tensors,
    size_t max_segment_elements = CompressionOptions().max_segment_elements) {
  std::vector<TensorSpec> shapes;
  size_t n = 0;
  for (int64_t t : tensors) {
    shapes.push_back({absl::StrCat("t", shapes.size()), {t}});
    n += static_cast<size_t>(t);
  }
  auto layout = TensorLayout::Create(shapes);
  EXPECT_TRUE(layout.ok());
  CompressionOptions o;
  o.block_size = 64;
  o.max_segment_elements = max_segment_elements;
  Fixture f;
  f.worker = *UpdateCodec::Create(*layout, *ParseCodecSpec(wname), o);
  f.server = *UpdateCodec::Create(*layout, *ParseCodecSpec(sname), o);
  std::vector<float> x0(n);
  for (size_t i = 0; i < n; ++i) x0[i] = 0.001f * i;
  RoundEngineOptions eo;
  eo.error_feedback = error_feedback;
  f.engine = *RoundEngine::Create(f.worker, f.server, x0, eo);
  return f;
}

Fixture Make(const std::string& wname, const std::string& sname,
             bool error_feedback = true, size_t n = 3000) {
  return MakeModel(wname, sname, error_feedback, {static_cast<int64_t>(n)});
}

std::string Encode(const UpdateCodec& c, const std::vector<float>& u) {
  std::string out;
  EXPECT_TRUE(c.EncodeWithFeedback(u, {}, 0, &out).ok());
  return out;
}

std::vector<float> Random(size_t n, int seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 0.01f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

TEST(RoundEngine, AveragesInRankOrderWhateverTheArrivalOrder) {
  Fixture a = Make("sign", "q8"), b = Make("sign", "q8");
  std::vector<std::string> updates;
  for (int r = 0; r < 5; ++r)
    updates.push_back(Encode(*a.worker, Random(3000, r)));
  for (int r : {0, 1, 2, 3, 4})
    ASSERT_TRUE(a.engine->Submit(r, 1, updates[r]).ok());
  for (int r : {3, 0, 4, 2, 1})
    ASSERT_TRUE(b.engine->Submit(r, 1, updates[r]).ok());
  auto da = a.engine->CloseRound(), db = b.engine->CloseRound();
  ASSERT_TRUE(da.ok() && db.ok());
  EXPECT_EQ(*da, *db);
  EXPECT_EQ(0, std::memcmp(a.engine->params().data(), b.engine->params().data(),
                           3000 * 4));
}

// Runs three rounds of `updates_per_round` random updates and checks x, E
// and the delta against the server step written out over whole vectors:
// avg, p = avg + E, q = Qs(p), E = p - q, x = x - q.
void ExpectTheEfficientAdamServerStep(Fixture& f, int updates_per_round) {
  const size_t n = f.engine->params().size();
  std::vector<float> x(f.engine->params().begin(), f.engine->params().end());
  std::vector<float> E(n, 0.0f);
  for (int round = 1; round <= 3; ++round) {
    std::vector<float> p(n, 0.0f);
    for (int r = 0; r < updates_per_round; ++r) {
      std::vector<float> u = Random(n, 10 * round + r);
      std::string bytes = Encode(*f.worker, u);
      ASSERT_TRUE(f.engine->Submit(r, round, bytes).ok());
      ASSERT_TRUE(
          f.worker->DecodeAccumulate(bytes, 1.0f, absl::MakeSpan(p)).ok());
    }
    auto delta = f.engine->CloseRound();
    ASSERT_TRUE(delta.ok()) << delta.status();
    for (float& v : p) v /= static_cast<float>(updates_per_round);
    std::string want;
    // The engine's seed of stochastic rounding in this round (options.seed
    // is 0).
    const uint64_t seed = 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(round);
    ASSERT_TRUE(
        f.server->EncodeWithFeedback(p, absl::MakeSpan(E), seed, &want).ok());
    EXPECT_TRUE(want == *delta) << "the delta differs";
    std::vector<float> q(n, 0.0f);
    ASSERT_TRUE(
        f.server->DecodeAccumulate(*delta, 1.0f, absl::MakeSpan(q)).ok());
    for (size_t i = 0; i < n; ++i) x[i] = x[i] + -1.0f * q[i];
    EXPECT_EQ(0, std::memcmp(x.data(), f.engine->params().data(), n * 4));
    EXPECT_EQ(0, std::memcmp(E.data(), f.engine->error_memory().data(), n * 4));
    EXPECT_EQ(f.engine->round(), round + 1);
  }
}

TEST(RoundEngine, ComputesTheEfficientAdamServerStep) {
  Fixture f = Make("fp32", "sign");
  ExpectTheEfficientAdamServerStep(f, 2);
}

// The whole-vector step's bits for any number of updates (the average
// divides by it; 1, 2, 4 and 8 are powers of two, 3 and 5 are not).
TEST(RoundEngine, AveragesWithTheDivisionsBitsForEveryUpdateCount) {
  for (int updates : {1, 2, 3, 4, 5, 8}) {
    SCOPED_TRACE(updates);
    Fixture f = MakeModel("fp32", "sign", /*error_feedback=*/true,
                          {300, 20480 + 701}, 20480);
    ExpectTheEfficientAdamServerStep(f, updates);
  }
}

// A segment closes tile by tile (several tiles and a short last one here,
// segments of 20480 elements, an fp32 tensor beside them): the same bits
// as the whole-vector step, for every codec.
TEST(RoundEngine, ClosesLongSegmentsTileByTileWithTheSameBits) {
  for (const auto& [wname, sname] :
       std::vector<std::pair<std::string, std::string>>{{"fp32", "fp32"},
                                                        {"sign", "sign"},
                                                        {"q4", "q4s"},
                                                        {"bf16", "topk:0.05"},
                                                        {"fp16", "q8"}}) {
    SCOPED_TRACE(wname + "/" + sname);
    Fixture f = MakeModel(wname, sname, /*error_feedback=*/true,
                          {300, 3 * 20480 + 8192 + 704}, 20480);
    ExpectTheEfficientAdamServerStep(f, 3);
  }
}

// The norm kept for monitoring is ||E|| of the E the engine holds: after
// committed rounds, after a dropped one (E unchanged), and after a restore.
TEST(RoundEngine, KeepsTheNormOfTheErrorMemory) {
  const auto norm = [](absl::Span<const float> e) {
    double s = 0;
    for (float v : e) s += static_cast<double>(v) * v;
    return std::sqrt(s);
  };
  Fixture f = Make("fp32", "sign");
  EXPECT_EQ(f.engine->error_memory_norm(), 0.0);
  for (int round = 1; round <= 3; ++round) {
    ASSERT_TRUE(
        f.engine->Submit(0, round, Encode(*f.worker, Random(3000, round)))
            .ok());
    ASSERT_TRUE(f.engine->CloseRound().ok());
    EXPECT_GT(f.engine->error_memory_norm(), 0.0);
    EXPECT_NEAR(f.engine->error_memory_norm(), norm(f.engine->error_memory()),
                1e-12 * norm(f.engine->error_memory()));
  }
  const double before = f.engine->error_memory_norm();
  std::vector<float> huge(3000, FLT_MAX);
  ASSERT_TRUE(f.engine->Submit(0, 4, Encode(*f.worker, huge)).ok());
  ASSERT_TRUE(f.engine->Submit(1, 4, Encode(*f.worker, huge)).ok());
  ASSERT_TRUE(f.engine->CloseRound().ok());
  ASSERT_EQ(f.engine->dropped_rounds(), 1);
  EXPECT_EQ(f.engine->error_memory_norm(), before);

  RoundEngineState state;
  state.round = f.engine->round();
  state.params.assign(f.engine->params().begin(), f.engine->params().end());
  state.error_memory.assign(f.engine->error_memory().begin(),
                            f.engine->error_memory().end());
  auto restored = RoundEngine::Restore(f.worker, f.server, std::move(state),
                                       RoundEngineOptions());
  ASSERT_TRUE(restored.ok());
  EXPECT_NEAR((*restored)->error_memory_norm(), before, 1e-12 * before);
}

TEST(RoundEngine, WithoutFeedbackTheErrorMemoryStaysZero) {
  Fixture f = Make("fp32", "sign", /*error_feedback=*/false);
  ASSERT_TRUE(f.engine->Submit(0, 1, Encode(*f.worker, Random(3000, 1))).ok());
  ASSERT_TRUE(f.engine->CloseRound().ok());
  for (float e : f.engine->error_memory()) ASSERT_EQ(e, 0.0f);
}

TEST(RoundEngine, RejectedUpdatesChangeNothing) {
  Fixture f = Make("sign", "sign");
  const std::string good = Encode(*f.worker, Random(3000, 1));
  ASSERT_TRUE(f.engine->Submit(0, 1, good).ok());
  std::vector<float> x(f.engine->params().begin(), f.engine->params().end());

  struct Case {
    int rank;
    int64_t round;
    std::string bytes;
    absl::StatusCode code;
    const char* reason;
  };
  std::string nan_scale = good;
  std::memset(&nan_scale[0], 0xff, 4);
  const std::vector<Case> cases = {
      {1, 2, good, absl::StatusCode::kFailedPrecondition, "round 2"},
      {1, 0, good, absl::StatusCode::kFailedPrecondition, "collecting round 1"},
      {0, 1, good, absl::StatusCode::kFailedPrecondition, "already sent"},
      {-1, 1, good, absl::StatusCode::kInvalidArgument, "negative rank"},
      {1, 1, good.substr(1), absl::StatusCode::kInvalidArgument, "must be"},
      {1, 1, good + "x", absl::StatusCode::kInvalidArgument, "must be"},
      {1, 1, nan_scale, absl::StatusCode::kInvalidArgument, "scale"},
  };
  for (const Case& c : cases) {
    absl::Status s = f.engine->Submit(c.rank, c.round, c.bytes);
    EXPECT_EQ(s.code(), c.code) << c.reason;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.reason));
  }
  EXPECT_EQ(f.engine->num_submitted(), 1u);
  EXPECT_FALSE(f.engine->HasSubmitted(1));
  EXPECT_EQ(0, std::memcmp(x.data(), f.engine->params().data(), x.size() * 4));
  for (float e : f.engine->error_memory()) ASSERT_EQ(e, 0.0f);
}

TEST(RoundEngine, ClosingAnEmptyRoundIsAnError) {
  Fixture f = Make("sign", "sign");
  EXPECT_EQ(f.engine->CloseRound().status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(f.engine->round(), 1);
}

TEST(RoundEngine, OverflowingAverageDropsTheRoundWithAZeroDelta) {
  Fixture f = Make("fp32", "sign", true, 64);
  std::vector<float> huge(64, 3e38f);
  ASSERT_TRUE(f.engine->Submit(0, 1, Encode(*f.worker, Random(64, 1))).ok());
  ASSERT_TRUE(f.engine->Submit(1, 1, Encode(*f.worker, huge)).ok());
  ASSERT_TRUE(f.engine->Submit(2, 1, Encode(*f.worker, huge)).ok());
  std::vector<float> x(f.engine->params().begin(), f.engine->params().end());
  absl::StatusOr<std::string> d = f.engine->CloseRound();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(f.engine->dropped_rounds(), 1);
  EXPECT_EQ(f.engine->round(), 2);
  EXPECT_EQ(f.engine->num_submitted(), 0u);
  EXPECT_EQ(0, std::memcmp(x.data(), f.engine->params().data(), 64 * 4));
  for (float e : f.engine->error_memory()) ASSERT_EQ(e, 0.0f);
  std::vector<float> applied(64, 0.0f);
  ASSERT_TRUE(
      f.server->DecodeAccumulate(*d, 1.0f, absl::MakeSpan(applied)).ok());
  for (float a : applied) ASSERT_EQ(a, 0.0f);
  // The next round is an ordinary one.
  ASSERT_TRUE(f.engine->Submit(0, 2, Encode(*f.worker, Random(64, 2))).ok());
  ASSERT_TRUE(f.engine->CloseRound().ok());
  EXPECT_EQ(f.engine->dropped_rounds(), 1);
}

// One worker's sign scales so large that a block's float sum of |avg + E|
// overflows (64 x 6e36 > FLT_MAX) although every value is finite: the
// round closes normally (it used to fail, which stopped the server).
TEST(RoundEngine, SignBlockSumsPastFltMaxCloseTheRound) {
  Fixture f = Make("sign", "sign", true, 2048);
  ASSERT_TRUE(f.engine->Submit(0, 1, Encode(*f.worker, Random(2048, 1))).ok());
  ASSERT_TRUE(
      f.engine
          ->Submit(1, 1, Encode(*f.worker, std::vector<float>(2048, 1.2e37f)))
          .ok());
  absl::StatusOr<std::string> d = f.engine->CloseRound();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(f.engine->dropped_rounds(), 0);
  for (float x : f.engine->params()) ASSERT_TRUE(std::isfinite(x));
  for (float e : f.engine->error_memory()) ASSERT_TRUE(std::isfinite(e));
  ASSERT_TRUE(f.server->Validate(*d).ok());
}

// fp32 updates of -FLT_MAX: the first round moves x to about FLT_MAX, the
// second would make it Inf and is dropped instead; x, E and the replicas
// stay finite, and the round after is ordinary.
TEST(RoundEngine, ARoundThatWouldMakeXInfiniteIsDropped) {
  Fixture f = Make("fp32", "fp32", true, 64);
  std::vector<float> push(64, 0.0f);
  std::fill(push.begin(), push.begin() + 16, -FLT_MAX);
  ASSERT_TRUE(f.engine->Submit(0, 1, Encode(*f.worker, push)).ok());
  ASSERT_TRUE(f.engine->CloseRound().ok());
  EXPECT_EQ(f.engine->dropped_rounds(), 0);
  EXPECT_EQ(f.engine->params()[3], FLT_MAX);
  std::vector<float> x(f.engine->params().begin(), f.engine->params().end());
  std::vector<float> e(f.engine->error_memory().begin(),
                       f.engine->error_memory().end());

  ASSERT_TRUE(f.engine->Submit(0, 2, Encode(*f.worker, push)).ok());
  absl::StatusOr<std::string> d = f.engine->CloseRound();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(f.engine->dropped_rounds(), 1);
  EXPECT_EQ(f.engine->round(), 3);
  EXPECT_EQ(0, std::memcmp(x.data(), f.engine->params().data(), 64 * 4));
  EXPECT_EQ(0, std::memcmp(e.data(), f.engine->error_memory().data(), 64 * 4));
  std::vector<float> applied(64, 0.0f);
  ASSERT_TRUE(
      f.server->DecodeAccumulate(*d, 1.0f, absl::MakeSpan(applied)).ok());
  for (float a : applied) ASSERT_EQ(a, 0.0f);

  ASSERT_TRUE(f.engine->Submit(0, 3, Encode(*f.worker, Random(64, 3))).ok());
  ASSERT_TRUE(f.engine->CloseRound().ok());
  EXPECT_EQ(f.engine->dropped_rounds(), 1);
  for (float v : f.engine->params()) ASSERT_TRUE(std::isfinite(v));
}

TEST(RoundEngine, RestoreGoesOnExactlyWhereTheStateWas) {
  // Two engines: one runs 5 rounds straight, the other is rebuilt from the
  // first's state after round 3 and must produce the same deltas after it.
  Fixture a = Make("sign", "q4s"), b = Make("sign", "q4s");
  for (int64_t r = 1; r <= 5; ++r) {
    if (r == 4) {
      RoundEngineState st;
      st.round = a.engine->round();
      st.params.assign(a.engine->params().begin(), a.engine->params().end());
      st.error_memory.assign(a.engine->error_memory().begin(),
                             a.engine->error_memory().end());
      auto restored = RoundEngine::Restore(b.worker, b.server, st, {});
      ASSERT_TRUE(restored.ok()) << restored.status();
      b.engine = *std::move(restored);
      EXPECT_EQ(b.engine->round(), 4);
    }
    for (int w = 0; w < 3; ++w) {
      const std::string u = Encode(*a.worker, Random(3000, 10 * r + w));
      ASSERT_TRUE(a.engine->Submit(w, r, u).ok());
      if (r >= 4) {
        ASSERT_TRUE(b.engine->Submit(w, r, u).ok());
      }
    }
    auto da = a.engine->CloseRound();
    ASSERT_TRUE(da.ok());
    if (r >= 4) {
      EXPECT_EQ(*da, *b.engine->CloseRound()) << "round " << r;
    }
  }
  EXPECT_EQ(0, std::memcmp(a.engine->params().data(), b.engine->params().data(),
                           3000 * 4));
}

TEST(RoundEngine, RestoreRejectsBadState) {
  Fixture f = Make("sign", "sign", true, 100);
  RoundEngineState ok;
  ok.params.assign(100, 1.0f);
  EXPECT_TRUE(RoundEngine::Restore(f.worker, f.server, ok, {}).ok());
  RoundEngineState st = ok;
  st.round = 0;
  EXPECT_EQ(RoundEngine::Restore(f.worker, f.server, st, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  st = ok;
  st.error_memory.assign(99, 0.0f);
  EXPECT_FALSE(RoundEngine::Restore(f.worker, f.server, st, {}).ok());
  st = ok;
  st.error_memory.assign(100, 0.0f);
  st.error_memory[7] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(RoundEngine::Restore(f.worker, f.server, st, {}).ok());
  st = ok;
  st.params[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(RoundEngine::Restore(f.worker, f.server, st, {}).ok());
}

TEST(RoundEngine, CreateChecksSizes) {
  auto layout = TensorLayout::Create({{"w", {100}}});
  std::shared_ptr<const UpdateCodec> c =
      *UpdateCodec::Create(*layout, *ParseCodecSpec("sign"), {});
  EXPECT_FALSE(RoundEngine::Create(c, c, std::vector<float>(99), {}).ok());
  EXPECT_TRUE(RoundEngine::Create(c, c, std::vector<float>(100), {}).ok());
}

// The server's pipelined round: segments closed one at a time, in any
// order, each once the updates' bytes of that segment are in (the rest of
// the buffers still empty), give the bits of CloseRound.
TEST(RoundEngine, ClosingSegmentBySegmentGivesTheBitsOfCloseRound) {
  for (const char* codecs : {"sign/sign", "q4/q8", "fp32/sign"}) {
    SCOPED_TRACE(codecs);
    const std::string spec = codecs;
    const std::string wname = spec.substr(0, spec.find('/'));
    const std::string sname = spec.substr(spec.find('/') + 1);
    auto layout =
        TensorLayout::Create({{"a", {1000}}, {"b", {40}}, {"c", {2500}}});
    ASSERT_TRUE(layout.ok());
    CompressionOptions o;
    o.block_size = 64;
    o.min_compress_elements = 64;
    o.max_segment_elements = 512;
    auto worker = std::shared_ptr<const UpdateCodec>(
        *UpdateCodec::Create(*layout, *ParseCodecSpec(wname), o));
    auto server = std::shared_ptr<const UpdateCodec>(
        *UpdateCodec::Create(*layout, *ParseCodecSpec(sname), o));
    ASSERT_GT(worker->segments().size(), 5u);
    const size_t n = layout->num_elements();
    std::vector<float> x0(n);
    for (size_t i = 0; i < n; ++i) x0[i] = 0.001f * i;
    RoundEngineOptions eo;
    eo.threads = 1;
    auto whole = *RoundEngine::Create(worker, server, x0, eo);
    auto steps = *RoundEngine::Create(worker, server, x0, eo);
    for (int round = 1; round <= 3; ++round) {
      std::vector<std::string> updates;
      std::vector<std::shared_ptr<std::string>> filling;
      for (int r = 0; r < 3; ++r) {
        updates.push_back(Encode(*worker, Random(n, 100 * round + r)));
        ASSERT_TRUE(whole->Submit(r, round, updates[r]).ok());
        filling.push_back(
            std::make_shared<std::string>(updates[r].size(), '\0'));
        ASSERT_TRUE(steps->Submit(r, round, filling[r], true).ok());
      }
      std::string delta;
      ASSERT_TRUE(steps->BeginClose(&delta).ok());
      EXPECT_FALSE(steps->Submit(3, round, updates[0]).ok());
      const auto& segs = worker->segments();
      for (size_t k = segs.size(); k-- > 0;) {
        for (int r = 0; r < 3; ++r) {
          std::memcpy(filling[r]->data() + segs[k].byte_begin,
                      updates[r].data() + segs[k].byte_begin,
                      segs[k].byte_size);
        }
        ASSERT_TRUE(steps->CloseSegment(k, &delta).ok());
        // Nothing is committed before the round finishes.
        EXPECT_EQ(0, std::memcmp(steps->params().data(), whole->params().data(),
                                 n * 4));
      }
      EXPECT_FALSE(steps->CloseSegment(0, &delta).ok());
      bool dropped = true;
      ASSERT_TRUE(steps->FinishClose(&delta, &dropped).ok());
      EXPECT_FALSE(dropped);
      auto want = whole->CloseRound();
      ASSERT_TRUE(want.ok());
      EXPECT_EQ(delta, *want);
      EXPECT_EQ(0, std::memcmp(steps->params().data(), whole->params().data(),
                               n * 4));
      EXPECT_EQ(0, std::memcmp(steps->error_memory().data(),
                               whole->error_memory().data(), n * 4));
      EXPECT_EQ(steps->round(), round + 1);
    }
  }
}

TEST(RoundEngine, AnAbortedCloseLeavesTheRoundOpenForTheRemainingUpdates) {
  Fixture a = Make("sign", "sign"), b = Make("sign", "sign");
  const std::string u0 = Encode(*a.worker, Random(3000, 1)),
                    u1 = Encode(*a.worker, Random(3000, 2));
  ASSERT_TRUE(a.engine->Submit(0, 1, u0).ok());
  ASSERT_TRUE(a.engine->Submit(1, 1, u1).ok());
  std::string delta;
  ASSERT_TRUE(a.engine->BeginClose(&delta).ok());
  ASSERT_TRUE(a.engine->CloseSegment(0, &delta).ok());
  EXPECT_FALSE(a.engine->Withdraw(1));  // closing
  a.engine->AbortClose();
  EXPECT_TRUE(a.engine->Withdraw(1));
  EXPECT_EQ(a.engine->submitted_ranks(), std::vector<int>{0});
  ASSERT_TRUE(b.engine->Submit(0, 1, u0).ok());
  auto got = a.engine->CloseRound(), want = b.engine->CloseRound();
  ASSERT_TRUE(got.ok() && want.ok());
  EXPECT_EQ(*got, *want);
  EXPECT_EQ(0, std::memcmp(a.engine->params().data(), b.engine->params().data(),
                           3000 * 4));
}

}  // namespace
}  // namespace effadam
