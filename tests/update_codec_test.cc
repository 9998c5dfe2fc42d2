#include "core/update_codec.h"

#include <cstring>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;

TensorLayout MakeLayout() {
  auto layout = TensorLayout::Create({{"w", {300, 10}},  // 3000
                                      {"b", {10}},       // small: fp32
                                      {"v", {2049}}});   // odd size
  EXPECT_TRUE(layout.ok()) << layout.status();
  return *layout;
}

std::unique_ptr<UpdateCodec> MakeUpdateCodec(const std::string& name,
                                             CompressionOptions o = {}) {
  auto spec = ParseCodecSpec(name);
  EXPECT_TRUE(spec.ok());
  auto uc = UpdateCodec::Create(MakeLayout(), *spec, o);
  EXPECT_TRUE(uc.ok()) << uc.status();
  return *std::move(uc);
}

TEST(UpdateCodec, SegmentsFollowTensorsAndTheSizeLimit) {
  CompressionOptions o;
  o.block_size = 64;
  o.min_compress_elements = 100;
  o.max_segment_elements = 1000;  // rounded down to 960
  auto uc = MakeUpdateCodec("sign", o);
  const auto& segs = uc->segments();
  // w: 960, 960, 960, 120; b: 10 (fp32); v: 960, 960, 129.
  ASSERT_EQ(segs.size(), 8u);
  EXPECT_EQ(segs[0].size, 960u);
  EXPECT_EQ(segs[3].begin, 2880u);
  EXPECT_EQ(segs[3].size, 120u);
  EXPECT_EQ(segs[4].begin, 3000u);
  EXPECT_EQ(segs[4].codec->spec().kind, CodecKind::kFp32);
  EXPECT_EQ(segs[4].byte_size, 40u);
  EXPECT_EQ(segs[5].begin, 3010u);  // segments restart at each tensor
  EXPECT_EQ(segs[6].begin, 3970u);
  EXPECT_EQ(segs[7].size, 129u);
  size_t bytes = 0;
  for (const Segment& s : segs) {
    EXPECT_EQ(s.byte_begin, bytes);
    bytes += s.byte_size;
  }
  EXPECT_EQ(uc->encoded_size(), bytes);
  EXPECT_EQ(uc->num_elements(), 5059u);
}

TEST(UpdateCodec, EncodesEachSegmentWithItsCodec) {
  auto uc = MakeUpdateCodec("q4");
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> u(uc->num_elements()), e(u.size(), 0.0f);
  for (float& x : u) x = normal(rng);
  std::string bytes;
  ASSERT_TRUE(uc->EncodeWithFeedback(u, absl::MakeSpan(e), 3, &bytes).ok());
  EXPECT_EQ(bytes.size(), uc->encoded_size());
  ASSERT_TRUE(uc->Validate(bytes).ok());
  std::vector<float> q(u.size(), 0.0f);
  ASSERT_TRUE(uc->DecodeAccumulate(bytes, 1.0f, absl::MakeSpan(q)).ok());
  for (size_t i = 0; i < u.size(); ++i) {
    ASSERT_EQ(e[i], u[i] - q[i]) << i;
  }
  // The small tensor travels exactly and keeps no error.
  for (size_t i = 3000; i < 3010; ++i) {
    EXPECT_EQ(q[i], u[i]);
    EXPECT_EQ(e[i], 0.0f);
  }
}

