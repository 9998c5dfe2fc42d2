// Property tests of the codecs over many random vectors, sizes and blocks.

#include "core/codec.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;

const char* const kCodecs[] = {
    "fp32", "bf16", "fp16", "sign", "q2",  "q3",        "q4",       "q5",
    "q6",   "q7",   "q8",   "q4s",  "q2s", "topk:0.01", "topk:0.1", "topk:1"};
const size_t kSizes[] = {0, 1, 7, 8, 9, 63, 100, 1023, 1024, 1025, 4097};
const size_t kBlocks[] = {8, 64, 1024};

std::unique_ptr<Codec> Make(const std::string& name, size_t block) {
  auto spec = ParseCodecSpec(name);
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto codec = MakeCodec(*spec, block);
  EXPECT_TRUE(codec.ok()) << codec.status();
  return *std::move(codec);
}

// Vectors of several shapes: gaussian, heavy-tailed, sparse, constant, one
// spike, subnormal. Values stay where fp16 is a fine format (|x| < 60000).
std::vector<float> RandomVector(size_t n, int shape, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    switch (shape % 6) {
      case 0:
        v[i] = normal(rng) * 0.01f;
        break;
      case 1:
        v[i] = normal(rng) / std::max(0.02f, std::fabs(normal(rng)));
        break;
      case 2:
        v[i] = uni(rng) < 0.05f ? normal(rng) : 0.0f;
        break;
      case 3:
        v[i] = 0.5f;
        break;
      case 4:
        v[i] = i == n / 2 ? 3.0f : normal(rng) * 1e-3f;
        break;
      // Subnormals, as Adam's m leaves on a unit whose gradient is zero.
      case 5:
        v[i] = normal(rng) * 1e-39f;
        break;
    }
  }
  return v;
}

struct Encoded {
  std::vector<uint8_t> bytes;
  std::vector<float> error;  // after encoding
  std::vector<float> p;      // update + error before encoding
};

Encoded EncodeEF(const Codec& c, const std::vector<float>& u,
                 const std::vector<float>& e0, uint64_t seed = 7) {
  Encoded out;
  out.error = e0;
  out.p.resize(u.size());
  for (size_t i = 0; i < u.size(); ++i) out.p[i] = u[i] + e0[i];
  const size_t size = c.EncodedSize(u.size());
  // Guard bytes after the payload catch a write past EncodedSize.
  out.bytes.assign(size + 16, 0xAB);
  absl::Status s = c.EncodeWithFeedback(u, absl::MakeSpan(out.error), seed,
                                        out.bytes.data());
  EXPECT_TRUE(s.ok()) << s;
  for (size_t i = size; i < size + 16; ++i) {
    EXPECT_EQ(out.bytes[i], 0xAB) << "encoder wrote past EncodedSize";
  }
  out.bytes.resize(size);
  return out;
}

std::vector<float> DecodeAll(const Codec& c, const std::vector<uint8_t>& b,
                             size_t n) {
  std::vector<float> q(n, 123.0f);
  absl::Status s = c.Decode(b, absl::MakeSpan(q));
  EXPECT_TRUE(s.ok()) << s;
  return q;
}

size_t CeilDiv(size_t a, size_t b) { return (a + b - 1) / b; }

size_t FormulaSize(const CodecSpec& spec, size_t n, size_t block) {
  switch (spec.kind) {
    case CodecKind::kFp32:
      return 4 * n;
    case CodecKind::kBf16:
    case CodecKind::kFp16:
      return 2 * n;
    case CodecKind::kSign:
      return 4 * CeilDiv(n, block) + CeilDiv(n, 8);
    case CodecKind::kQuant:
      return 4 * CeilDiv(n, block) + CeilDiv(n * spec.bits, 8);
    case CodecKind::kTopK: {
      size_t bytes = 0;
      for (size_t b = 0; b < n; b += block) {
        size_t nb = std::min(block, n - b);
        size_t k = static_cast<size_t>(std::ceil(spec.ratio * nb - 1e-9));
        bytes += 6 * std::min(nb, std::max<size_t>(k, 1));
      }
      return bytes;
    }
  }
  return 0;
}

class CodecProperty : public ::testing::TestWithParam<const char*> {};

