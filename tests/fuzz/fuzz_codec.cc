// libFuzzer target: one codec's decoder, validator and encoder on arbitrary
// bytes.
//
// Input: codec name, NUL, block size (u16), element count (u16, mod 4097),
// flags (u8; bit 0: cut or zero-pad the payload to the codec's exact
// length, so the fuzzer reaches past the length check), seed (u32), then
// the payload.
//
// Invariants: a payload of the wrong length never validates; whatever
// Validate accepts decodes without error to finite values, Decode and
// DecodeAccumulate agree, and re-encoding what was decoded succeeds
// (except sign, whose block mean may overflow) and validates, and encoding
// or decoding it in two block ranges gives the same bits. The payload
// read as float32 values encodes to bytes that validate, with a finite
// error memory, and every deterministic codec keeps its compressor bound
// ||Q(p) - p||^2 <= (1 - delta) ||p||^2. ASan and UBSan check that no
// decoder reads or writes out of bounds, whatever the bytes.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/codec.h"
#include "core/codec_spec.h"
#include "tests/fuzz/fuzz_check.h"

namespace effadam {
namespace {

// Blocks whose largest |p| is below this have subnormal scales or steps.
constexpr double kSmallestCheckedScale = 0x1p-100;

absl::Span<const uint8_t> AsBytes(const std::string& s) {
  return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()),
                                   s.size());
}

bool AllFinite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

// The span in two block ranges cut where the seed says: EncodeRange with
// the error out of place writes the bytes and error of the whole in-place
// encode (whose error started at zero), and DecodeRange from another base
// computes base + weight * q, bit for bit.
void CheckRanges(const Codec& codec, const std::vector<float>& p, uint64_t seed,
                 const std::string& out, const std::vector<float>& error) {
  const size_t n = p.size(), block = codec.block_size();
  const size_t blocks = (n + block - 1) / block;
  const size_t cut = std::min(n, (seed % (blocks + 1)) * block);
  const std::vector<float> zero(n, 0.0f);
  std::string ranged(out.size(), '\0');
  std::vector<float> ranged_error(n, 1.0f), x_minus_q(n);
  uint8_t* ranged_bytes = reinterpret_cast<uint8_t*>(ranged.data());
  for (const auto& [begin, end] :
       {std::pair<size_t, size_t>{0, cut}, std::pair<size_t, size_t>{cut, n}}) {
    const absl::Span<const float> part(p.data() + begin, end - begin);
    const absl::Status e =
        codec.EncodeRange(n, begin, part, zero.data() + begin,
                          ranged_error.data() + begin, seed, ranged_bytes);
    FUZZ_CHECK(e.ok(), "%s: EncodeRange [%zu, %zu): %s",
               codec.spec().ToString().c_str(), begin, end,
               e.ToString().c_str());
    const absl::Status d = codec.DecodeRange(
        AsBytes(out), n, begin, -1.0f, p.data() + begin,
        absl::MakeSpan(x_minus_q.data() + begin, end - begin));
    FUZZ_CHECK(d.ok(), "%s: DecodeRange [%zu, %zu): %s",
               codec.spec().ToString().c_str(), begin, end,
               d.ToString().c_str());
  }
  FUZZ_CHECK(ranged == out, "%s: encoding in ranges cut at %zu differs",
             codec.spec().ToString().c_str(), cut);
  FUZZ_CHECK(n == 0 || std::memcmp(ranged_error.data(), error.data(),
                                   n * sizeof(float)) == 0,
             "%s: error out of place differs", codec.spec().ToString().c_str());
  std::vector<float> want(p);
  FUZZ_CHECK(
      codec.DecodeAccumulate(AsBytes(out), -1.0f, absl::MakeSpan(want)).ok(),
      "DecodeAccumulate");
  FUZZ_CHECK(n == 0 || std::memcmp(want.data(), x_minus_q.data(),
                                   n * sizeof(float)) == 0,
             "%s: DecodeRange from another base differs",
             codec.spec().ToString().c_str());
}

