// Writes the seed corpus of every fuzz target (tests/fuzz/*.cc describe
// their input formats) into DIR/<target>/: a few well-formed inputs per
// target, so the fuzzers start past the first checks, and a few that must
// be refused. Usage: effadam-fuzz-seeds DIR (tests/fuzz/corpus).

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/codec.h"
#include "effadam/v1/parameter_server.pb.h"
#include "server/checkpoint.h"
#include "transport/compression_proto.h"

namespace effadam {
namespace {

namespace fs = std::filesystem;

// Little-endian integers and float32, as the fuzz targets read them.
class Seed {
 public:
  Seed& Str(const std::string& s) {
    bytes_ += s;
    bytes_.push_back('\0');
    return *this;
  }
  Seed& U8(uint8_t v) {
    bytes_.push_back(static_cast<char>(v));
    return *this;
  }
  Seed& U16(uint16_t v) { return U8(v & 0xff).U8(v >> 8); }
  Seed& U32(uint32_t v) { return U16(v & 0xffff).U16(v >> 16); }
  Seed& U64(uint64_t v) { return U32(static_cast<uint32_t>(v)).U32(v >> 32); }
  Seed& Raw(const std::string& s) {
    bytes_ += s;
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

void Write(const fs::path& dir, const std::string& name,
           const std::string& bytes) {
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
}

std::string Floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), 4 * v.size());
}

void CodecSeeds(const fs::path& dir) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 1);
  for (const char* name : {"fp32", "bf16", "fp16", "sign", "q2", "q4", "q8",
                           "q4s", "topk:0.1", "topk:1"}) {
    for (uint16_t n : {13, 200}) {
      const uint16_t block = n == 13 ? 8 : 64;
      std::vector<float> p(n);
      for (float& x : p) x = normal(rng);
      auto codec = *MakeCodec(*ParseCodecSpec(name), block);
      std::string out(codec->EncodedSize(n), '\0');
      if (!codec
               ->EncodeWithFeedback(p, {}, 5,
                                    reinterpret_cast<uint8_t*>(out.data()))
               .ok()) {
        std::fprintf(stderr, "cannot encode a seed for %s\n", name);
        std::exit(1);
      }
      std::string file = name;
      for (char& c : file) c = c == ':' || c == '.' ? '_' : c;
      Write(dir, file + "_n" + std::to_string(n),
            Seed().Str(name).U16(block).U16(n).U8(0).U32(5).Raw(out).bytes());
      if (n == 200 &&
          (std::string(name) == "sign" || std::string(name) == "q4")) {
        // The first scale NaN: must not validate.
        const float nan = std::numeric_limits<float>::quiet_NaN();
        out.replace(0, 4, reinterpret_cast<const char*>(&nan), 4);
        Write(dir, file + "_nan_scale",
              Seed().Str(name).U16(block).U16(n).U8(0).U32(5).Raw(out).bytes());
      }
    }
  }
  // Raw floats for the encoder, padded to length (flag bit 0).
  std::vector<float> big = {3e38f, -3e38f, 1e-40f, -0.0f, 1, 2, 3, 4};
  Write(dir, "q8_extremes",
        Seed().Str("q8").U16(8).U16(8).U8(1).U32(1).Raw(Floats(big)).bytes());
  Write(dir, "sign_overflow",
        Seed().Str("sign").U16(8).U16(8).U8(1).U32(1).Raw(Floats(big)).bytes());
  Write(dir, "bad_block",
        Seed().Str("sign").U16(12).U16(8).U8(1).U32(1).bytes());
}

void CodecSpecSeeds(const fs::path& dir) {
  struct {
    const char* file;
    const char* worker;
    const char* server;
    int64_t block;
    int64_t min;
  } seeds[] = {
      {"sign_q4", "sign", "q4", 1024, 1024},
      {"topk", "topk:0.01", "topk:1", 64, 0},
      {"stochastic", "q2s", "q8s", 65536, 7},
      {"halves", "bf16", "fp16", 8, 1},
      {"bad_name", "q9", "fp32", 64, 0},
      {"bad_block", "fp32", "fp32", 65544, 0},
      {"negative_min", "fp32", "fp32", 64, -1},
      {"topk_exponent", "topk:1e-3", "topk:0.5000", 16, 3},
  };
  for (const auto& s : seeds) {
    Write(dir, s.file,
          Seed().Str(s.worker).Str(s.server).U64(s.block).U64(s.min).bytes());
  }
}