TEST_P(CodecProperty, EncodedSizeMatchesTheDesignFormula) {
  auto spec = ParseCodecSpec(GetParam());
  ASSERT_TRUE(spec.ok());
  for (size_t block : kBlocks) {
    auto c = Make(GetParam(), block);
    for (size_t n : kSizes) {
      EXPECT_EQ(c->EncodedSize(n), FormulaSize(*spec, n, block))
          << "n=" << n << " block=" << block;
    }
  }
}

TEST_P(CodecProperty, ErrorIsExactlyPMinusDecodedQ) {
  std::mt19937_64 rng(1);
  for (size_t block : kBlocks) {
    auto c = Make(GetParam(), block);
    for (size_t n : kSizes) {
      for (int shape = 0; shape < 6; ++shape) {
        std::vector<float> u = RandomVector(n, shape, rng);
        std::vector<float> e0 = RandomVector(n, shape + 1, rng);
        for (float& x : e0) x *= 0.1f;
        Encoded enc = EncodeEF(*c, u, e0);
        ASSERT_TRUE(c->Validate(enc.bytes, n).ok())
            << "encoder output must validate: " << c->Validate(enc.bytes, n);
        std::vector<float> q = DecodeAll(*c, enc.bytes, n);
        for (size_t i = 0; i < n; ++i) {
          const float want = enc.p[i] - q[i];
          ASSERT_EQ(std::memcmp(&want, &enc.error[i], 4), 0)
              << GetParam() << " n=" << n << " i=" << i << " p=" << enc.p[i]
              << " q=" << q[i] << " e=" << enc.error[i];
          // And q + e recovers p to within one rounding of the sum.
          ASSERT_LE(std::fabs((q[i] + enc.error[i]) - enc.p[i]),
                    (std::fabs(enc.p[i]) + std::fabs(q[i])) * 1.2e-7f);
        }
      }
    }
  }
}

TEST_P(CodecProperty, IsACompressor) {
  std::mt19937_64 rng(2);
  auto spec = ParseCodecSpec(GetParam());
  ASSERT_TRUE(spec.ok());
  for (size_t block : kBlocks) {
    auto c = Make(GetParam(), block);
    for (size_t n : kSizes) {
      if (n == 0) continue;
      for (int shape = 0; shape < 6; ++shape) {
        // 16-bit floats promise their bound in their normal range only.
        const bool half =
            spec->kind == CodecKind::kBf16 || spec->kind == CodecKind::kFp16;
        if (half && shape == 5) continue;
        std::vector<float> p = RandomVector(n, shape, rng);
        std::vector<float> zero(n, 0.0f);
        double norm = 0;
        for (float x : p) norm += double(x) * x;
        // Stochastic rounding meets the bound in expectation: average the
        // squared error over seeds.
        const int draws = spec->stochastic ? 64 : 1;
        double err = 0;
        for (int s = 0; s < draws; ++s) {
          Encoded enc = EncodeEF(*c, p, zero, 1000 + s);
          std::vector<float> q = DecodeAll(*c, enc.bytes, n);
          for (size_t i = 0; i < n; ++i) {
            double d = double(q[i]) - p[i];
            err += d * d;
          }
        }
        err /= draws;
        if (spec->stochastic) {
          // No contraction, but the variance bound: step^2 / 4 per element.
          EXPECT_EQ(c->Delta(n), 0.0);
          const double levels = (1 << (spec->bits - 1)) - 1;
          double bound = 0;
          for (size_t b = 0; b < n; b += block) {
            const size_t nb = std::min(block, n - b);
            double max = 0;
            for (size_t i = b; i < b + nb; ++i)
              max = std::max(max, std::fabs(double(p[i])));
            bound += nb * (max / levels) * (max / levels) / 4;
          }
          EXPECT_LE(err, bound * 1.1 + 1e-12)
              << GetParam() << " n=" << n << " block=" << block;
          continue;
        }
        const double delta = c->Delta(n);
        EXPECT_GT(delta, 0.0);
        EXPECT_LE(err, (1.0 - delta) * norm)
            << GetParam() << " n=" << n << " block=" << block
            << " shape=" << shape;
      }
    }
  }
}

