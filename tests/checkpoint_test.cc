#include "server/checkpoint.h"

#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>

#include "absl/strings/str_format.h"
#include "core/checksum.h"
#include "core/shard_plan.h"
#include "effadam/v1/checkpoint.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transport/compression_proto.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;

Checkpoint Make(int64_t round, size_t n = 40) {
  Checkpoint c;
  c.layout =
      *TensorLayout::Create({{"w", {static_cast<int64_t>(n) - 8}}, {"b", {8}}});
  CompressionConfig cc;
  cc.worker_codec = *ParseCodecSpec("sign");
  cc.server_codec = *ParseCodecSpec("q4");
  c.compression = CompressionToProto(cc);
  c.rounds_closed = round - 1;
  c.state.round = round;
  for (size_t i = 0; i < n; ++i) {
    c.state.params.push_back(0.5f * i - round);
    c.state.error_memory.push_back(-0.001f * i);
  }
  return c;
}

void ExpectSame(const Checkpoint& a, const Checkpoint& b) {
  EXPECT_EQ(a.layout, b.layout);
  EXPECT_EQ(a.compression.SerializeAsString(),
            b.compression.SerializeAsString());
  EXPECT_EQ(a.rounds_closed, b.rounds_closed);
  EXPECT_EQ(a.shard, b.shard);
  EXPECT_EQ(a.num_shards, b.num_shards);
  EXPECT_EQ(a.state.round, b.state.round);
  EXPECT_EQ(ParamsChecksum(a.state.params), ParamsChecksum(b.state.params));
  EXPECT_EQ(ParamsChecksum(a.state.error_memory),
            ParamsChecksum(b.state.error_memory));
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/effadam-ckpt-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST(Checkpoint, RoundTripsBitForBit) {
  const Checkpoint c = Make(17);
  absl::StatusOr<Checkpoint> back = ParseCheckpoint(SerializeCheckpoint(c));
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSame(c, *back);
}

TEST(Checkpoint, AShardHoldsPartOfTheLayout) {
  Checkpoint c = Make(9);
  c.shard = 1;
  c.num_shards = 2;
  c.state.params.resize(8);
  c.state.error_memory.resize(8);
  absl::StatusOr<Checkpoint> back = ParseCheckpoint(SerializeCheckpoint(c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->shard, 1);
  EXPECT_EQ(back->num_shards, 2);
  EXPECT_EQ(back->state.params.size(), 8u);
  // Unsharded, the part must be the whole layout.
  c.shard = 0;
  c.num_shards = 1;
  EXPECT_FALSE(ParseCheckpoint(SerializeCheckpoint(c)).ok());
  c.num_shards = 2;
  c.shard = 2;
  EXPECT_FALSE(ParseCheckpoint(SerializeCheckpoint(c)).ok());
}

TEST(Checkpoint, EveryTruncationIsRejected) {
  const std::string bytes = SerializeCheckpoint(Make(3));
  for (size_t len = 0; len < bytes.size(); ++len) {
    EXPECT_FALSE(ParseCheckpoint(bytes.substr(0, len)).ok()) << len;
  }
  EXPECT_FALSE(ParseCheckpoint(bytes + "x").ok());
}

TEST(Checkpoint, EveryFlippedByteIsRejected) {
  const std::string bytes = SerializeCheckpoint(Make(3));
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] ^= 0x20;
    absl::StatusOr<Checkpoint> c = ParseCheckpoint(bad);
    EXPECT_FALSE(c.ok()) << "byte " << i;
  }
}

