#include "transport/chunk_assembler.h"

#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;

ChunkAssembler Make(size_t total, size_t max_chunk, size_t unit = 1,
                    bool finite = false, int rank = -1) {
  ChunkRules r;
  r.total_bytes = total;
  r.max_chunk_bytes = max_chunk;
  r.unit = unit;
  r.finite_float32 = finite;
  r.rank = rank;
  absl::StatusOr<ChunkAssembler> a = ChunkAssembler::Create(r);
  EXPECT_TRUE(a.ok()) << a.status();
  return *std::move(a);
}

std::string Bytes(size_t n, char first = 'a') {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(first + i % 26);
  return s;
}

std::string Floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), 4 * v.size());
}

TEST(ChunkAssembler, RejectsRulesNoStreamCanMeet) {
  ChunkRules r;
  r.total_bytes = 0;
  r.max_chunk_bytes = 10;
  EXPECT_EQ(ChunkAssembler::Create(r).status().code(),
            absl::StatusCode::kInvalidArgument);
  r.total_bytes = 10;
  r.max_chunk_bytes = 0;
  EXPECT_FALSE(ChunkAssembler::Create(r).ok());
  r.max_chunk_bytes = 3;
  r.unit = 4;
  r.total_bytes = 8;
  EXPECT_FALSE(ChunkAssembler::Create(r).ok());  // no chunk holds a unit
  r.max_chunk_bytes = 4;
  r.total_bytes = 10;
  EXPECT_FALSE(ChunkAssembler::Create(r).ok());  // not whole units
  r.total_bytes = 8;
  r.unit = 2;
  r.finite_float32 = true;
  EXPECT_FALSE(ChunkAssembler::Create(r).ok());
  r.unit = 4;
  EXPECT_TRUE(ChunkAssembler::Create(r).ok());
}

TEST(ChunkAssembler, AssemblesExactlyCeilChunksAndKeepsTheBytes) {
  const std::string all = Bytes(250);
  ChunkAssembler a = Make(250, 100, 1, false, 3);
  a.Start(7);
  EXPECT_FALSE(a.complete());
  ASSERT_TRUE(a.Add(3, 7, 0, all.substr(0, 100)).ok());
  ASSERT_TRUE(a.Add(3, 7, 100, all.substr(100, 100)).ok());
  EXPECT_FALSE(a.complete());
  EXPECT_EQ(a.received_bytes(), 200u);
  ASSERT_TRUE(a.Add(3, 7, 200, all.substr(200)).ok());
  EXPECT_TRUE(a.complete());
  EXPECT_TRUE(a.Finish().ok());
  EXPECT_EQ(a.TakeBuffer(), all);
  EXPECT_FALSE(a.complete());
  EXPECT_EQ(a.TakeBuffer(), "");

  // The next buffer starts afresh, with another round.
  a.Start(8);
  ASSERT_TRUE(a.Add(3, 8, 0, all.substr(0, 100)).ok());
  EXPECT_EQ(a.received_bytes(), 100u);
}

TEST(ChunkAssembler, ElementOffsetsAndRoundTakenFromTheFirstChunk) {
  // max 10 bytes holds two floats: 5 elements arrive as 2 + 2 + 1.
  const std::vector<float> x = {1, -2, 3.5f, 1e-40f, -0.0f};
  const std::string b = Floats(x);
  ChunkAssembler a = Make(20, 10, 4, true);
  EXPECT_EQ(a.full_chunk_bytes(), 8u);
  a.Start(std::nullopt);
  ASSERT_TRUE(a.Add(-1, 42, 0, b.substr(0, 8)).ok());
  EXPECT_EQ(a.round(), 42);
  ASSERT_TRUE(a.Add(-1, 42, 2, b.substr(8, 8)).ok());
  ASSERT_TRUE(a.Add(-1, 42, 4, b.substr(16)).ok());
  EXPECT_EQ(a.TakeBuffer(), b);
}