TEST_P(CodecProperty, NoFeedbackEncodesTheUpdateItself) {
  std::mt19937_64 rng(3);
  auto c = Make(GetParam(), 64);
  std::vector<float> u = RandomVector(1000, 0, rng);
  std::vector<float> zero(u.size(), 0.0f);
  Encoded with = EncodeEF(*c, u, zero);
  std::vector<uint8_t> without(c->EncodedSize(u.size()));
  ASSERT_TRUE(
      c->EncodeWithFeedback(u, absl::Span<float>(), 7, without.data()).ok());
  EXPECT_EQ(with.bytes, without);
}

TEST_P(CodecProperty, SameInputAndSeedGiveSameBytes) {
  std::mt19937_64 rng(4);
  auto c = Make(GetParam(), 64);
  std::vector<float> u = RandomVector(777, 1, rng);
  std::vector<float> e(u.size(), 0.01f);
  EXPECT_EQ(EncodeEF(*c, u, e, 5).bytes, EncodeEF(*c, u, e, 5).bytes);
}

TEST_P(CodecProperty, DecodeAccumulateAddsWeightedQ) {
  std::mt19937_64 rng(5);
  auto c = Make(GetParam(), 64);
  const size_t n = 1001;
  std::vector<float> u = RandomVector(n, 0, rng);
  std::vector<float> zero(n, 0.0f);
  Encoded enc = EncodeEF(*c, u, zero);
  std::vector<float> q = DecodeAll(*c, enc.bytes, n);
  std::vector<float> acc = RandomVector(n, 0, rng);
  std::vector<float> want(n);
  for (size_t i = 0; i < n; ++i) want[i] = acc[i] + (-1.0f * q[i]);
  ASSERT_TRUE(c->DecodeAccumulate(enc.bytes, -1.0f, absl::MakeSpan(acc)).ok());
  EXPECT_EQ(0, std::memcmp(acc.data(), want.data(), 4 * n));
}

TEST_P(CodecProperty, RejectsNonFiniteInput) {
  auto c = Make(GetParam(), 64);
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    std::vector<float> u(100, 0.5f);
    u[37] = bad;
    std::vector<uint8_t> out(c->EncodedSize(u.size()));
    absl::Status s =
        c->EncodeWithFeedback(u, absl::Span<float>(), 0, out.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << GetParam();
    EXPECT_THAT(std::string(s.message()), HasSubstr("NaN or Inf"));
  }
}

TEST_P(CodecProperty, WrongLengthIsAnErrorNotARead) {
  std::mt19937_64 rng(6);
  auto c = Make(GetParam(), 64);
  const size_t n = 500;
  std::vector<float> zero(n, 0.0f);
  Encoded enc = EncodeEF(*c, RandomVector(n, 0, rng), zero);
  for (int delta : {-1, 1, -static_cast<int>(enc.bytes.size())}) {
    // A fresh heap copy of exactly the wrong length, so ASan sees any
    // read past its end.
    std::vector<uint8_t> bad(
        enc.bytes.begin(),
        enc.bytes.begin() +
            std::min(enc.bytes.size(), enc.bytes.size() + delta));
    if (delta > 0) bad.push_back(0);
    EXPECT_EQ(c->Validate(bad, n).code(), absl::StatusCode::kInvalidArgument);
    std::vector<float> acc(n, 1.0f);
    absl::Status s = c->DecodeAccumulate(bad, 1.0f, absl::MakeSpan(acc));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr("bytes"));
    EXPECT_EQ(acc, std::vector<float>(n, 1.0f)) << "a length error wrote";
  }
}

TEST_P(CodecProperty, RandomBytesNeverReadOutOfBounds) {
  // Any bytes of the right length decode without touching memory outside
  // the buffers (ASan in CI); Validate may accept or reject them.
  std::mt19937_64 rng(7);
  auto c = Make(GetParam(), 64);
  for (size_t n : {1, 9, 64, 65, 300}) {
    for (int trial = 0; trial < 50; ++trial) {
      std::vector<uint8_t> bytes(c->EncodedSize(n));
      for (auto& b : bytes) b = static_cast<uint8_t>(rng());
      std::vector<float> acc(n, 0.0f);
      (void)c->Validate(bytes, n);
      (void)c->DecodeAccumulate(bytes, 1.0f, absl::MakeSpan(acc));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllCodecs, CodecProperty, ::testing::ValuesIn(kCodecs),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name)
                             if (!isalnum(static_cast<unsigned char>(ch)))
                               ch = '_';
                           return name;
                         });

