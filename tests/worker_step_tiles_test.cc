// WorkerOptimizer's step runs tile by tile (Adam for about 8192 elements,
// then their encoding, then the next tile). These tests hold it to a plain
// whole-vector step, written here from the algorithm: one Eigen expression
// per line of Adam over all of x into a model-sized d, then
// UpdateCodec::EncodeSegment for every segment. Bytes, m, v and e must be
// the same bits, for every worker codec, layouts whose segments are not
// multiples of the tile and start at odd elements, both weight-decay modes,
// and several thread counts; ||e|| (error_memory_norm, summed by the step)
// must be the norm of e.

#include <Eigen/Core>
#include <cmath>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/worker_optimizer.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

using ArrayMap = Eigen::Map<Eigen::ArrayXf>;
using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

// Tensors of odd sizes and starts: b begins at an odd element, c at one
// that is 2 mod 4 (so c's segments belong to b's part and no tile of them
// starts a block on a multiple of 4), a's and c's segments are not
// multiples of the 8192-element tile, f is smaller than one block.
TensorLayout Layout() {
  return *TensorLayout::Create({{"a", {20003}},
                                {"b", {7}},
                                {"c", {3, 10001}},
                                {"d", {5}},
                                {"e", {17000}},
                                {"f", {9}},
                                {"g", {8200}}});
}

struct Case {
  std::string codec;
  size_t block_size;
  size_t min_compress_elements;  // 1: every tensor coded; 1024: small fp32
  WeightDecayMode decay_mode;
  float weight_decay;
  bool error_feedback;
  // The base learning rate (SetLr); 0 as in a warm-up's first step, where
  // d is +-0 and decoupled decay adds 0 * x, which makes a -0 +0.
  float lr = 0.01f;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.codec << " blocks of " << c.block_size << ", fp32 below "
      << c.min_compress_elements << " elements, "
      << (c.decay_mode == WeightDecayMode::kL2 ? "L2" : "decoupled")
      << " weight decay " << c.weight_decay
      << (c.error_feedback ? "" : ", no error feedback") << ", lr " << c.lr;
}

std::shared_ptr<const UpdateCodec> MakeCodec(const Case& c) {
  CompressionOptions o;
  o.block_size = c.block_size;
  o.min_compress_elements = c.min_compress_elements;
  // Not a multiple of the tile: segments end mid-tile.
  o.max_segment_elements = 12 * c.block_size * (1024 / c.block_size) + 64;
  return *UpdateCodec::Create(Layout(), *ParseCodecSpec(c.codec), o);
}