void ChunkAssemblerSeeds(const fs::path& dir) {
  // 250 bytes in chunks of 100 on rank 3's stream, round 7; then a second
  // buffer that goes wrong (a short chunk), then one that is truncated.
  Seed a;
  a.U16(250).U8(4).U8(100).U8(3);
  a.U8(8).U8(7);                              // Start(7)
  a.U8(3).U8(15).Raw(std::string(100, 'x'));  // Add, all as expected
  a.U8(3).U8(15).Raw(std::string(100, 'x'));
  a.U8(3).U8(15).Raw(std::string(50, 'x'));
  a.U8(2);                                          // TakeBuffer
  a.U8(8).U8(7);                                    // Start(7)
  a.U8(3).U8(7).U16(99).Raw(std::string(99, 'y'));  // a 99-byte chunk
  a.U8(8).U8(1).U8(3).U8(15).Raw(std::string(100, 'z')).U8(1);  // Finish
  Write(dir, "bytes_rank", a.bytes());

  // 10 float32 elements, 3 per chunk (max 14 bytes), finite only; the
  // second buffer carries a NaN.
  Seed f;
  f.U16(10).U8(3).U8(14).U8(0);
  f.U8(8).U8(0);
  const std::vector<float> ones(3, 1.0f);
  for (int i = 0; i < 3; ++i) f.U8(3).U8(15).Raw(Floats(ones));
  f.U8(3).U8(15).Raw(Floats({1.0f}));
  f.U8(2);
  f.U8(8).U8(0).U8(3).U8(31).Raw(Floats(ones)).U8(1);  // NaN at element 1
  f.U8(1);
  Write(dir, "floats_finite", f.bytes());

  // Offsets and rounds taken from the input: a gap and another round.
  Seed g;
  g.U16(64).U8(0).U8(16).U8(0);
  g.U8(8).U8(2).U8(3).U8(15).Raw(std::string(16, 'a'));
  // Rank byte 0 (-1), offset 20 instead of 16.
  g.U8(3).U8(8 | 2).U8(0).U32(20).Raw(std::string(16, 'b'));
  // Round byte 3 on a round-2 buffer.
  g.U8(8).U8(2).U8(3).U8(8 | 4 | 1).U8(3).Raw(std::string(16, 'c'));
  Write(dir, "gap_and_round", g.bytes());
}

void JoinRequestSeeds(const fs::path& dir) {
  auto request = [](std::vector<TensorSpec> tensors,
                    const v1::CompressionSettings& c) {
    v1::JoinRequest r;
    for (const TensorSpec& t : tensors) {
      v1::TensorSpec* s = r.add_layout();
      s->set_name(t.name);
      for (int64_t d : t.shape) s->add_shape(d);
    }
    *r.mutable_compression() = c;
    r.set_rank(-1);
    return r.SerializeAsString();
  };
  CompressionConfig server;  // the fuzz target's server settings
  server.worker_codec = *ParseCodecSpec("sign");
  server.server_codec = *ParseCodecSpec("q4");
  server.options.block_size = 64;
  server.options.min_compress_elements = 64;
  const v1::CompressionSettings same = CompressionToProto(server);
  v1::CompressionSettings other = same;
  other.set_worker_codec("topk:0.010");
  other.set_block_size(128);
  v1::CompressionSettings malformed = same;
  malformed.set_server_codec("q9");
  v1::CompressionSettings bad_block = same;
  bad_block.set_block_size(100);

  Write(
      dir, "mlp",
      request({{"w1", {784, 64}}, {"b1", {64}}, {"w2", {64, 10}}, {"b2", {10}}},
              same));
  Write(dir, "other_settings", request({{"w", {40, 50}}, {"b", {7}}}, other));
  Write(dir, "malformed_codec", request({{"w", {10}}}, malformed));
  Write(dir, "bad_block", request({{"w", {10}}}, bad_block));
  Write(dir, "duplicate_name", request({{"w", {3}}, {"w", {4}}}, same));
  Write(dir, "zero_dim", request({{"w", {3, 0}}}, same));
  Write(dir, "too_many", request({{"w", {int64_t{1} << 20, 1 << 20}}}, same));
  Write(dir, "empty", request({}, same));
}

// Whole checkpoint files (flag 0: taken as they are) and one with a bad
// CRC that flag 1 repairs.
void CheckpointSeeds(const fs::path& dir) {
  Checkpoint c;
  c.layout = *TensorLayout::Create({{"w", {40, 3}}, {"b", {5}}});
  CompressionConfig cc;
  cc.worker_codec = *ParseCodecSpec("sign");
  cc.server_codec = *ParseCodecSpec("q4");
  c.compression = CompressionToProto(cc);
  c.state.round = 7;
  c.rounds_closed = 6;
  for (size_t i = 0; i < c.layout.num_elements(); ++i) {
    c.state.params.push_back(0.25f * static_cast<float>(i) - 3.0f);
    c.state.error_memory.push_back(1e-3f * static_cast<float>(i));
  }
  Write(dir, "whole", std::string(1, '\0') + SerializeCheckpoint(c));
  Checkpoint shard = c;
  shard.shard = 1;
  shard.num_shards = 2;
  shard.state.params.resize(5);
  shard.state.error_memory.resize(5);
  Write(dir, "shard", std::string(1, '\0') + SerializeCheckpoint(shard));
  std::string torn = SerializeCheckpoint(c);
  torn[20] ^= 1;
  Write(dir, "crc_repaired", std::string(1, '\1') + torn);
}

}  // namespace
}  // namespace effadam

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR (e.g. tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  effadam::CodecSeeds(dir / "fuzz_codec");
  effadam::CodecSpecSeeds(dir / "fuzz_codec_spec");
  effadam::ChunkAssemblerSeeds(dir / "fuzz_chunk_assembler");
  effadam::JoinRequestSeeds(dir / "fuzz_join_request");
  effadam::CheckpointSeeds(dir / "fuzz_checkpoint");
  return 0;
}