TEST(Fp32Codec, RoundTripsBitExactly) {
  std::mt19937_64 rng(8);
  auto c = Make("fp32", 64);
  std::vector<float> u = RandomVector(3001, 1, rng);
  u[5] = -0.0f;
  u[6] = 1e-40f;  // subnormal
  // Without error feedback p is u itself (with it, -0 + 0 would be +0).
  std::vector<uint8_t> bytes(c->EncodedSize(u.size()));
  ASSERT_TRUE(
      c->EncodeWithFeedback(u, absl::Span<float>(), 0, bytes.data()).ok());
  std::vector<float> q = DecodeAll(*c, bytes, u.size());
  ASSERT_EQ(0, std::memcmp(q.data(), u.data(), 4 * u.size()));
  std::vector<float> e(u.size(), 0.25f);
  EXPECT_EQ(EncodeEF(*c, u, e).error, std::vector<float>(u.size(), 0.0f));
}

TEST(SignCodec, SendsBlockMeanMagnitudeWithSign) {
  auto c = Make("sign", 8);
  std::vector<float> u = {1, -2, 3, -4, 5, -6, 7, -8, 0.5f, -0.5f};
  std::vector<float> zero(u.size(), 0.0f);
  Encoded enc = EncodeEF(*c, u, zero);
  std::vector<float> q = DecodeAll(*c, enc.bytes, u.size());
  const std::vector<float> want = {4.5,  -4.5, 4.5,  -4.5, 4.5,
                                   -4.5, 4.5,  -4.5, 0.5,  -0.5};
  EXPECT_EQ(q, want);
  EXPECT_EQ(enc.bytes.size(), 2 * 4 + 2u);
  // Layout: scale of block 0 (LE float), scale of block 1, sign bits LSB
  // first with 1 for negative.
  float s0;
  std::memcpy(&s0, enc.bytes.data(), 4);
  EXPECT_EQ(s0, 4.5f);
  EXPECT_EQ(enc.bytes[8], 0b10101010);
  EXPECT_EQ(enc.bytes[9], 0b10);
}

TEST(SignCodec, ABlockWhoseSumOverflowsFloatEncodesItsMean) {
  // 64 x 6e36 > FLT_MAX: a float sum of |p| is Inf although every p and
  // their mean are finite; the encoder must still send the mean.
  auto c = Make("sign", 64);
  std::vector<float> u(64, 6e36f);
  for (size_t j = 0; j < u.size(); j += 3) u[j] = -u[j];
  std::vector<float> error(u.size(), 0.0f);
  Encoded enc = EncodeEF(*c, u, error);
  float s0;
  std::memcpy(&s0, enc.bytes.data(), 4);
  EXPECT_EQ(s0, 6e36f);
  std::vector<float> q = DecodeAll(*c, enc.bytes, u.size());
  for (size_t j = 0; j < u.size(); ++j) {
    EXPECT_EQ(q[j], u[j]);
    EXPECT_EQ(enc.error[j], 0.0f);
  }
}

TEST(QuantCodec, Q4LevelsAndLayout) {
  auto c = Make("q4", 8);  // levels -7..7, codes level + 7
  std::vector<float> u = {7, -7, 0, 1, 2.4f, -3.6f, 0.4f, 6.6f};
  std::vector<float> zero(u.size(), 0.0f);
  Encoded enc = EncodeEF(*c, u, zero);
  ASSERT_EQ(enc.bytes.size(), 4 + 4u);
  std::vector<float> q = DecodeAll(*c, enc.bytes, u.size());
  EXPECT_EQ(q, (std::vector<float>{7, -7, 0, 1, 2, -4, 0, 7}));
  // Codes 14, 0, 7, 8, 9, 3, 7, 14, four bits each, low nibble first.
  EXPECT_EQ(enc.bytes[4], 0x0E);
  EXPECT_EQ(enc.bytes[5], 0x87);
  EXPECT_EQ(enc.bytes[6], 0x39);
  EXPECT_EQ(enc.bytes[7], 0xE7);
}