struct BadCase {
  const char* name;
  // Chunks fed after the good prefix (offset 0..99 of a 250-byte buffer of
  // round 7, rank 3, max 100).
  int rank;
  int64_t round;
  int64_t offset;
  std::string payload;
  ChunkFault fault;
  const char* message;
};

TEST(ChunkAssembler, EachBadChunkHasItsFaultAndMessage) {
  const std::vector<BadCase> cases = {
      {"other rank", 4, 7, 100, Bytes(100), ChunkFault::kWrongRank,
       "a chunk names rank 4 on rank 3's stream"},
      {"other round", 3, 8, 100, Bytes(100), ChunkFault::kWrongRound,
       "a chunk of round 8 arrived where round 7 was expected"},
      {"gap", 3, 7, 150, Bytes(100), ChunkFault::kBadOffset,
       "chunk at offset 150; expected offset 100"},
      {"repeat", 3, 7, 0, Bytes(100), ChunkFault::kBadOffset,
       "chunk at offset 0; expected offset 100"},
      {"negative offset", 3, 7, -100, Bytes(100), ChunkFault::kBadOffset,
       "expected offset 100"},
      {"empty", 3, 7, 100, "", ChunkFault::kBadSize,
       "empty chunk at offset 100"},
      {"oversize", 3, 7, 100, Bytes(101), ChunkFault::kBadSize,
       "chunk at offset 100 has 101 bytes, over max_chunk_bytes (100)"},
      {"short", 3, 7, 100, Bytes(99), ChunkFault::kBadSize,
       "every chunk must carry min(100, bytes remaining) = 100 bytes"},
      {"one byte", 3, 7, 100, Bytes(1), ChunkFault::kBadSize,
       "every chunk must carry"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    ChunkAssembler a = Make(250, 100, 1, false, 3);
    a.Start(7);
    ASSERT_TRUE(a.Add(3, 7, 0, Bytes(100)).ok());
    const absl::Status s = a.Add(c.rank, c.round, c.offset, c.payload);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr(c.message));
    EXPECT_EQ(a.fault(), c.fault);
    EXPECT_EQ(a.received_bytes(), 0u);  // the partial buffer is dropped
    // The refusal stands, whatever comes next.
    EXPECT_EQ(a.Add(3, 7, 100, Bytes(100)), s);
    EXPECT_EQ(a.Finish(), s);
    EXPECT_FALSE(a.complete());
    EXPECT_EQ(a.TakeBuffer(), "");
  }
}

TEST(ChunkAssembler, TooLongAndAfterTheEnd) {
  ChunkAssembler a = Make(250, 100);
  a.Start(1);
  ASSERT_TRUE(a.Add(-1, 1, 0, Bytes(100)).ok());
  ASSERT_TRUE(a.Add(-1, 1, 100, Bytes(100)).ok());
  absl::Status s = a.Add(-1, 1, 200, Bytes(100));
  EXPECT_EQ(a.fault(), ChunkFault::kBadSize);
  EXPECT_THAT(s.message(), HasSubstr("only 50 of the 250 bytes remain"));

  a.Start(1);
  ASSERT_TRUE(a.Add(-1, 1, 0, Bytes(100)).ok());
  ASSERT_TRUE(a.Add(-1, 1, 100, Bytes(100)).ok());
  ASSERT_TRUE(a.Add(-1, 1, 200, Bytes(50)).ok());
  ASSERT_TRUE(a.complete());
  s = a.Add(-1, 1, 250, Bytes(1));
  EXPECT_EQ(a.fault(), ChunkFault::kBadSize);
  EXPECT_THAT(s.message(), HasSubstr("only 0 of the 250 bytes remain"));
  EXPECT_FALSE(a.complete());
}