TEST(Checkpoint, ImpossibleStatesAreRejectedEvenWithAGoodCrc) {
  Checkpoint nan = Make(3);
  nan.state.error_memory[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(ParseCheckpoint(SerializeCheckpoint(nan)).status().code(),
            absl::StatusCode::kInvalidArgument);
  Checkpoint round0 = Make(3);
  round0.state.round = 0;
  EXPECT_EQ(ParseCheckpoint(SerializeCheckpoint(round0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  Checkpoint short_e = Make(3);
  short_e.state.error_memory.pop_back();
  EXPECT_FALSE(ParseCheckpoint(SerializeCheckpoint(short_e)).ok());
  EXPECT_THAT(
      std::string(
          ParseCheckpoint("not a checkpoint at all").status().message()),
      HasSubstr("magic"));
}

// `file` rewritten with header version `version` and params_checksum
// `checksum`, its CRC-32 made right again: how a file of another format
// version looks (the layout of the bytes is docs/faults.md's).
std::string WithHeader(const std::string& file, uint32_t version,
                       const std::string& checksum) {
  auto u32 = [](const char* p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      v |= static_cast<uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
    }
    return v;
  };
  auto put32 = [](uint32_t v) {
    std::string b(4, '\0');
    for (int i = 0; i < 4; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
    return b;
  };
  const uint32_t header_size = u32(file.data() + 8);
  v1::CheckpointHeader header;
  EXPECT_TRUE(header.ParseFromString(file.substr(12, header_size)));
  header.set_format_version(version);
  header.set_params_checksum(checksum);
  const std::string header_bytes = header.SerializeAsString();
  std::string out =
      file.substr(0, 8) + put32(header_bytes.size()) + header_bytes +
      file.substr(12 + header_size, file.size() - 12 - header_size - 4);
  const uLong crc =
      crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(out.data()),
            static_cast<uInt>(out.size()));
  return out + put32(static_cast<uint32_t>(crc));
}

// FNV-1a 64 of x's bytes, format 1's params_checksum, written out here
// independently of the server's.
std::string Fnv1a64Hex(const std::vector<float>& x) {
  uint64_t h = 14695981039346656037ULL;
  const auto* p = reinterpret_cast<const unsigned char*>(x.data());
  for (size_t i = 0; i < 4 * x.size(); ++i) h = (h ^ p[i]) * 1099511628211ULL;
  return absl::StrFormat("%016x", h);
}

// A server upgraded over its checkpoint directory resumes from the files
// of format 1 (params_checksum FNV-1a 64); a bad checksum or a format it
// does not know is refused.
TEST(Checkpoint, AFileOfFormat1IsReadWithItsOwnChecksum) {
  const Checkpoint c = Make(4);
  const std::string v2 = SerializeCheckpoint(c);
  absl::StatusOr<Checkpoint> old =
      ParseCheckpoint(WithHeader(v2, 1, Fnv1a64Hex(c.state.params)));
  ASSERT_TRUE(old.ok()) << old.status();
  ExpectSame(*old, c);
  // Format 1 checked with format 2's checksum, and the reverse, fail.
  EXPECT_EQ(ParseCheckpoint(WithHeader(v2, 1, ParamsChecksum(c.state.params)))
                .status()
                .code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseCheckpoint(WithHeader(v2, 2, Fnv1a64Hex(c.state.params)))
                .status()
                .code(),
            absl::StatusCode::kDataLoss);
  EXPECT_TRUE(
      ParseCheckpoint(WithHeader(v2, 2, ParamsChecksum(c.state.params))).ok());
  for (uint32_t version : {0u, 3u}) {
    const absl::Status s =
        ParseCheckpoint(WithHeader(v2, version, ParamsChecksum(c.state.params)))
            .status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << version;
    EXPECT_THAT(std::string(s.message()),
                HasSubstr("this server reads versions 1 to 2"));
  }
}

TEST(CheckpointStore, LoadsTheNewestAndKeepsOnlyKeep) {
  TempDir dir;
  absl::StatusOr<CheckpointStore> store = CheckpointStore::Open(dir.path(), 2);
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<std::optional<CheckpointStore::Loaded>> none =
      store->LoadNewest();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  for (int64_t r : {11, 21, 31}) {
    absl::StatusOr<CheckpointStore::Written> w = store->Write(Make(r));
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ(w->bytes, static_cast<int64_t>(ReadAll(w->path).size()));
    EXPECT_EQ(w->params_checksum, ParamsChecksum(Make(r).state.params));
  }
  EXPECT_NE(
      access((dir.path() + "/checkpoint-000000000031.effadam").c_str(), F_OK),
      -1);
  EXPECT_NE(
      access((dir.path() + "/checkpoint-000000000021.effadam").c_str(), F_OK),
      -1);
  EXPECT_EQ(
      access((dir.path() + "/checkpoint-000000000011.effadam").c_str(), F_OK),
      -1);
  auto loaded = store->LoadNewest();
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  ExpectSame((*loaded)->checkpoint, Make(31));
  EXPECT_TRUE((*loaded)->skipped.empty());
}

TEST(CheckpointStore, SkipsATornNewestFileAndIgnoresTempFiles) {
  TempDir dir;
  CheckpointStore store = *CheckpointStore::Open(dir.path(), 3);
  ASSERT_TRUE(store.Write(Make(10)).ok());
  const std::string newest = store.Write(Make(20))->path;
  // A torn write under the final name (as a filesystem without ordered
  // renames could leave it) and an interrupted temporary file.
  const std::string bytes = ReadAll(newest);
  WriteAll(newest, bytes.substr(0, bytes.size() / 2));
  const std::string temp =
      dir.path() + "/.checkpoint-000000000030.effadam.tmp-999";
  WriteAll(temp, SerializeCheckpoint(Make(30)));
  auto loaded = store.LoadNewest();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_TRUE(loaded->has_value());
  ExpectSame((*loaded)->checkpoint, Make(10));
  ASSERT_EQ((*loaded)->skipped.size(), 1u);
  EXPECT_THAT((*loaded)->skipped[0], HasSubstr("000000000020"));
  EXPECT_EQ(access(temp.c_str(), F_OK), -1) << "temp file not removed";
}

TEST(CheckpointStore, AFileWhoseNameLiesAboutItsRoundIsSkipped) {
  TempDir dir;
  CheckpointStore store = *CheckpointStore::Open(dir.path(), 3);
  ASSERT_TRUE(store.Write(Make(5)).ok());
  WriteAll(dir.path() + "/checkpoint-000000000009.effadam",
           SerializeCheckpoint(Make(7)));
  auto loaded = store.LoadNewest();
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ((*loaded)->checkpoint.state.round, 5);
}

TEST(CheckpointStore, AllCorruptIsAnErrorNotAFreshStart) {
  TempDir dir;
  CheckpointStore store = *CheckpointStore::Open(dir.path(), 3);
  const std::string path = store.Write(Make(5))->path;
  WriteAll(path, "garbage");
  auto loaded = store.LoadNewest();
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(path));
}

TEST(CheckpointStore, OpenRejectsBadArguments) {
  TempDir dir;
  EXPECT_FALSE(CheckpointStore::Open("", 1).ok());
  EXPECT_FALSE(CheckpointStore::Open(dir.path(), 0).ok());
  const std::string file = dir.path() + "/file";
  WriteAll(file, "x");
  EXPECT_FALSE(CheckpointStore::Open(file, 1).ok());
  EXPECT_TRUE(CheckpointStore::Open(dir.path() + "/new/", 1).ok());
}

}  // namespace
}  // namespace effadam