void CheckEncode(const Codec& codec, const std::vector<float>& p,
                 uint64_t seed) {
  const size_t n = p.size();
  std::vector<float> error(n, 0.0f);
  std::string out(codec.EncodedSize(n), '\0');
  const absl::Status st = codec.EncodeWithFeedback(
      p, absl::MakeSpan(error), seed, reinterpret_cast<uint8_t*>(out.data()));
  const bool finite = AllFinite(p);
  if (!st.ok()) {
    FUZZ_CHECK(st.code() == absl::StatusCode::kInvalidArgument, "%s",
               st.ToString().c_str());
    // Only non-finite input, or sign's block mean overflowing, may fail.
    FUZZ_CHECK(!finite || codec.spec().kind == CodecKind::kSign,
               "%s refused finite input: %s", codec.spec().ToString().c_str(),
               st.ToString().c_str());
    return;
  }
  FUZZ_CHECK(finite, "%s encoded NaN/Inf input",
             codec.spec().ToString().c_str());
  const absl::Status v = codec.Validate(AsBytes(out), n);
  FUZZ_CHECK(v.ok(), "%s: own encoding does not validate: %s",
             codec.spec().ToString().c_str(), v.ToString().c_str());
  FUZZ_CHECK(AllFinite(error), "%s: error memory not finite",
             codec.spec().ToString().c_str());
  std::vector<float> q(n);
  FUZZ_CHECK(codec.Decode(AsBytes(out), absl::MakeSpan(q)).ok(), "decode");
  FUZZ_CHECK(AllFinite(q), "%s: decoded own encoding not finite",
             codec.spec().ToString().c_str());
  for (size_t j = 0; j < n; ++j) {
    // e = p - Q(p) as decoding computes Q(p).
    FUZZ_CHECK(error[j] == p[j] - q[j], "%s: e[%zu] = %g, p - q = %g",
               codec.spec().ToString().c_str(), j, error[j], p[j] - q[j]);
  }
  CheckRanges(codec, p, seed, out, error);
  // The compressor bound, per block, for the codecs that promise it on
  // every finite input (fp16/bf16 only within their normal range, qNs not
  // at all), on blocks whose scale is a normal float: a block of tiny
  // subnormals has a step that rounds to (nearly) zero, so Q(p) is ~0 and
  // error feedback carries p over (docs/wire_format.md).
  const CodecKind kind = codec.spec().kind;
  if (!(kind == CodecKind::kSign || kind == CodecKind::kTopK ||
        kind == CodecKind::kFp32 ||
        (kind == CodecKind::kQuant && !codec.spec().stochastic))) {
    return;
  }
  for (size_t begin = 0; begin < n; begin += codec.block_size()) {
    const size_t nb = std::min(codec.block_size(), n - begin);
    double err = 0, norm = 0, max = 0;
    for (size_t j = begin; j < begin + nb; ++j) {
      const double d = static_cast<double>(q[j]) - static_cast<double>(p[j]);
      err += d * d;
      norm += static_cast<double>(p[j]) * static_cast<double>(p[j]);
      max = std::max(max, std::fabs(static_cast<double>(p[j])));
    }
    if (max < kSmallestCheckedScale) continue;
    const double bound = (1.0 - codec.Delta(nb)) * norm;
    FUZZ_CHECK(err <= bound * (1 + 1e-6),
               "%s: block at %zu: ||Q(p)-p||^2 = %g > %g",
               codec.spec().ToString().c_str(), begin, err, bound);
  }
}

}  // namespace
}  // namespace effadam

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace effadam;
  fuzz::Input in(data, size);
  const std::string name = in.CString(24);
  const uint16_t block = in.U16();
  const size_t n = in.U16() % 4097;
  const uint8_t flags = in.Byte();
  const uint64_t seed = in.U32();
  std::string payload = in.Rest();

  absl::StatusOr<CodecSpec> spec = ParseCodecSpec(name);
  if (!spec.ok()) return 0;
  absl::StatusOr<std::unique_ptr<Codec>> made = MakeCodec(*spec, block);
  FUZZ_CHECK(made.ok() == CheckBlockSize(block).ok(),
             "MakeCodec and CheckBlockSize disagree on block %u", block);
  if (!made.ok()) return 0;
  const Codec& codec = **made;

  const size_t want = codec.EncodedSize(n);
  if (flags & 1) payload.resize(want, '\0');
  const absl::Status valid = codec.Validate(AsBytes(payload), n);
  if (payload.size() != want) {
    FUZZ_CHECK(!valid.ok(), "%zu bytes validated for %zu elements (want %zu)",
               payload.size(), n, want);
  }
  // Whatever the bytes, decoding stays in bounds (ASan) and reports a bad
  // length.
  std::vector<float> acc(n, 0.0f);
  const absl::Status decoded =
      codec.DecodeAccumulate(AsBytes(payload), 1.0f, absl::MakeSpan(acc));
  if (payload.size() != want) FUZZ_CHECK(!decoded.ok(), "bad length decoded");
  if (valid.ok()) {
    FUZZ_CHECK(decoded.ok(), "validated bytes fail to decode: %s",
               decoded.ToString().c_str());
    FUZZ_CHECK(AllFinite(acc), "validated %s bytes decode to NaN/Inf",
               name.c_str());
    std::vector<float> q(n);
    FUZZ_CHECK(codec.Decode(AsBytes(payload), absl::MakeSpan(q)).ok(),
               "Decode");
    for (size_t j = 0; j < n; ++j) {
      FUZZ_CHECK(q[j] == acc[j], "Decode and DecodeAccumulate differ at %zu",
                 j);
    }
    CheckEncode(codec, q, seed);
  }
  // The payload as float32 values, through the encoder.
  if (n > 0 && payload.size() >= 4 * n) {
    std::vector<float> p(n);
    std::memcpy(p.data(), payload.data(), 4 * n);
    CheckEncode(codec, p, seed);
  }
  return 0;
}