TEST(QuantCodec, ABlockNearFloatMaxDecodesFinite) {
  // L * (s / L) can round past FLT_MAX: the largest level must still decode
  // to a finite value and leave a finite error (found by fuzz_codec).
  int overflowing = 0;  // blocks where the naive step would have overflowed
  for (const char* name : {"q2", "q3", "q4", "q5", "q6", "q7", "q8", "q4s"}) {
    auto c = Make(name, 8);
    const float levels = static_cast<float>((1 << (c->spec().bits - 1)) - 1);
    for (float s : {FLT_MAX, std::nextafter(FLT_MAX, 0.0f), 3.3e38f, 3.0e38f}) {
      const float naive = s / levels;
      if (!(levels * naive <= FLT_MAX)) ++overflowing;
      std::vector<float> u = {s, -s, s / 2, 0, 1, -1, s / 3, -s / 5};
      std::vector<float> zero(u.size(), 0.0f);
      Encoded enc = EncodeEF(*c, u, zero, 7);
      std::vector<float> q = DecodeAll(*c, enc.bytes, u.size());
      for (size_t i = 0; i < u.size(); ++i) {
        ASSERT_TRUE(std::isfinite(q[i])) << name << " s=" << s << " i=" << i;
        ASSERT_TRUE(std::isfinite(enc.error[i])) << name << " s=" << s;
        EXPECT_EQ(enc.error[i], u[i] - q[i]) << name << " i=" << i;
      }
    }
  }
  EXPECT_GT(overflowing, 0);  // the case this test is about did occur
}

TEST(QuantCodec, StochasticRoundingIsUnbiasedAndSeeded) {
  auto c = Make("q2s", 8);  // levels -1, 0, 1
  std::vector<float> u = {1.0f, 0.25f, 0.5f, -0.75f, 0, 0, 0, 0};
  std::vector<float> zero(u.size(), 0.0f);
  std::vector<double> mean(u.size(), 0.0);
  const int draws = 4000;
  for (int s = 0; s < draws; ++s) {
    std::vector<float> q = DecodeAll(*c, EncodeEF(*c, u, zero, s).bytes, 8);
    for (size_t i = 0; i < u.size(); ++i) mean[i] += q[i] / draws;
  }
  for (size_t i = 0; i < u.size(); ++i) EXPECT_NEAR(mean[i], u[i], 0.03);
  EXPECT_NE(EncodeEF(*c, u, zero, 1).bytes, EncodeEF(*c, u, zero, 2).bytes);
}

TEST(TopKCodec, KeepsTheLargestInAscendingIndexOrder) {
  auto c = Make("topk:0.25", 8);  // k = 2 per block of 8
  std::vector<float> u = {0.1f, -5, 0.2f, 0.3f, 4, 0.1f, 0.1f, 0.1f};
  std::vector<float> zero(u.size(), 0.0f);
  Encoded enc = EncodeEF(*c, u, zero);
  ASSERT_EQ(enc.bytes.size(), 12u);
  EXPECT_EQ(enc.bytes[0], 1);  // index 1, then index 4
  EXPECT_EQ(enc.bytes[2], 4);
  std::vector<float> q = DecodeAll(*c, enc.bytes, u.size());
  EXPECT_EQ(q, (std::vector<float>{0, -5, 0, 0, 4, 0, 0, 0}));
  // Everything not sent stays in the error memory.
  EXPECT_EQ(enc.error,
            (std::vector<float>{0.1f, 0, 0.2f, 0.3f, 0, 0.1f, 0.1f, 0.1f}));
}

