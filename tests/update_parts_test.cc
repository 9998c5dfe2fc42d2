// WorkerOptimizer's step in parts (BeginUpdate, ComputeUpdateParts,
// FinishUpdate), which WorkerClient's bucketed step runs as a backward pass
// hands in gradients: bit for bit ComputeUpdate's, whatever the order of
// the parts and however they are batched.

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/worker_optimizer.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

// Tensors of odd sizes: parts start at the segments whose first element is
// a multiple of 4 (c's segment joins b's last part, f's last part is 501 -
// 3 * 128 elements long).
TensorLayout Layout() {
  return *TensorLayout::Create({{"a", {36}},
                                {"b", {13, 10}},
                                {"c", {2}},
                                {"d", {1000}},
                                {"e", {8}},
                                {"f", {501}}});
}

std::shared_ptr<const UpdateCodec> Codec(const std::string& name) {
  CompressionOptions o;
  o.block_size = 64;
  o.min_compress_elements = 1;
  o.max_segment_elements = 128;
  return *UpdateCodec::Create(Layout(), *ParseCodecSpec(name), o);
}

std::unique_ptr<WorkerOptimizer> Make(const std::string& wc, int threads) {
  WorkerOptimizer::Options o;
  o.adam.lr = 0.01f;
  o.adam.weight_decay = 0.1f;
  o.seed = 7;
  o.threads = threads;
  const size_t n = Layout().num_elements();
  std::vector<float> x0(n);
  for (size_t i = 0; i < n; ++i) x0[i] = 0.001f * static_cast<float>(i % 97);
  auto w = WorkerOptimizer::Create(Codec(wc), Codec("sign"), x0, o);
  EXPECT_TRUE(w.ok()) << w.status();
  return *std::move(w);
}

std::vector<float> Grad(int seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 1);
  std::vector<float> g(Layout().num_elements());
  for (float& x : g) x = normal(rng);
  return g;
}

void ExpectSameState(const WorkerOptimizer& a, const WorkerOptimizer& b) {
  const WorkerOptimizer::State sa = a.state(), sb = b.state();
  EXPECT_EQ(sa.step, sb.step);
  EXPECT_EQ(sa.beta1_power, sb.beta1_power);
  EXPECT_EQ(sa.beta2_power, sb.beta2_power);
  // Bitwise (memcmp): the same floats, not merely close ones.
  auto same = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() &&
           std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same(sa.m, sb.m));
  EXPECT_TRUE(same(sa.v, sb.v));
  EXPECT_TRUE(same(sa.e, sb.e));
  EXPECT_TRUE(std::equal(a.params().begin(), a.params().end(),
                         b.params().begin(), b.params().end()));
}

class UpdateParts : public ::testing::TestWithParam<std::string> {};

TEST_P(UpdateParts, AnyOrderAndBatchingIsComputeUpdateBitForBit) {
  const std::string codec = GetParam();
  auto whole = Make(codec, 2);
  auto parts = Make(codec, 1);
  ASSERT_GT(parts->num_update_parts(), 4u);
  // The parts cover x and the update, in order.
  size_t element = 0, byte = 0;
  for (size_t k = 0; k < parts->num_update_parts(); ++k) {
    const WorkerOptimizer::UpdatePart p = parts->update_part(k);
    EXPECT_EQ(p.begin, element);
    EXPECT_EQ(p.byte_begin, byte);
    EXPECT_GT(p.end, p.begin);
    element = p.end;
    byte = p.byte_end;
  }
  EXPECT_EQ(element, Layout().num_elements());
  EXPECT_EQ(byte, Codec(codec)->encoded_size());

  std::mt19937 rng(3);
  std::string update_whole, update_parts, delta;
  for (int step = 1; step <= 4; ++step) {
    const std::vector<float> g = Grad(step);
    ASSERT_TRUE(whole->ComputeUpdate(g, &update_whole).ok());

    ASSERT_TRUE(parts->BeginUpdate(&update_parts).ok());
    std::vector<size_t> order(parts->num_update_parts());
    for (size_t k = 0; k < order.size(); ++k) order[k] = k;
    // Reversed (a backward pass's order) on the first step, then shuffled.
    if (step == 1) {
      std::reverse(order.begin(), order.end());
    } else {
      std::shuffle(order.begin(), order.end(), rng);
    }
    // Only the parts' own elements are read: the rest is poison.
    std::vector<float> partial(g.size(), std::nanf(""));
    for (size_t i = 0; i < order.size();) {
      const size_t batch = std::min<size_t>(1 + rng() % 3, order.size() - i);
      const std::vector<size_t> ks(order.begin() + i,
                                   order.begin() + i + batch);
      for (size_t k : ks) {
        const WorkerOptimizer::UpdatePart p = parts->update_part(k);
        std::copy(g.begin() + p.begin, g.begin() + p.end,
                  partial.begin() + p.begin);
      }
      if (i + batch < order.size()) {
        EXPECT_EQ(parts->FinishUpdate().code(),
                  absl::StatusCode::kFailedPrecondition);
      }
      ASSERT_TRUE(parts->ComputeUpdateParts(ks, partial).ok());
      i += batch;
    }
    ASSERT_TRUE(parts->FinishUpdate().ok());
    EXPECT_EQ(update_parts, update_whole) << "step " << step;
    ExpectSameState(*whole, *parts);

    // The same server delta applied to both.
    ASSERT_TRUE(Codec("sign")
                    ->EncodeWithFeedback(Grad(100 + step), {}, 0, &delta)
                    .ok());
    ASSERT_TRUE(whole->ApplyDelta(delta).ok());
    ASSERT_TRUE(parts->ApplyDelta(delta).ok());
    ExpectSameState(*whole, *parts);
  }
}

INSTANTIATE_TEST_SUITE_P(Codecs, UpdateParts,
                         ::testing::Values("sign", "q4s", "fp32"));

TEST(UpdateParts, BadPartsAndGradientsChangeNothing) {
  auto w = Make("sign", 1);
  auto reference = Make("sign", 1);
  std::string update, reference_update;
  const std::vector<float> g = Grad(1);
  EXPECT_EQ(w->ComputeUpdateParts({0}, g).code(),
            absl::StatusCode::kFailedPrecondition);  // not begun
  ASSERT_TRUE(w->BeginUpdate(&update).ok());
  EXPECT_EQ(w->BeginUpdate(&update).code(),
            absl::StatusCode::kFailedPrecondition);
  const size_t parts = w->num_update_parts();
  ASSERT_GT(parts, 2u);
  EXPECT_EQ(w->ComputeUpdateParts({parts}, g).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w->ComputeUpdateParts({1, 1}, g).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> bad = g;
  bad[w->update_part(2).begin] = INFINITY;
  EXPECT_EQ(w->ComputeUpdateParts({1, 2}, bad).code(),
            absl::StatusCode::kInvalidArgument);
  ExpectSameState(*w, *reference);  // part 1 did not run either
  std::vector<size_t> all(parts);
  for (size_t k = 0; k < parts; ++k) all[k] = k;
  ASSERT_TRUE(w->ComputeUpdateParts(all, g).ok());
  EXPECT_EQ(w->ComputeUpdateParts({0}, g).code(),
            absl::StatusCode::kInvalidArgument);  // done already
  ASSERT_TRUE(w->FinishUpdate().ok());
  ASSERT_TRUE(reference->ComputeUpdate(g, &reference_update).ok());
  EXPECT_EQ(update, reference_update);
  ExpectSameState(*w, *reference);
}

}  // namespace
}  // namespace effadam