TEST(ChunkAssembler, TruncatedStream) {
  ChunkAssembler a = Make(250, 100);
  a.Start(1);
  ASSERT_TRUE(a.Add(-1, 1, 0, Bytes(100)).ok());
  const absl::Status s = a.Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.fault(), ChunkFault::kTruncated);
  EXPECT_THAT(s.message(), HasSubstr("the stream ended after 100 of 250"));
  a.Start(1);
  EXPECT_EQ(a.Finish().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChunkAssembler, Float32Rules) {
  ChunkAssembler a = Make(16, 8, 4, true);
  a.Start(0);
  // Not whole floats.
  EXPECT_THAT(a.Add(-1, 0, 0, Bytes(7)).message(),
              HasSubstr("not a whole number of 4-byte elements"));
  EXPECT_EQ(a.fault(), ChunkFault::kBadSize);

  for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    a.Start(0);
    ASSERT_TRUE(a.Add(-1, 0, 0, Floats({1, 2})).ok());
    const absl::Status s = a.Add(-1, 0, 2, Floats({3, bad}));
    EXPECT_EQ(a.fault(), ChunkFault::kNonFinite);
    EXPECT_THAT(s.message(), HasSubstr("element 3 is not finite"));
  }
  // Offsets count elements.
  a.Start(0);
  ASSERT_TRUE(a.Add(-1, 0, 0, Floats({1, 2})).ok());
  EXPECT_THAT(a.Add(-1, 0, 8, Floats({3, 4})).message(),
              HasSubstr("chunk at element 8; expected element 2"));
}

TEST(ChunkAssembler, MaxChunkBytesNotAMultipleOfTheUnit) {
  // 10-byte chunks hold 2 floats; a 10-byte payload is not whole floats and
  // an 8-byte one is the full chunk.
  ChunkAssembler a = Make(24, 10, 4);
  a.Start(0);
  ASSERT_TRUE(a.Add(-1, 0, 0, Bytes(8)).ok());
  ASSERT_TRUE(a.Add(-1, 0, 2, Bytes(8)).ok());
  ASSERT_TRUE(a.Add(-1, 0, 4, Bytes(8)).ok());
  EXPECT_TRUE(a.complete());
}

}  // namespace
}  // namespace effadam