// EncodeZeros builds tile by tile the bytes a whole vector of zeros
// encodes to, for every kind of codec, segments longer than its tile
// (65536 elements) and segments that end inside a block.
TEST(UpdateCodec, EncodeZerosIsTheEncodingOfAZeroVector) {
  auto layout =
      TensorLayout::Create({{"big", {150001}}, {"b", {10}}, {"odd", {2049}}});
  ASSERT_TRUE(layout.ok());
  for (const char* name :
       {"fp32", "bf16", "fp16", "sign", "q4", "q4s", "topk:0.01"}) {
    SCOPED_TRACE(name);
    auto spec = ParseCodecSpec(name);
    ASSERT_TRUE(spec.ok());
    CompressionOptions o;
    o.max_segment_elements = 100000;
    auto uc = UpdateCodec::Create(*layout, *spec, o);
    ASSERT_TRUE(uc.ok()) << uc.status();
    std::string want, got = "stale bytes";
    ASSERT_TRUE(
        (*uc)
            ->EncodeWithFeedback(
                std::vector<float>((*uc)->num_elements(), 0.0f), {}, 0, &want)
            .ok());
    ASSERT_TRUE((*uc)->EncodeZeros(&got).ok());
    EXPECT_EQ(got, want);

    // A range of segments (a shard's part): its bytes and no others.
    const std::vector<Segment>& segs = (*uc)->segments();
    ASSERT_GE(segs.size(), 3u);
    std::string part(want.size(), '\xab');
    const auto bytes = [](std::string& s) {
      return absl::MakeSpan(reinterpret_cast<uint8_t*>(s.data()), s.size());
    };
    ASSERT_TRUE((*uc)->EncodeZeros(1, segs.size() - 1, bytes(part)).ok());
    const size_t begin = segs[1].byte_begin, end = segs.back().byte_begin;
    EXPECT_EQ(part.substr(begin, end - begin), want.substr(begin, end - begin));
    EXPECT_EQ(part.substr(0, begin), std::string(begin, '\xab'));
    EXPECT_EQ(part.substr(end), std::string(want.size() - end, '\xab'));
    EXPECT_EQ((*uc)->EncodeZeros(2, 1, bytes(part)).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*uc)->EncodeZeros(0, segs.size() + 1, bytes(part)).code(),
              absl::StatusCode::kInvalidArgument);
    std::string short_buffer(want.size() - 1, '\0');
    EXPECT_EQ((*uc)->EncodeZeros(0, 1, bytes(short_buffer)).code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST(UpdateCodec, RejectsMismatchedSizesAndBadBytes) {
  auto uc = MakeUpdateCodec("sign");
  std::vector<float> u(uc->num_elements() - 1), acc(uc->num_elements());
  std::string bytes;
  EXPECT_EQ(uc->EncodeWithFeedback(u, {}, 0, &bytes).code(),
            absl::StatusCode::kInvalidArgument);
  std::string short_bytes(uc->encoded_size() - 1, '\0');
  EXPECT_THAT(std::string(uc->Validate(short_bytes).message()),
              HasSubstr("must be"));
  EXPECT_FALSE(uc->DecodeAccumulate(short_bytes, 1, absl::MakeSpan(acc)).ok());

  std::vector<float> ok(uc->num_elements(), 1.0f);
  ASSERT_TRUE(uc->EncodeWithFeedback(ok, {}, 0, &bytes).ok());
  bytes[0] = bytes[1] = bytes[2] = bytes[3] = '\xff';  // NaN scale
  EXPECT_THAT(std::string(uc->Validate(bytes).message()),
              HasSubstr("segment at element 0"));
}

TEST(UpdateCodec, RejectsASegmentLimitBelowOneBlock) {
  CompressionOptions o;
  o.block_size = 1024;
  o.max_segment_elements = 1000;
  auto spec = ParseCodecSpec("sign");
  EXPECT_FALSE(UpdateCodec::Create(MakeLayout(), *spec, o).ok());
}

TEST(UpdateCodec, SignOnALargeTensorIsAbout31xSmallerThanFp32) {
  auto layout = TensorLayout::Create({{"w", {1 << 20}}});
  ASSERT_TRUE(layout.ok());
  auto sign = UpdateCodec::Create(*layout, *ParseCodecSpec("sign"), {});
  ASSERT_TRUE(sign.ok());
  const double ratio = 4.0 * (1 << 20) / (*sign)->encoded_size();
  EXPECT_NEAR(ratio, 32.0 / (1 + 32.0 / 1024), 1e-9);
}

}  // namespace
}  // namespace effadam