// ------------------------------------------------------------ DeltaLog
namespace effadam {
namespace {

TEST(DeltaLog, KeepsTheNewestRoundsAndReadsThemBack) {
  TempDir dir;
  DeltaLog log = *DeltaLog::Open(dir.path(), 2);
  ASSERT_TRUE(log.Append(5, "five").ok());
  ASSERT_TRUE(log.Append(6, std::string("six\0six", 7)).ok());
  ASSERT_TRUE(log.Append(7, "").ok());
  EXPECT_TRUE(absl::IsNotFound(log.Read(5).status()));  // older than keep
  EXPECT_EQ(*log.Read(6), std::string("six\0six", 7));
  EXPECT_EQ(*log.Read(7), "");
  EXPECT_TRUE(absl::IsNotFound(log.Read(8).status()));
  // A restarted server that goes on from x at round 6: its first Append
  // removes the record of round 7, of a history it did not continue; until
  // then that record stays for a replica that may still come.
  DeltaLog restarted = *DeltaLog::Open(dir.path(), 2);
  EXPECT_TRUE(restarted.Read(7).ok());
  const std::string leftover =
      dir.path() + "/delta-000000000008.effadam.tmp-123";
  WriteAll(leftover, "torn");
  ASSERT_TRUE(restarted.Append(6, "six again").ok());
  EXPECT_TRUE(absl::IsNotFound(restarted.Read(7).status()));
  EXPECT_NE(::access(leftover.c_str(), F_OK), 0);
  EXPECT_EQ(*restarted.Read(6), "six again");
  ASSERT_TRUE(restarted.Append(7, "seven").ok());
  EXPECT_EQ(*restarted.Read(7), "seven");  // only the first Append prunes
  EXPECT_FALSE(DeltaLog::Open(dir.path(), 0).ok());
  // The log of a server without a checkpoint directory keeps nothing.
  EXPECT_TRUE(DeltaLog::None().Append(1, "x").ok());
  EXPECT_TRUE(absl::IsNotFound(DeltaLog::None().Read(1).status()));
}

TEST(DeltaLog, EveryDamagedRecordIsDataLoss) {
  TempDir dir;
  DeltaLog log = *DeltaLog::Open(dir.path(), 4);
  ASSERT_TRUE(log.Append(3, "delta of round 3").ok());
  const std::string path = dir.path() + "/delta-000000000003.effadam";
  const std::string good = ReadAll(path);
  ASSERT_FALSE(good.empty());
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] ^= 0x20;
    WriteAll(path, bad);
    EXPECT_TRUE(absl::IsDataLoss(log.Read(3).status())) << "byte " << i;
  }
  for (size_t n = 0; n < good.size(); ++n) {
    WriteAll(path, good.substr(0, n));
    EXPECT_TRUE(absl::IsDataLoss(log.Read(3).status())) << n << " bytes";
  }
  // A record renamed to another round's name is not that round's.
  WriteAll(dir.path() + "/delta-000000000004.effadam", good);
  EXPECT_TRUE(absl::IsDataLoss(log.Read(4).status()));
}