std::vector<float> Random(size_t n, int seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

WorkerOptimizer::Options OptionsFor(const Case& c, int threads) {
  WorkerOptimizer::Options o;
  o.adam.lr = 0.01f;
  o.adam.weight_decay = c.weight_decay;
  o.adam.weight_decay_mode = c.decay_mode;
  o.error_feedback = c.error_feedback;
  o.seed = 11;
  o.rank = 2;
  o.threads = threads;
  return o;
}

// The whole-vector step: state as WorkerOptimizer::State plus x.
struct Reference {
  std::vector<float> x, m, v, e;
  float base_lr = 0;
  double beta1_power = 1, beta2_power = 1;
  int64_t t = 0;

  std::string Step(const UpdateCodec& codec,
                   const WorkerOptimizer::Options& opt,
                   const std::vector<float>& grad) {
    const AdamOptions& o = opt.adam;
    const size_t n = x.size();
    ++t;
    const float b1 = o.beta1, b2 = o.beta2, lr = base_lr;
    beta1_power *= b1;
    beta2_power *= b2;
    const float step = static_cast<float>(lr / (1.0 - beta1_power));
    const float inv_sqrt_bc2 =
        static_cast<float>(1.0 / std::sqrt(1.0 - beta2_power));
    const uint64_t seed =
        opt.seed ^ (0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(t)) ^
        (0xc2b2ae3d27d4eb4fULL * static_cast<uint64_t>(opt.rank + 1));
    std::vector<float> d(n);
    const auto len = static_cast<Eigen::Index>(n);
    ArrayMap M(m.data(), len), V(v.data(), len), D(d.data(), len),
        X(x.data(), len);
    const ConstArrayMap G(grad.data(), len);
    if (o.weight_decay > 0 && o.weight_decay_mode == WeightDecayMode::kL2) {
      D = G + o.weight_decay * X;
      M = b1 * M + (1.0f - b1) * D;
      V = b2 * V + (1.0f - b2) * D.square();
    } else {
      M = b1 * M + (1.0f - b1) * G;
      V = b2 * V + (1.0f - b2) * G.square();
    }
    D = step * M / (V.sqrt() * inv_sqrt_bc2 + o.eps);
    if (o.weight_decay > 0 &&
        o.weight_decay_mode == WeightDecayMode::kDecoupled) {
      D += (lr * o.weight_decay) * X;
    }
    std::string out(codec.encoded_size(), '\0');
    absl::Span<float> err =
        opt.error_feedback ? absl::MakeSpan(e) : absl::Span<float>();
    for (size_t i = 0; i < codec.segments().size(); ++i) {
      absl::Status s = codec.EncodeSegment(
          i, d, err, seed, reinterpret_cast<uint8_t*>(out.data()));
      EXPECT_TRUE(s.ok()) << s;
    }
    return out;
  }
};

bool SameBits(absl::Span<const float> a, absl::Span<const float> b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

double Norm(absl::Span<const float> v) {
  double s = 0;
  for (float f : v) s += static_cast<double>(f) * f;
  return std::sqrt(s);
}

class WorkerStepTiles : public ::testing::TestWithParam<std::tuple<Case, int>> {
};

TEST_P(WorkerStepTiles, SameBitsAsTheWholeVectorStep) {
  const auto& [c, threads] = GetParam();
  auto codec = MakeCodec(c);
  const size_t n = codec->num_elements();
  const WorkerOptimizer::Options opt = OptionsFor(c, threads);
  Reference ref;
  ref.base_lr = c.lr;
  ref.x = Random(n, 1, 0.1f);
  ref.m.assign(n, 0.0f);
  ref.v.assign(n, 0.0f);
  ref.e.assign(n, 0.0f);
  auto w = WorkerOptimizer::Create(codec, codec, ref.x, opt);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->SetLr(c.lr).ok());
  for (int step = 0; step < 3; ++step) {
    // Tiny and huge gradients too, so Adam's d spans many exponents (and
    // sqrt's packet and scalar forms would differ somewhere).
    std::vector<float> grad = Random(n, 100 + step, 1.0f);
    for (size_t i = 0; i < n; i += 37) grad[i] *= 1e-20f;
    for (size_t i = 5; i < n; i += 101) grad[i] *= 1e15f;
    const std::string expected = ref.Step(*codec, opt, grad);
    std::string update;
    ASSERT_TRUE((*w)->ComputeUpdate(grad, &update).ok());
    ASSERT_EQ(update.size(), expected.size());
    EXPECT_TRUE(update == expected) << "step " << step;
    const WorkerOptimizer::State s = (*w)->state();
    EXPECT_TRUE(SameBits(s.m, ref.m)) << "step " << step;
    EXPECT_TRUE(SameBits(s.v, ref.v)) << "step " << step;
    EXPECT_TRUE(SameBits(s.e, ref.e)) << "step " << step;
    const double norm = Norm(ref.e);
    EXPECT_NEAR((*w)->error_memory_norm(), norm, 1e-12 * norm)
        << "step " << step;
    if (!c.error_feedback) {
      EXPECT_EQ((*w)->error_memory_norm(), 0.0);
    }
    // The server's delta: apply the update itself, as the simulator's
    // single worker would, to both replicas.
    ASSERT_TRUE((*w)->ApplyDelta(update).ok());
    ASSERT_TRUE(
        codec->DecodeAccumulate(update, -1.0f, absl::MakeSpan(ref.x)).ok());
    EXPECT_TRUE(SameBits((*w)->params(), ref.x));
  }
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (const char* codec : {"fp32", "bf16", "fp16", "sign", "q4", "q8", "q3s",
                            "q8s", "topk:0.05"}) {
    cases.push_back({codec, 1024, 1, WeightDecayMode::kDecoupled, 0.1f, true});
  }
  cases.push_back({"sign", 64, 1024, WeightDecayMode::kL2, 0.1f, true});
  cases.push_back({"q4s", 64, 1024, WeightDecayMode::kL2, 0.1f, true});
  cases.push_back({"topk:0.3", 64, 1, WeightDecayMode::kL2, 0.1f, true});
  cases.push_back({"bf16", 256, 1024, WeightDecayMode::kDecoupled, 0, true});
  cases.push_back({"sign", 1024, 1, WeightDecayMode::kL2, 0.01f, false});
  cases.push_back(
      {"sign", 1024, 1, WeightDecayMode::kDecoupled, 0.1f, false, 0.0f});
  return cases;
}

std::string Name(const ::testing::TestParamInfo<std::tuple<Case, int>>& info) {
  const auto& [c, threads] = info.param;
  std::string name = c.codec + "_b" + std::to_string(c.block_size) + "_min" +
                     std::to_string(c.min_compress_elements) +
                     (c.decay_mode == WeightDecayMode::kL2 ? "_l2" : "_dec") +
                     (c.weight_decay > 0 ? "" : "0") +
                     (c.error_feedback ? "" : "_noef") +
                     (c.lr > 0 ? "" : "_lr0") + "_t" + std::to_string(threads);
  for (char& ch : name) {
    if (ch == ':' || ch == '.') ch = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Codecs, WorkerStepTiles,
                         ::testing::Combine(::testing::ValuesIn(Cases()),
                                            ::testing::Values(1, 3)),
                         Name);

// The bucketed step (BeginUpdate, ComputeUpdateParts, FinishUpdate) runs
// the same tiles: parts handed in backwards, one or two at a time, give
// ComputeUpdate's bytes, m, v, e and norm, bit for bit.
TEST(WorkerStepTiles, PartsInAnyOrderAreTheWholeStep) {
  const Case c{"q4s", 1024, 1, WeightDecayMode::kL2, 0.1f, true};
  auto codec = MakeCodec(c);
  const size_t n = codec->num_elements();
  const std::vector<float> x0 = Random(n, 1, 0.1f);
  auto whole = *WorkerOptimizer::Create(codec, codec, x0, OptionsFor(c, 1));
  auto parts = *WorkerOptimizer::Create(codec, codec, x0, OptionsFor(c, 2));
  ASSERT_GE(parts->num_update_parts(), 2u);
  for (int step = 0; step < 2; ++step) {
    const std::vector<float> grad = Random(n, 200 + step, 1.0f);
    std::string expected, update;
    ASSERT_TRUE(whole->ComputeUpdate(grad, &expected).ok());
    ASSERT_TRUE(parts->BeginUpdate(&update).ok());
    for (size_t k = parts->num_update_parts(); k > 0;) {
      std::vector<size_t> batch = {--k};
      if (k > 0 && k % 2 == 0) batch.push_back(--k);
      ASSERT_TRUE(parts->ComputeUpdateParts(batch, grad).ok());
    }
    ASSERT_TRUE(parts->FinishUpdate().ok());
    EXPECT_TRUE(update == expected) << "step " << step;
    const WorkerOptimizer::State a = whole->state(), b = parts->state();
    EXPECT_TRUE(SameBits(a.m, b.m));
    EXPECT_TRUE(SameBits(a.v, b.v));
    EXPECT_TRUE(SameBits(a.e, b.e));
    EXPECT_EQ(whole->error_memory_norm(), parts->error_memory_norm());
  }
}

// The norm after RestoreState is that of the restored e, and a step on a
// gradient with NaN in its last element changes nothing (the check runs
// before the first tile), the norm included.
TEST(WorkerStepTiles, NormFollowsRestoreAndBadGradientChangesNothing) {
  const Case c{"sign", 1024, 1, WeightDecayMode::kDecoupled, 0.1f, true};
  auto codec = MakeCodec(c);
  const size_t n = codec->num_elements();
  auto w = *WorkerOptimizer::Create(codec, codec, Random(n, 1, 0.1f),
                                    OptionsFor(c, 2));
  EXPECT_EQ(w->error_memory_norm(), 0.0);
  WorkerOptimizer::State s = w->state();
  s.e = Random(n, 5, 0.01f);
  const double restored = Norm(s.e);
  ASSERT_TRUE(w->RestoreState(s).ok());
  EXPECT_NEAR(w->error_memory_norm(), restored, 1e-12 * restored);
  std::string update;
  ASSERT_TRUE(w->ComputeUpdate(Random(n, 6, 1.0f), &update).ok());
  const WorkerOptimizer::State before = w->state();
  const double norm = w->error_memory_norm();
  EXPECT_NEAR(norm, Norm(before.e), 1e-12 * norm);
  std::vector<float> bad = Random(n, 7, 1.0f);
  bad.back() = std::nanf("");
  const absl::Status st = w->ComputeUpdate(bad, &update);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  const WorkerOptimizer::State after = w->state();
  EXPECT_EQ(after.step, before.step);
  EXPECT_TRUE(SameBits(after.m, before.m));
  EXPECT_TRUE(SameBits(after.v, before.v));
  EXPECT_TRUE(SameBits(after.e, before.e));
  EXPECT_EQ(w->error_memory_norm(), norm);
}

}  // namespace
}  // namespace effadam