namespace effadam {
namespace {

// Three tensors, several segments each, one of them fp32 (small).
std::unique_ptr<UpdateCodec> SegmentedCodec(const std::string& name) {
  auto layout =
      TensorLayout::Create({{"w", {40, 16}}, {"b", {10}}, {"v", {200}}});
  EXPECT_TRUE(layout.ok()) << layout.status();
  CompressionOptions o;
  o.block_size = 64;
  o.min_compress_elements = 64;
  o.max_segment_elements = 128;
  auto uc = UpdateCodec::Create(*layout, *ParseCodecSpec(name), o);
  EXPECT_TRUE(uc.ok()) << uc.status();
  return *std::move(uc);
}

// Sends `bytes` in chunks of `chunk` bytes to an assembler that checks the
// segments of `codec`; OK, or the status of the refused chunk.
absl::Status Stream(const UpdateCodec& codec, const std::string& bytes,
                    size_t chunk) {
  ChunkRules r;
  r.total_bytes = codec.encoded_size();
  r.max_chunk_bytes = chunk;
  r.check_segments = &codec;
  absl::StatusOr<ChunkAssembler> a = ChunkAssembler::Create(r);
  EXPECT_TRUE(a.ok()) << a.status();
  a->Start(1);
  for (size_t off = 0; off < bytes.size(); off += chunk) {
    absl::Status s = a->Add(-1, 1, static_cast<int64_t>(off),
                            absl::string_view(bytes).substr(off, chunk));
    if (!s.ok()) {
      EXPECT_EQ(a->fault(), ChunkFault::kInvalidPayload);
      EXPECT_EQ(a->SharedBuffer(), nullptr);
      return s;
    }
  }
  EXPECT_TRUE(a->complete());
  EXPECT_EQ(*a->SharedBuffer(), bytes);
  return a->Finish();
}

// The check as chunks arrive refuses exactly what UpdateCodec::Validate
// refuses, with the same message (the first bad segment's), for random
// corruptions of every codec's bytes: random bytes, and NaN, Inf and
// negative floats at random places (scales, values).
TEST(ChunkAssemblerSegments, RefusesWhatValidateRefuses) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  const float bad_floats[] = {std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::infinity(), -1.0f,
                              -std::numeric_limits<float>::infinity()};
  for (const char* name :
       {"fp32", "bf16", "fp16", "sign", "q2", "q4", "q8s", "topk:0.1"}) {
    SCOPED_TRACE(name);
    auto codec = SegmentedCodec(name);
    ASSERT_GT(codec->segments().size(), 4u);
    std::vector<float> u(codec->num_elements());
    for (float& x : u) x = normal(rng);
    std::string good;
    ASSERT_TRUE(codec->EncodeWithFeedback(u, {}, 3, &good).ok());
    ASSERT_TRUE(Stream(*codec, good, 100).ok());
    int refused = 0;
    for (int trial = 0; trial < 400; ++trial) {
      std::string bad = good;
      const int edits = 1 + trial % 3;
      for (int k = 0; k < edits; ++k) {
        if (trial % 2 == 0) {
          bad[rng() % bad.size()] = static_cast<char>(rng());
        } else {
          const size_t at = rng() % (bad.size() - 3);
          const float v = bad_floats[rng() % 4];
          std::memcpy(&bad[at], &v, sizeof v);
        }
      }
      const absl::Status whole = codec->Validate(bad);
      for (size_t chunk : {size_t{7}, size_t{100}, bad.size()}) {
        const absl::Status streamed = Stream(*codec, bad, chunk);
        ASSERT_EQ(streamed.ok(), whole.ok()) << trial << " " << whole;
        if (!whole.ok()) {
          EXPECT_EQ(streamed.message(), whole.message());
        }
      }
      refused += !whole.ok();
    }
    // The corruptions do reach the checks (fp32 and topk accept most
    // random bytes, so only a share is refused).
    EXPECT_GT(refused, 40) << name;
  }
}

TEST(ChunkAssemblerSegments, NeedsAWholeReservedBufferOfTheCodecsSize) {
  auto codec = SegmentedCodec("sign");
  ChunkRules r;
  r.total_bytes = codec->encoded_size() + 1;
  r.max_chunk_bytes = 100;
  r.check_segments = codec.get();
  EXPECT_EQ(ChunkAssembler::Create(r).status().code(),
            absl::StatusCode::kInvalidArgument);
  r.total_bytes = codec->encoded_size();
  r.reserve_total = false;
  EXPECT_FALSE(ChunkAssembler::Create(r).ok());
  r.reserve_total = true;
  EXPECT_TRUE(ChunkAssembler::Create(r).ok());
}

// The buffer lives across Start()s: the next buffer reuses its memory
// once the holder of the last one let go, and never while it holds it.
TEST(ChunkAssembler, ReusesItsBufferOnceNobodyHoldsIt) {
  ChunkAssembler a = Make(250, 100, 1, false, 3);
  auto fill = [&](int64_t round, char first) {
    a.Start(round);
    const std::string all = Bytes(250, first);
    for (size_t off = 0; off < all.size(); off += 100) {
      ASSERT_TRUE(a.Add(3, round, static_cast<int64_t>(off),
                        absl::string_view(all).substr(off, 100))
                      .ok());
    }
    ASSERT_TRUE(a.complete());
  };
  fill(1, 'a');
  std::shared_ptr<const std::string> first = a.SharedBuffer();
  const std::string* memory = first.get();
  fill(2, 'b');  // `first` is still held: new memory, first unchanged
  std::shared_ptr<const std::string> second = a.SharedBuffer();
  EXPECT_NE(second.get(), memory);
  EXPECT_EQ(*first, Bytes(250, 'a'));
  EXPECT_EQ(*second, Bytes(250, 'b'));
  const std::string* reused = second.get();
  first.reset();
  second.reset();
  fill(3, 'c');
  EXPECT_EQ(a.SharedBuffer().get(), reused);
  EXPECT_EQ(*a.SharedBuffer(), Bytes(250, 'c'));
}

}  // namespace
}  // namespace effadam