// Corruptions a validator must catch, each with the reason in the message.
TEST(Validate, CatchesCorruption) {
  std::vector<float> u(16);
  for (size_t i = 0; i < u.size(); ++i)
    u[i] = 0.1f * (i + 1) * (i % 2 ? -1 : 1);
  std::vector<float> zero(u.size(), 0.0f);
  struct Case {
    const char* codec;
    size_t offset;
    std::vector<uint8_t> patch;
    const char* reason;
  };
  const float nan = NAN;
  std::vector<uint8_t> nan_bytes(4);
  std::memcpy(nan_bytes.data(), &nan, 4);
  const float neg = -1.0f;
  std::vector<uint8_t> neg_bytes(4);
  std::memcpy(neg_bytes.data(), &neg, 4);
  const std::vector<Case> cases = {
      {"fp32", 8, nan_bytes, "NaN"},           {"sign", 0, nan_bytes, "scale"},
      {"sign", 4, neg_bytes, "scale"},         {"q4", 0, nan_bytes, "scale"},
      {"q4", 8, {0xFF}, "out of range"},        // code 15 is not a level
      {"bf16", 0, {0x80, 0x7F}, "NaN"},         // +Inf
      {"topk:0.25", 0, {0x08, 0x00}, "index"},  // index 8 in a block of 8
      {"topk:0.25", 0, {0x07, 0x00}, "order"},  // 7 then 7: not ascending
  };
  for (const Case& k : cases) {
    auto c = Make(k.codec, 8);
    Encoded enc = EncodeEF(*c, u, zero);
    ASSERT_TRUE(c->Validate(enc.bytes, u.size()).ok()) << k.codec;
    std::copy(k.patch.begin(), k.patch.end(), enc.bytes.begin() + k.offset);
    absl::Status s = c->Validate(enc.bytes, u.size());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << k.codec;
    EXPECT_THAT(std::string(s.message()), HasSubstr(k.reason)) << k.codec;
  }
}

// fp32's check reads eight floats at a time and the rest one by one: a
// non-finite value is caught at every position, in the wide part and in
// the tail alike, and the extremes of float pass.
TEST(Validate, Fp32FindsANonFiniteValueAnywhere) {
  auto c = Make("fp32", 8);
  std::vector<float> u(37);
  for (size_t i = 0; i < u.size(); ++i) u[i] = 1.0f + static_cast<float>(i);
  u[3] = FLT_MAX;
  u[4] = -FLT_MAX;
  u[5] = std::numeric_limits<float>::denorm_min();
  u[6] = -0.0f;
  std::vector<float> zero(u.size(), 0.0f);
  const Encoded enc = EncodeEF(*c, u, zero);
  ASSERT_TRUE(c->Validate(enc.bytes, u.size()).ok());
  for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (size_t i = 0; i < u.size(); ++i) {
      std::vector<uint8_t> bytes = enc.bytes;
      std::memcpy(bytes.data() + 4 * i, &bad, sizeof bad);
      EXPECT_FALSE(c->Validate(bytes, u.size()).ok()) << bad << " at " << i;
    }
  }
}

TEST(Validate, CatchesNonZeroPadding) {
  for (const char* name : {"sign", "q3"}) {
    auto c = Make(name, 8);
    std::vector<float> u(5, 1.0f);  // 5 elements leave padding bits
    std::vector<float> zero(u.size(), 0.0f);
    Encoded enc = EncodeEF(*c, u, zero);
    ASSERT_TRUE(c->Validate(enc.bytes, u.size()).ok());
    enc.bytes.back() |= 0x80;
    EXPECT_THAT(std::string(c->Validate(enc.bytes, u.size()).message()),
                HasSubstr("padding"));
  }
}

TEST(ParseCodecSpec, AcceptsEveryDocumentedName) {
  for (const char* name : kCodecs) {
    auto spec = ParseCodecSpec(name);
    ASSERT_TRUE(spec.ok()) << name;
    auto again = ParseCodecSpec(spec->ToString());
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *spec);
  }
  EXPECT_EQ(ParseCodecSpec("q8s")->bits, 8);
  EXPECT_TRUE(ParseCodecSpec("q8s")->stochastic);
  EXPECT_EQ(ParseCodecSpec("topk:0.01")->ratio, 0.01);
}

TEST(ParseCodecSpec, RejectsMalformedNamesClearly) {
  for (const char* name :
       {"", "sgn", "q1", "q9", "q", "q4x", "q10", "topk", "topk:", "topk:0",
        "topk:1.5", "topk:abc", "topk:nan", "FP32", "sign "}) {
    auto spec = ParseCodecSpec(name);
    ASSERT_FALSE(spec.ok()) << "'" << name << "' should be rejected";
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(spec.status().message()),
                HasSubstr("accepted codecs"));
  }
}

TEST(MakeCodec, RejectsBadBlockSizes) {
  auto spec = ParseCodecSpec("sign");
  for (size_t block : {0, 4, 12, 65544}) {
    EXPECT_FALSE(MakeCodec(*spec, block).ok()) << block;
  }
}

}  // namespace
}  // namespace effadam
