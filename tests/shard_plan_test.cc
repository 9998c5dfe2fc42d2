#include "core/shard_plan.h"

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/round_engine.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

CompressionOptions Options() {
  CompressionOptions o;
  o.block_size = 64;
  o.min_compress_elements = 100;
  o.max_segment_elements = 1024;
  return o;
}

// Tensors of uneven sizes, small ones (fp32) among them, several segments
// in the big ones.
TensorLayout Layout() {
  return *TensorLayout::Create({{"a", {3000}},
                                {"bias", {7}},
                                {"b", {50, 41}},
                                {"c", {5000}},
                                {"d", {99}},
                                {"e", {1025}}});
}

std::vector<float> Random(size_t n, int seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 1);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

TEST(PlanShards, CoversEverySegmentOnceInOrderAndBalances) {
  auto codec =
      *UpdateCodec::Create(Layout(), *ParseCodecSpec("sign"), Options());
  const size_t segments = codec->segments().size();
  for (int s = 1; s <= static_cast<int>(segments); ++s) {
    auto plan = PlanShards(*codec, s);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_EQ(plan->size(), static_cast<size_t>(s));
    size_t next_segment = 0, next_element = 0, next_byte = 0;
    for (const ShardRange& r : *plan) {
      EXPECT_EQ(r.first_segment, next_segment);
      EXPECT_LT(r.first_segment, r.end_segment);
      EXPECT_EQ(r.begin, next_element);
      EXPECT_EQ(r.byte_begin, next_byte);
      next_segment = r.end_segment;
      next_element += r.size;
      next_byte += r.byte_size;
    }
    EXPECT_EQ(next_segment, segments);
    EXPECT_EQ(next_element, codec->num_elements());
    EXPECT_EQ(next_byte, codec->encoded_size());
    // Deterministic: the same plan again.
    EXPECT_EQ(*plan, *PlanShards(*codec, s));
  }
  // Equal segments split evenly.
  auto even = *UpdateCodec::Create(*TensorLayout::Create({{"w", {8192}}}),
                                   *ParseCodecSpec("sign"), Options());
  const std::vector<ShardRange> quarters = *PlanShards(*even, 4);
  for (const ShardRange& r : quarters) EXPECT_EQ(r.size, 2048u);
  EXPECT_FALSE(PlanShards(*even, 0).ok());
  EXPECT_FALSE(PlanShards(*even, 9).ok());  // 8 segments
}

TEST(UpdateCodecSlice, SlicesEncodeAndDecodeExactlyAsTheWholeModel) {
  const TensorLayout layout = Layout();
  const size_t n = layout.num_elements();
  for (const char* name : {"fp32", "bf16", "sign", "q4", "q4s", "topk:0.1"}) {
    SCOPED_TRACE(name);
    auto whole = *UpdateCodec::Create(layout, *ParseCodecSpec(name), Options());
    for (int shards : {1, 2, 3, 5}) {
      SCOPED_TRACE(shards);
      const std::vector<float> update = Random(n, shards);
      std::vector<float> e_whole = Random(n, 100 + shards);
      for (float& e : e_whole) e *= 0.1f;
      std::vector<float> e_sliced = e_whole;
      std::string want;
      ASSERT_TRUE(
          whole->EncodeWithFeedback(update, absl::MakeSpan(e_whole), 42, &want)
              .ok());
      std::string got;
      std::vector<float> acc_whole(n, 1.0f), acc_sliced(n, 1.0f);
      ASSERT_TRUE(
          whole->DecodeAccumulate(want, 0.5f, absl::MakeSpan(acc_whole)).ok());
      const std::vector<ShardRange> plan = *PlanShards(*whole, shards);
      for (const ShardRange& r : plan) {
        auto slice = whole->Slice(r.first_segment, r.end_segment);
        ASSERT_TRUE(slice.ok()) << slice.status();
        EXPECT_EQ((*slice)->element_offset(), r.begin);
        EXPECT_EQ((*slice)->num_elements(), r.size);
        EXPECT_EQ((*slice)->encoded_size(), r.byte_size);
        std::string part;
        ASSERT_TRUE(
            (*slice)
                ->EncodeWithFeedback(
                    absl::MakeConstSpan(update).subspan(r.begin, r.size),
                    absl::MakeSpan(e_sliced).subspan(r.begin, r.size), 42,
                    &part)
                .ok());
        ASSERT_TRUE((*slice)->Validate(part).ok());
        ASSERT_TRUE((*slice)
                        ->DecodeAccumulate(
                            part, 0.5f,
                            absl::MakeSpan(acc_sliced).subspan(r.begin, r.size))
                        .ok());
        got += part;
      }
      EXPECT_EQ(got, want);
      EXPECT_EQ(0, std::memcmp(e_sliced.data(), e_whole.data(), 4 * n));
      EXPECT_EQ(0, std::memcmp(acc_sliced.data(), acc_whole.data(), 4 * n));
    }
  }
  auto c = *UpdateCodec::Create(layout, *ParseCodecSpec("sign"), Options());
  EXPECT_FALSE(c->Slice(2, 2).ok());
  EXPECT_FALSE(c->Slice(0, c->segments().size() + 1).ok());
}

TEST(UpdateCodecSlice, ShardedRoundEnginesEqualOneEngine) {
  // S round engines, each over its slice of x, E and of every update, give
  // the whole model's deltas and x: what S shard servers compute.
  const TensorLayout layout = Layout();
  const size_t n = layout.num_elements();
  std::shared_ptr<const UpdateCodec> wc =
      *UpdateCodec::Create(layout, *ParseCodecSpec("sign"), Options());
  std::shared_ptr<const UpdateCodec> sc =
      *UpdateCodec::Create(layout, *ParseCodecSpec("q4s"), Options());
  const std::vector<float> x0 = Random(n, 7);
  RoundEngineOptions eo;
  eo.seed = 9;
  auto one = *RoundEngine::Create(wc, sc, x0, eo);
  const std::vector<ShardRange> plan = *PlanShards(*wc, 3);
  ASSERT_EQ(plan, *PlanShards(*sc, 3));
  std::vector<std::unique_ptr<RoundEngine>> shards;
  for (const ShardRange& r : plan) {
    std::shared_ptr<const UpdateCodec> w =
        *wc->Slice(r.first_segment, r.end_segment);
    std::shared_ptr<const UpdateCodec> s =
        *sc->Slice(r.first_segment, r.end_segment);
    shards.push_back(*RoundEngine::Create(
        w, s,
        std::vector<float>(x0.begin() + r.begin, x0.begin() + r.begin + r.size),
        eo));
  }
  for (int64_t round = 1; round <= 4; ++round) {
    for (int rank = 0; rank < 3; ++rank) {
      std::string u;
      ASSERT_TRUE(
          wc->EncodeWithFeedback(Random(n, 10 * round + rank), {}, 0, &u).ok());
      ASSERT_TRUE(one->Submit(rank, round, u).ok());
      for (size_t k = 0; k < plan.size(); ++k) {
        ASSERT_TRUE(
            shards[k]
                ->Submit(rank, round,
                         u.substr(plan[k].byte_begin, plan[k].byte_size))
                .ok());
      }
    }
    std::string joined;
    for (auto& s : shards) joined += *s->CloseRound();
    EXPECT_EQ(joined, *one->CloseRound()) << "round " << round;
  }
  for (size_t k = 0; k < plan.size(); ++k) {
    EXPECT_EQ(
        0, std::memcmp(shards[k]->params().data(),
                       one->params().data() + plan[k].begin, 4 * plan[k].size));
  }
}

}  // namespace
}  // namespace effadam