// The property the log exists for: x from an older state plus the logged
// deltas is the x the server had, bit for bit, as every worker has it.
TEST(DeltaLog, ReplayGivesTheServersXBitForBit) {
  for (const char* server_codec : {"sign", "q4", "fp32", "topk:0.1"}) {
    SCOPED_TRACE(server_codec);
    TempDir dir;
    DeltaLog log = *DeltaLog::Open(dir.path(), 3);
    const TensorLayout layout =
        *TensorLayout::Create({{"w", {300}}, {"b", {10}}});
    CompressionConfig cc;
    cc.worker_codec = *ParseCodecSpec("sign");
    cc.server_codec = *ParseCodecSpec(server_codec);
    cc.options.block_size = 64;
    cc.options.min_compress_elements = 64;
    const ShardCodecs codecs = *MakeShardCodecs(layout, cc, 0, 1);
    std::vector<float> x0(layout.num_elements());
    for (size_t i = 0; i < x0.size(); ++i) x0[i] = 0.01f * i - 1.0f;
    auto engine = *RoundEngine::Create(codecs.worker, codecs.server, x0, {});
    RoundEngineState at_3, at_4;
    for (int64_t round = 1; round <= 6; ++round) {
      RoundEngineState* snapshot = round == 3   ? &at_3
                                   : round == 4 ? &at_4
                                                : nullptr;
      if (snapshot != nullptr) {
        snapshot->round = round;
        snapshot->params.assign(engine->params().begin(),
                                engine->params().end());
        snapshot->error_memory.assign(engine->error_memory().begin(),
                                      engine->error_memory().end());
      }
      for (int rank = 0; rank < 2; ++rank) {
        std::vector<float> u(x0.size());
        for (size_t i = 0; i < u.size(); ++i) {
          u[i] = std::sin(0.37f * i + 1.3f * round + rank) * 0.01f;
        }
        std::string bytes;
        ASSERT_TRUE(codecs.worker->EncodeWithFeedback(u, {}, 0, &bytes).ok());
        ASSERT_TRUE(engine->Submit(rank, round, bytes).ok());
      }
      absl::StatusOr<std::string> delta = engine->CloseRound();
      ASSERT_TRUE(delta.ok());
      ASSERT_TRUE(log.Append(round, *delta).ok());
    }
    // Rounds 4..6 are kept (keep 3). From x at round 4 nothing is missing.
    RoundEngineState state = at_4;
    EXPECT_EQ(ReplayDeltas(log, *codecs.server, &state), 3);
    EXPECT_EQ(state.round, 7);
    EXPECT_EQ(engine->round(), 7);
    EXPECT_EQ(ParamsChecksum(state.params), ParamsChecksum(engine->params()));
    EXPECT_TRUE(state.error_memory.empty());  // E of those rounds is lost
    // From x at round 3 the delta of round 3 is gone: nothing applies.
    state = at_3;
    EXPECT_EQ(ReplayDeltas(log, *codecs.server, &state), 0);
    EXPECT_EQ(state.round, 3);
    EXPECT_EQ(ParamsChecksum(state.params), ParamsChecksum(at_3.params));
    EXPECT_EQ(state.error_memory.size(), at_3.error_memory.size());
    // A damaged record ends the replay before it.
    WriteAll(dir.path() + "/delta-000000000005.effadam", "torn");
    state = at_4;
    EXPECT_EQ(ReplayDeltas(log, *codecs.server, &state), 1);
    EXPECT_EQ(state.round, 5);
  }
}

}  // namespace
}  // namespace effadam
